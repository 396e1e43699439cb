"""The chart as a library: a user's chart (fixtures/shop) depends on it, fetched with `helm
dependency update`, and includes its named templates in its own Deployment's pod spec."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

from sidecar.policy.compile import load_folder
from tests.deploy.charts import (
    container,
    env_sources,
    lint,
    names,
    pod_spec,
    render,
    user_chart,
)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return user_chart(tmp_path_factory.mktemp("charts"))


def sidecar_values(**values: Any) -> dict[str, Any]:
    return {"llm-sidecar": values}


def test_the_user_chart_lints_clean(shop: Path):
    assert lint(shop) == []


def test_the_sidecar_joins_the_users_pod_as_a_native_sidecar(shop: Path):
    out = render(shop, name="web")
    # Only what the user's chart renders: the library itself adds no workload of its own.
    assert sorted((m["kind"], m["metadata"]["name"]) for m in out.manifests) == [
        ("ConfigMap", "web-llm-sidecar-policies"),
        ("Deployment", "web-shop"),
    ]
    spec = pod_spec(out.one("Deployment"))
    assert names(spec["initContainers"]) == ["migrate", "llm-sidecar"]
    assert names(spec["containers"]) == ["shop"]
    assert container(spec)["restartPolicy"] == "Always"
    assert container(spec)["image"] == "registry.example.com/llm-sidecar:0.1.0"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert list(volumes) == [
        "cache",
        "llm-sidecar-policies",
        "llm-sidecar-state",
        "llm-sidecar-tmp",
    ]
    assert volumes["llm-sidecar-policies"]["configMap"]["name"] == "web-llm-sidecar-policies"
    annotations = out.one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["shop/owner"] == "checkout-team"
    assert annotations["checksum/llm-sidecar-policies"]


def test_classic_mode_needs_no_change_to_the_users_pod_spec(shop: Path):
    spec = pod_spec(render(shop, sidecar_values(mode="classic")).one("Deployment"))
    assert names(spec["initContainers"]) == ["migrate"]
    assert names(spec["containers"]) == ["shop", "llm-sidecar"]
    assert "restartPolicy" not in container(spec)


def test_the_users_inline_policies_are_valid_and_their_key_comes_from_a_secret(
    shop: Path, tmp_path: Path
):
    out = render(shop)
    for name, text in out.one("ConfigMap")["data"].items():
        (tmp_path / name).write_text(text)
    policy = load_folder(tmp_path, env={"OPENAI_API_KEY": "from-the-secret"})
    assert list(policy.routes) == ["chat"]
    c = container(pod_spec(out.one("Deployment")))
    assert env_sources(c)["OPENAI_API_KEY"] == {
        "secretKeyRef": {"name": "shop-llm-keys", "key": "openai"}
    }


def test_a_gitops_configmap_replaces_the_rendered_one(shop: Path):
    out = render(shop, sidecar_values(policies={"existingConfigMap": "shop-llm-policies"}))
    assert [m["kind"] for m in out.manifests] == ["Deployment"]
    template = out.one("Deployment")["spec"]["template"]
    assert template["metadata"]["annotations"] == {"shop/owner": "checkout-team"}
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    assert volumes["llm-sidecar-policies"]["configMap"] == {"name": "shop-llm-policies"}


def test_the_libraries_values_schema_applies_inside_the_users_chart(shop: Path):
    with pytest.raises(helm.HelmValuesError, match="/mode"):
        render(shop, sidecar_values(mode="sidecar"))


def test_a_pod_without_policies_is_refused_at_render_time(shop: Path):
    with pytest.raises(helm.HelmRenderError, match="no policies"):
        render(shop, sidecar_values(policies={"files": None}))  # null removes a key


def test_values_can_be_passed_explicitly(shop: Path, tmp_path: Path):
    """For an alias, or values kept elsewhere: (dict "root" $ "values" ...)."""
    explicit = user_chart(tmp_path)
    template = explicit / "templates" / "deployment.yaml"
    template.write_text(
        template.read_text().replace(
            'include "llm-sidecar.initContainers" .',
            'include "llm-sidecar.initContainers" (dict "root" $ "values" .Values.mine)',
        )
    )
    with helm.Chart.load(shop) as chart:
        mine = chart.merge_values()["llm-sidecar"]
    mine["image"]["repository"] = "mirror.example.com/sc"
    values = {"mine": mine}
    by_dict = container(pod_spec(render(explicit, values).one("Deployment")))
    by_dot = container(pod_spec(render(shop).one("Deployment")))
    assert by_dict["image"] == "mirror.example.com/sc:0.1.0"
    assert {**by_dict, "image": by_dot["image"]} == by_dot
