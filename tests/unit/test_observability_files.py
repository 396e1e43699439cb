"""deploy/observability: the Grafana dashboard queries only metrics the sidecar creates
(named as a Collector's Prometheus exporter names them), and the Collector config wires
every pipeline to components it defines."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from opentelemetry.metrics import ObservableGauge, UpDownCounter

from sidecar.telemetry.instruments import Counter, ExplicitHistogram
from sidecar.telemetry.recorder import Telemetry

FOLDER = Path(__file__).resolve().parents[2] / "deploy" / "observability"

# The OTLP → Prometheus translation (opentelemetry-collector-contrib's prometheus exporter,
# prometheus/otlptranslator with suffixes and underscore escaping): the units we use.
_UNITS = {"s": "seconds", "ms": "milliseconds", "By": "bytes", "1": "", "%": "percent"}
# Attributes the telemetry code sets on metrics, as labels (dots become underscores).
LABELS = {
    "gen_ai_operation_name",
    "gen_ai_provider_name",
    "gen_ai_request_model",
    "gen_ai_response_model",
    "gen_ai_token_type",
    "sidecar_route",
    "sidecar_model",
    "sidecar_user",
    "sidecar_fallback_reason",
    "sidecar_limit",
    "sidecar_target",
    "sidecar_budget",
    "sidecar_budget_scope",
    "sidecar_budget_window",
    "sidecar_budget_scope_value",
    "sidecar_output",
    "sidecar_lever",
    "sidecar_tier",
    "sidecar_tier_reason",
    "sidecar_check",
    "sidecar_signal",
    "sidecar_feedback",
    "sidecar_label",
    "sidecar_shadow_candidate",
    "sidecar_agreement",
    "sidecar_side",
    "sidecar_reason",
}


def prometheus_base(name: str, unit: str, counter: bool) -> str:
    tokens = [t for t in re.split(r"[^a-zA-Z0-9:]+", name) if t]
    main = unit.split("/", 1)[0].strip()
    if main and not any(c in main for c in "{}"):
        suffix = re.sub(r"[^a-zA-Z0-9:]+", "_", _UNITS.get(main, main)).strip("_")
        if suffix and suffix not in tokens:
            tokens.append(suffix)
    if counter:
        tokens = [t for t in tokens if t != "total"] + ["total"]
    return "_".join(tokens)


def exported_names() -> set[str]:
    """Every series name the sidecar's instruments become in Prometheus."""
    telemetry = Telemetry({})
    names: set[str] = set()
    instruments = [v for v in vars(telemetry).values() if hasattr(v, "name")]
    for inst in instruments:
        unit = getattr(inst, "unit", "") or ""
        if isinstance(inst, ExplicitHistogram):
            base = prometheus_base(inst.name, unit, counter=False)
            names |= {f"{base}_bucket", f"{base}_sum", f"{base}_count"}
        elif isinstance(inst, Counter):  # a non-monotonic sum becomes a gauge
            names.add(prometheus_base(inst.name, unit, counter=inst.monotonic))
        elif isinstance(inst, ObservableGauge | UpDownCounter):
            names.add(prometheus_base(inst.name, unit, counter=False))
    telemetry.shutdown()
    return names


def test_the_translation_matches_known_collector_output():
    assert prometheus_base("gen_ai.client.operation.duration", "s", counter=False) == (
        "gen_ai_client_operation_duration_seconds"
    )
    assert prometheus_base("gen_ai.client.token.usage", "{token}", counter=False) == (
        "gen_ai_client_token_usage"
    )
    assert prometheus_base("sidecar.requests", "{request}", counter=True) == (
        "sidecar_requests_total"
    )
    assert prometheus_base("sidecar.cost", "USD", counter=True) == "sidecar_cost_USD_total"


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    out = []
    for panel in dashboard["panels"]:
        out += [t["expr"] for t in panel.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            out.append(var["definition"])
    return out


def test_every_metric_the_dashboard_queries_is_one_the_sidecar_exports():
    dashboard = json.loads((FOLDER / "grafana-dashboard.json").read_text())
    exprs = _exprs(dashboard)
    assert len(exprs) > 20
    exported = exported_names()
    assert "gen_ai_client_operation_duration_seconds_bucket" in exported
    queried: set[str] = set()
    for expr in exprs:
        # a metric name is followed by its selector: name{...} (every query here has one)
        queried |= set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", expr))
        # any other gen_ai_/sidecar_ word must be a label the sidecar sets
        for word in re.findall(r"\b(?:gen_ai|sidecar)_[a-zA-Z0-9_]+", expr):
            assert word in exported or word in LABELS, f"{word!r} in {expr!r}"
    unknown = queried - exported
    assert not unknown, f"the dashboard queries metrics the sidecar does not export: {unknown}"
    # the panels are all there
    for needed in (
        "sidecar_requests_total",
        "gen_ai_client_operation_duration_seconds_bucket",
        "gen_ai_client_token_usage_sum",
        "sidecar_cost_USD_total",
        "sidecar_retries_total",
        "sidecar_fallbacks_total",
        "sidecar_circuit_state",
        "sidecar_ratelimit_rejections_total",
        "sidecar_queue_wait_seconds_bucket",
        "sidecar_cache_lookups_total",
        "sidecar_output_validations_total",
        "sidecar_cost_baseline_USD_total",  # spent vs would have spent
        "sidecar_cost_saved_USD",  # saved by lever
        "sidecar_selection_requests_total",  # model selection: requests per tier
        "sidecar_cascade_checks_total",  # acceptance per tier and check
        "sidecar_cascade_escalation_cost_USD_total",
        "sidecar_quality_signals_total",  # truncated, refused, empty
        "sidecar_feedback_score_sum",
        "sidecar_shadow_comparisons_total",
        "sidecar_shadow_duration_seconds_bucket",
        "sidecar_shadow_cost_USD_total",
    ):
        assert needed in queried, needed
    assert any("histogram_quantile(0.99" in e for e in exprs)


def test_the_dashboard_is_importable():
    dashboard = json.loads((FOLDER / "grafana-dashboard.json").read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert all(t["refId"] and t["expr"] for t in panel["targets"])
    assert dashboard["templating"]["list"][0]["name"] == "datasource"


def test_the_collector_config_wires_otlp_to_prometheus_and_jaeger():
    config = yaml.safe_load((FOLDER / "otel-collector.yaml").read_text())
    assert set(config["receivers"]["otlp"]["protocols"]) == {"grpc", "http"}
    pipelines = config["service"]["pipelines"]
    for pipeline in pipelines.values():
        for kind in ("receivers", "processors", "exporters"):
            assert set(pipeline[kind]) <= set(config[kind]), (kind, pipeline)
    assert pipelines["metrics"]["exporters"] == ["prometheus"]
    assert pipelines["traces"]["exporters"] == ["otlp/jaeger"]
