"""The chart as a demo workload: rendered by Helm, every manifest valid for Kubernetes, and the
sidecar container one that the real `llm-sidecar serve` runs with — ports, probes, paths."""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

import sidecar
from sidecar.cli import parser
from sidecar.telemetry.setup import resource
from tests.deploy.charts import (
    CHART,
    ROOT,
    container,
    env_sources,
    env_values,
    lint,
    names,
    pod_spec,
    render,
)
from tests.deploy.process import request, running, wait_until_ready
from tests.support.sidecar import free_port

POLICY_MOUNT = "/etc/llm-sidecar/policies"
STATE_MOUNT = "/var/lib/llm-sidecar"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def sidecar_of(values: dict[str, Any] | None = None) -> dict[str, Any]:
    return container(pod_spec(render(CHART, values).one("Deployment")))


def parsed_serve(c: dict[str, Any]) -> Any:
    """The settings the CLI takes from the container's command line and environment."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env_values(c))
    try:
        return parser().parse_args(c["args"])
    finally:
        os.environ.clear()
        os.environ.update(saved)


def mounts(c: dict[str, Any]) -> dict[str, str]:
    return {m["name"]: m["mountPath"] for m in c["volumeMounts"]}


def test_the_chart_lints_clean_in_strict_mode():
    assert lint(CHART) == []
    assert lint(CHART, {"mode": "classic", "policies": {"existingConfigMap": "llm-policies"}}) == []


def test_the_image_tag_is_the_released_version():
    with helm.Chart.load(CHART) as chart:
        meta, values = chart.metadata, chart.values
    assert values["image"]["tag"] == meta["appVersion"] == PYPROJECT["project"]["version"]
    assert sidecar.__version__ == meta["appVersion"]


def test_the_demo_is_a_deployment_with_a_native_sidecar_and_its_policies():
    out = render(CHART)
    assert sorted(m["kind"] for m in out.manifests) == ["ConfigMap", "Deployment"]
    spec = pod_spec(out.one("Deployment"))
    assert names(spec["initContainers"]) == ["llm-sidecar"]
    assert names(spec["containers"]) == ["demo"]
    side = container(spec)
    assert side["restartPolicy"] == "Always"  # the native sidecar form (Kubernetes >= 1.29)
    configmap = out.one("ConfigMap")
    assert {v["name"]: v for v in spec["volumes"]}["llm-sidecar-policies"]["configMap"] == {
        "name": configmap["metadata"]["name"]
    }
    app = container(spec, "demo")
    assert env_values(app)["OPENAI_BASE_URL"] == "http://127.0.0.1:8480/v1"
    assert "native sidecar" in out.notes
    assert "shop-llm-sidecar-policies" in out.notes


def test_classic_mode_puts_the_sidecar_beside_the_app():
    out = render(CHART, {"mode": "classic"})
    spec = pod_spec(out.one("Deployment"))
    assert "initContainers" not in spec
    assert names(spec["containers"]) == ["demo", "llm-sidecar"]
    assert "restartPolicy" not in container(spec)
    assert "classic sidecar" in out.notes


def test_native_mode_refuses_a_cluster_older_than_1_29():
    with pytest.raises(helm.HelmRenderError, match=r"mode native needs Kubernetes >= 1\.29"):
        render(CHART, kube_version="v1.28.0")
    old = render(CHART, {"mode": "classic"}, kube_version="v1.28.0")
    assert names(pod_spec(old.one("Deployment"))["containers"]) == ["demo", "llm-sidecar"]
    assert render(CHART, kube_version="v1.29.0").one("Deployment")


def test_the_container_runs_serve_with_the_cli_defaults_and_the_image_paths():
    c = sidecar_of()
    assert c["command"] == ["llm-sidecar"]
    assert PYPROJECT["project"]["scripts"]["llm-sidecar"] == "sidecar.cli:main"
    args = parsed_serve(c)
    defaults = parser().parse_args(["serve"])  # run with an empty environment below
    assert args.command == "serve"
    assert (args.host, args.port, args.ops_host, args.ops_port) == (
        "127.0.0.1",
        8480,
        "0.0.0.0",
        8481,
    )
    assert (args.host, args.port, args.ops_port) == (
        defaults.host,
        defaults.port,
        defaults.ops_port,
    )
    assert args.drain_timeout == defaults.drain_timeout == 30
    assert str(args.policies) == POLICY_MOUNT == mounts(c)["llm-sidecar-policies"]
    assert str(args.state_dir) == STATE_MOUNT == mounts(c)["llm-sidecar-state"]
    # The proxy stays on loopback: no containerPort for it, the ops port for the kubelet.
    assert c["ports"] == [{"name": "sidecar-ops", "containerPort": 8481, "protocol": "TCP"}]
    probes = {k: c[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes == {
        "startupProbe": {"path": "/healthz", "port": "sidecar-ops"},
        "livenessProbe": {"path": "/healthz", "port": "sidecar-ops"},
        "readinessProbe": {"path": "/readyz", "port": "sidecar-ops"},
    }


def test_a_proxy_for_other_pods_declares_its_port():
    c = sidecar_of({"proxyHost": "0.0.0.0", "ports": {"proxy": 9000, "ops": 9001}})
    assert parsed_serve(c).host == "0.0.0.0"
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {
        "sidecar-ops": 9001,
        "sidecar-proxy": 9000,
    }


def test_the_rendered_container_really_serves_its_probes_and_the_demo_policy(tmp_path: Path):
    """Run `llm-sidecar serve` with the rendered command and environment, the rendered
    ConfigMap's files as the policy mount, and call what the kubelet and the app call."""
    proxy, ops = free_port(), free_port()
    out = render(CHART, {"ports": {"proxy": proxy, "ops": ops}})
    c = container(pod_spec(out.one("Deployment")))
    policies, state = tmp_path / "policies", tmp_path / "state"
    policies.mkdir()
    state.mkdir()
    for name, text in out.one("ConfigMap")["data"].items():
        (policies / name).write_text(text)
    env = {
        **env_values(c),
        "SIDECAR_POLICIES": str(policies),
        "SIDECAR_STATE_DIR": str(state),
        # what the kubelet fills in from the downward API
        "K8S_POD_NAME": "shop-7d9f-abcde",
        "K8S_NAMESPACE_NAME": "prod",
        "K8S_NODE_NAME": "node-1",
        "K8S_POD_UID": "1234",
    }
    assert set(env_sources(c)) <= set(env)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    log = tmp_path / "sidecar.log"
    with running([*c["command"], *c["args"]], env, log) as proc:
        base = f"http://127.0.0.1:{ports['sidecar-ops']}"
        wait_until_ready(base, proc, log)
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            get = c[probe]["httpGet"]
            assert request(f"http://127.0.0.1:{ports[get['port']]}{get['path']}").status == 200
        app = container(pod_spec(out.one("Deployment")), "demo")
        answer = request(
            f"{env_values(app)['OPENAI_BASE_URL']}/chat/completions",
            {"model": "chat", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert answer.status == 200, answer.body
        assert answer.headers["x-sidecar-route"] == "chat"
    assert proc.returncode == 0, log.read_text()
    # The only file it wrote is in the state volume: a read-only root filesystem is fine.
    assert [p.name for p in state.iterdir()] == ["llm-sidecar-state.db"]


def test_the_sidecar_is_locked_down():
    c = sidecar_of()
    assert c["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    # A read-only root: every path it writes is a volume.
    assert set(mounts(c).values()) == {POLICY_MOUNT, STATE_MOUNT, "/tmp"}
    assert next(m for m in c["volumeMounts"] if m["mountPath"] == POLICY_MOUNT)["readOnly"]


def test_inline_policies_roll_the_pods_when_they_change():
    def annotations(values: dict[str, Any]) -> dict[str, str]:
        template = render(CHART, values).one("Deployment")["spec"]["template"]
        return template["metadata"].get("annotations") or {}

    files = {"policy.yaml": "providers: {p: {type: mock}}\nmodels: {m: {provider: p}}\n"}
    first = annotations({"policies": {"files": files}})
    digest = hashlib.sha256(json.dumps(files, separators=(",", ":")).encode()).hexdigest()
    assert first == {"checksum/llm-sidecar-policies": digest}
    assert annotations({"policies": {"files": files}, "app": {"replicas": 3}}) == first
    changed = {"policy.yaml": files["policy.yaml"] + "routes: {chat: {targets: [m]}}\n"}
    assert annotations({"policies": {"files": changed}}) != first
    assert annotations({"policies": {"files": files, "rollOnChange": False}}) == {}


def test_an_existing_configmap_is_mounted_and_hot_reloads_without_a_checksum():
    out = render(CHART, {"policies": {"existingConfigMap": "team-llm-policies"}})
    assert out.of_kind("ConfigMap") == []
    deployment = out.one("Deployment")
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    assert volumes["llm-sidecar-policies"]["configMap"] == {"name": "team-llm-policies"}
    assert "annotations" not in deployment["spec"]["template"]["metadata"]
    assert "hot-reloads" in out.notes


def test_secrets_reach_the_sidecar_only_as_references():
    values = {
        "secretEnv": [
            {"env": "OPENAI_API_KEY", "secretName": "llm-keys", "key": "openai"},
            {
                "env": "ANTHROPIC_API_KEY",
                "secretName": "llm-keys",
                "key": "anthropic",
                "optional": True,
            },
        ],
        "redis": {"urlSecret": {"name": "llm-redis", "key": "url"}},
        "usageTokenSecret": {"name": "llm-usage", "key": "token"},
        "policies": {
            "files": {
                "providers.yaml": "providers:\n  openai:\n    type: openai\n"
                "    api_key: ${OPENAI_API_KEY}\n"
            }
        },
    }
    out = render(CHART, values)
    c = container(pod_spec(out.one("Deployment")))
    assert env_sources(c) == {
        "K8S_POD_NAME": {"fieldRef": {"fieldPath": "metadata.name"}},
        "K8S_NAMESPACE_NAME": {"fieldRef": {"fieldPath": "metadata.namespace"}},
        "K8S_NODE_NAME": {"fieldRef": {"fieldPath": "spec.nodeName"}},
        "K8S_POD_UID": {"fieldRef": {"fieldPath": "metadata.uid"}},
        "OPENAI_API_KEY": {"secretKeyRef": {"name": "llm-keys", "key": "openai"}},
        "ANTHROPIC_API_KEY": {
            "secretKeyRef": {"name": "llm-keys", "key": "anthropic", "optional": True}
        },
        "REDIS_URL": {"secretKeyRef": {"name": "llm-redis", "key": "url"}},
        "SIDECAR_USAGE_TOKEN": {"secretKeyRef": {"name": "llm-usage", "key": "token"}},
    }
    assert not set(env_sources(c)) & set(env_values(c))
    assert out.of_kind("Secret") == []
    # The ConfigMap holds the policy with its ${NAME} reference, nothing resolved.
    assert "${OPENAI_API_KEY}" in out.one("ConfigMap")["data"]["providers.yaml"]


def test_opentelemetry_gets_the_endpoint_and_the_pod_from_the_downward_api():
    c = sidecar_of(
        {
            "otel": {
                "endpoint": "http://otel-collector.observability:4318",
                "protocol": "grpc",
                "resourceAttributes": {"deployment.environment": "prod", "team": "checkout"},
            }
        }
    )
    env = env_values(c)
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability:4318"
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"
    # Parent-based: the app's sampled traces whole, a tenth of the rest.
    assert (env["OTEL_TRACES_SAMPLER"], env["OTEL_TRACES_SAMPLER_ARG"]) == (
        "parentbased_traceidratio",
        "0.1",
    )
    # The kubelet's values for the downward-API variables, read by the sidecar's own setup.
    kubelet = {"metadata.name": "shop-1", "metadata.namespace": "prod", "spec.nodeName": "n1"}
    kubelet["metadata.uid"] = "uid-1"
    for name, source in env_sources(c).items():
        env[name] = kubelet[source["fieldRef"]["fieldPath"]]
    attributes = dict(resource(env).attributes)
    assert {k: attributes[k] for k in attributes if k.startswith(("k8s.", "team", "depl"))} == {
        "k8s.pod.name": "shop-1",
        "k8s.namespace.name": "prod",
        "k8s.node.name": "n1",
        "k8s.pod.uid": "uid-1",
        "deployment.environment": "prod",
        "team": "checkout",
    }
    assert attributes["service.name"] == "llm-sidecar"
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env_values(sidecar_of())
    every = env_values(sidecar_of({"otel": {"endpoint": "http://c:4318", "traceSampleRatio": 1}}))
    assert every["OTEL_TRACES_SAMPLER_ARG"] == "1"


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        pytest.param({"mode": "sidecar"}, "/mode", id="mode"),
        pytest.param({"ports": {"ops": "8481"}}, "/ports/ops", id="port-type"),
        pytest.param({"ports": {"ops": 70000}}, "/ports/ops", id="port-range"),
        pytest.param({"replicas": 2}, "'replicas' not allowed", id="unknown-key"),
        pytest.param(
            {"secretEnv": [{"env": "OPENAI_API_KEY", "value": "fake-live-123"}]},
            "/secretEnv/0",
            id="secret-inline",
        ),
        pytest.param(
            {"secretEnv": [{"env": "OPENAI-KEY", "secretName": "k", "key": "a"}]},
            "/secretEnv/0/env",
            id="env-name",
        ),
        pytest.param(
            {"probes": {"liveness": {"path": "/metrics"}}}, "/probes/liveness", id="probe"
        ),
        pytest.param({"policies": {"files": {"routes.json": "{}"}}}, "routes.json", id="file"),
        pytest.param({"image": {"digest": "latest"}}, "/image/digest", id="digest"),
        pytest.param({"otel": {"endpoint": "collector:4318"}}, "/otel/endpoint", id="otel"),
        pytest.param(
            {"securityContext": {"readOnlyRootFilesystem": False}},
            "/securityContext/readOnlyRootFilesystem",
            id="writable-root",
        ),
        pytest.param(
            {"securityContext": {"runAsNonRoot": False}},
            "/securityContext/runAsNonRoot",
            id="root",
        ),
        pytest.param(
            {"securityContext": {"seccompProfile": {"type": "Unconfined"}}},
            "/securityContext/seccompProfile/type",
            id="seccomp",
        ),
    ],
)
def test_values_schema_rejects_bad_values(values: dict[str, Any], complaint: str):
    with pytest.raises(helm.HelmValuesError) as info:
        render(CHART, values)
    assert complaint in str(info.value)


def test_values_schema_accepts_the_defaults_and_the_readme_example():
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema({})
        chart.validate_schema(guide_values())


def guide_values() -> dict[str, Any]:
    """The values file the Kubernetes guide (docs/guides/kubernetes.md) shows."""
    text = (ROOT / "docs" / "guides" / "kubernetes.md").read_text()
    block = text[text.index("# values.yaml of your chart") :]
    values: dict[str, Any] = yaml.safe_load(block[: block.index("```")])
    return values.get("llm-sidecar", values)


def test_the_guides_values_render_a_valid_pod():
    out = render(CHART, {**guide_values(), "app": {"enabled": True}})
    c = container(pod_spec(out.one("Deployment")))
    assert c["restartPolicy"] == "Always"
    assert all("secretKeyRef" in s or "fieldRef" in s for s in env_sources(c).values())


def test_monitors_are_opt_in_and_scrape_the_ops_port():
    assert not render(CHART).of_kind("PodMonitor")
    out = render(CHART, {"metrics": {"podMonitor": {"enabled": True}}})
    monitor = out.one("PodMonitor")
    pod_labels = out.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert monitor["spec"]["podMetricsEndpoints"] == [
        {"port": "sidecar-ops", "path": "/metrics", "interval": "30s"}
    ]

    out = render(CHART, {"metrics": {"serviceMonitor": {"enabled": True}}})
    service, monitor = out.one("Service"), out.one("ServiceMonitor")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {
        "sidecar-ops": "sidecar-ops"
    }
    assert monitor["spec"]["endpoints"][0]["port"] == "sidecar-ops"


def test_with_the_demo_off_the_chart_renders_only_what_is_asked():
    values = {"app": {"enabled": False}}
    assert render(CHART, values).manifests == []
    monitors = {"podMonitor": {"enabled": True, "selector": {"app": "shop"}}}
    out = render(CHART, {**values, "metrics": monitors})
    assert [m["kind"] for m in out.manifests] == ["PodMonitor"]
    assert out.one("PodMonitor")["spec"]["selector"]["matchLabels"] == {"app": "shop"}
    with pytest.raises(helm.HelmRenderError, match="selector must name your pods"):
        render(CHART, {**values, "metrics": {"podMonitor": {"enabled": True}}})
