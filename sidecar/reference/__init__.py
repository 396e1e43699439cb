"""The generated reference pages of the docs site (docs/reference/), each made from what the
code itself declares: policy keys from the cerberus schema, metrics from the instruments,
commands from the argument parsers. `python3 dev.py docs-gen` writes them; a test fails
while a committed page differs from what these modules make."""
