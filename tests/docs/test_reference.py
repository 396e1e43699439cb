"""The generated reference pages agree with the code, and the site builds without a broken
link: the pages are current (else `python3 dev.py docs-gen`), every policy key, metric and
command option is described, and each key's example is valid where the key stands."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from sidecar.policy.jsonschema import policy_schema
from sidecar.policy.keydocs import KEYS, key_doc
from sidecar.reference.__main__ import stale
from sidecar.reference.keys import policy_keys
from sidecar.reference.metrics_page import declared
from sidecar.telemetry.metricdocs import ATTRIBUTES, METRICS, SPANS
from tests.docs.examples import ROOT

ZENSICAL = Path(sys.executable).parent / "zensical"


def test_the_generated_reference_pages_are_current():
    assert stale() == [], (
        f"{stale()} differ from what the code declares: run `python3 dev.py docs-gen` "
        "and commit the pages"
    )


def test_every_policy_key_has_a_description():
    paths = [k.path for k in policy_keys()]
    missing = [p for p in paths if key_doc(p) is None]
    assert missing == [], f"describe these keys in sidecar/policy/keydocs.py: {missing}"
    orphans = [p for p in KEYS if p not in paths]
    assert orphans == [], f"keydocs.py describes keys the schema does not have: {orphans}"


def _at(schema: dict[str, Any], path: str) -> dict[str, Any]:
    """The JSON Schema of the key at a dotted `keys` path."""
    node = schema
    for part in path.replace("[]", ".[]").split("."):
        if part == "<name>":
            node = node["additionalProperties"]
        elif part == "[]":
            node = node["items"]
        else:
            holders = [node, *node.get("anyOf", ())]
            node = next(h["properties"][part] for h in holders if part in h.get("properties", {}))
    return node


@pytest.mark.parametrize("key", [k.path for k in policy_keys()])
def test_a_keys_example_is_valid_where_the_key_stands(key: str):
    schema = policy_schema()
    doc = key_doc(key)
    assert doc is not None
    assert doc.example is not None, f"{key} has no example in keydocs.py"
    where = {**_at(schema, key), "$defs": schema["$defs"]}
    problems = [e.message for e in Draft202012Validator(where).iter_errors(doc.example)]
    assert problems == [], f"{key}: example {doc.example!r} is not valid: {problems}"


def test_every_metric_and_span_attribute_is_described():
    names = {i.name for i in declared()}
    assert names - set(METRICS) == set(), "describe these instruments in metricdocs.METRICS"
    assert set(METRICS) - names == set(), "metricdocs.METRICS names instruments that are gone"
    used = {a for m in METRICS.values() for a in m.attributes}
    used |= {a for s in SPANS for a in s.attributes}
    assert used <= set(ATTRIBUTES), f"describe in metricdocs.ATTRIBUTES: {used - set(ATTRIBUTES)}"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site as `make docs` builds it (strict: a warning fails), from a copy of docs/."""
    project = tmp_path_factory.mktemp("docs-site")
    shutil.copytree(ROOT / "docs", project / "docs")
    shutil.copy(ROOT / "mkdocs.yml", project / "mkdocs.yml")
    done = build(project)
    # Zensical prints its warnings (the page, line and column of a broken link) on stderr.
    said = re.sub(r"\x1b\[[0-9;]*m", "", done.stderr + done.stdout)
    assert done.returncode == 0, f"`make docs` fails:\n{said}"
    return project / "site"


def build(project: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ZENSICAL), "build", "--strict"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "NO_COLOR": "1"},
    )


def test_the_site_builds_offline_with_search_and_every_page(site: Path):
    """`site` builds it strictly: a broken link or anchor anywhere fails here."""
    pages = sorted(p.relative_to(ROOT / "docs") for p in (ROOT / "docs").rglob("*.md"))
    for page in pages:
        assert (site / page.with_suffix(".html")).is_file(), f"{page} is not in the site"
    assert (site / "search.json").is_file() or (site / "search").is_dir()
    html = "".join(p.read_text() for p in site.rglob("*.html"))
    assert "fonts.googleapis" not in html
    assert "fonts.gstatic" not in html


def test_a_broken_link_or_anchor_fails_the_build(tmp_path: Path, site: Path):
    """The strictness the site test relies on: a link to a missing anchor is fatal."""
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    page = tmp_path / "docs" / "index.md"
    page.write_text(page.read_text() + "\n[gone](reference/policy.md#no-such-key)\n")
    done = build(tmp_path)
    assert done.returncode != 0
    assert "anchor does not exist" in done.stdout + done.stderr


LINK = re.compile(r"\]\((docs/[^)#\s]+\.md)(?:#([^)\s]+))?\)")


def test_the_readmes_links_into_the_docs_resolve(site: Path):
    links = LINK.findall((ROOT / "README.md").read_text())
    assert links, "the README links into docs/"
    for target, anchor in links:
        page = site / Path(target).relative_to("docs").with_suffix(".html")
        assert page.is_file(), f"README links to {target}, which is not a page"
        found = not anchor or f'id="{anchor}"' in page.read_text()
        assert found, f"README links to {target}#{anchor}: no such anchor on that page"


def test_the_published_schema_carries_the_descriptions():
    published = json.loads((ROOT / "schemas" / "policy.schema.json").read_text())
    assert (
        _at(published, "routes.<name>.timeout")["description"]
        == KEYS["routes.<name>.timeout"].description
    )
