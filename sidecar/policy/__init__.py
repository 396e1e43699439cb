"""Policies: YAML files in, one immutable compiled snapshot out.

Parse (`source`) → validate structure (`schema`) → cross-check and compile (`compile`)
→ build the runtime (`holder`) → swap one reference. Nothing outside this package sees a
raw policy dict.
"""
