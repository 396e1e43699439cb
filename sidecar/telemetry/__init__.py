"""OpenTelemetry: traces and metrics with the GenAI semantic conventions.

`setup` builds the providers from the standard OTEL_* environment; `Telemetry` holds the
tracer and the instruments the pipeline records with. Export is batched on background
threads; the same collection serves `/stats` on the ops port for `llm-sidecar top`, and
`/metrics` for Prometheus (prometheus.py).
"""
