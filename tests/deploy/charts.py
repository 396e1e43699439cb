"""Render Helm charts for real (Helm's own library, no cluster) and validate what comes out.

Every manifest is checked against the Kubernetes schemas of the oldest version the native
sidecar form supports and of the newest one kubernetes-validate ships, in strict mode
(unknown fields are errors). Prometheus Operator kinds are CRDs, which those schemas do not
hold: they are the only kinds allowed through unvalidated, and the tests check them by hand.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import yaml
from helm_python import _native
from kubernetes_validate.utils import SchemaNotFoundError

ROOT = Path(__file__).parents[2]
CHART = ROOT / "deploy" / "helm" / "llm-sidecar"
FIXTURES = Path(__file__).parent / "fixtures"
KUBE_VERSIONS = ("1.29", kubernetes_validate.latest_version())
CRD_GROUPS = ("monitoring.coreos.com/",)
NAMESPACE = "prod"


@dataclass(frozen=True, slots=True)
class Rendered:
    manifests: list[dict[str, Any]]
    notes: str

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.manifests if m["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.of_kind(kind)
        assert len(found) == 1, f"expected one {kind}, found {len(found)}"
        return found[0]


def render(
    chart: Path,
    values: dict[str, Any] | None = None,
    name: str = "shop",
    kube_version: str | None = None,
) -> Rendered:
    """Render like `helm template --strict` (values.schema.json applies, and a template that
    reads a value that does not exist is an error), then validate every manifest.

    helm-python-sdk 0.2.2's `Chart.render` does not pass on the library's `strict` and
    `kube_version` render options, so this calls the library as `Chart.render` does, with them.
    """
    options: dict[str, Any] = {"name": name, "namespace": NAMESPACE, "strict": True}
    if kube_version is not None:
        options["kube_version"] = kube_version
    with helm.Chart.load(chart) as loaded:
        files = json.loads(
            _native.call_string(
                "helm_render", loaded._raw(), json.dumps(values or {}), json.dumps(options)
            )
        )
    manifests: list[dict[str, Any]] = []
    notes = ""
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            if "/charts/" not in path:  # a subchart's notes are not shown on install
                notes = text
            continue
        manifests += [doc for doc in yaml.safe_load_all(text) if doc]
    for manifest in manifests:
        validate(manifest)
    return Rendered(manifests, notes)


def validate(manifest: dict[str, Any]) -> None:
    for version in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except SchemaNotFoundError:
            if not manifest["apiVersion"].startswith(CRD_GROUPS):
                raise


def lint(chart: Path, values: dict[str, Any] | None = None, **options: Any) -> list[str]:
    """`helm lint --strict`: every finding above info level, and every error."""
    report = helm.lint(chart, values, strict=True, **options)
    findings = [f"{m['path']}: {m['error']}" for m in report["messages"] if m["severity"] >= 2]
    return findings + list(report["errors"])


def user_chart(tmp_path: Path, name: str = "shop") -> Path:
    """A copy of a fixture chart that depends on this repository's chart, its dependency
    fetched the way users fetch it (`helm dependency update`, from a file:// repository)."""
    chart = tmp_path / name
    shutil.copytree(FIXTURES / name, chart)
    meta = chart / "Chart.yaml"
    meta.write_text(
        meta.read_text().replace("file://../../../../deploy/helm/llm-sidecar", CHART.as_uri())
    )
    helm.dependency_update(chart)
    return chart


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def container(spec: dict[str, Any], name: str = "llm-sidecar") -> dict[str, Any]:
    """The named container, from whichever list holds it."""
    found = [
        c
        for key in ("initContainers", "containers")
        for c in spec.get(key) or []
        if c["name"] == name
    ]
    assert len(found) == 1, f"expected one container {name!r}, found {len(found)}"
    return found[0]


def names(containers: list[dict[str, Any]] | None) -> list[str]:
    return [c["name"] for c in containers or []]


def env_values(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}


def env_sources(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e["valueFrom"] for e in c.get("env", []) if "valueFrom" in e}
