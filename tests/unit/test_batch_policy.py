"""The batching keys: a route's `batch:`, a model's `price.batch` and `embeddings:`, the jobs
section's polling; what they compile into, what they cost, and where a mistake is reported."""

from __future__ import annotations

from pathlib import Path

from sidecar.jobs.provider_batches import pause
from sidecar.pipeline.pricing import cost_usd
from sidecar.policy.compile import load_folder
from sidecar.policy.model import BatchPolicy, JobsConfig, MicroBatch, Price
from tests.unit.policy_files import problems, write

POLICY = """\
providers:
  p: {type: openai, api_key: k}
models:
  half: {provider: p, price: {input: 2, output: 8, batch: 0.5}}
  own: {provider: p, price: {input: 3, output: 15, batch: {input: 1.5, output: 7.5}}}
  embed: {provider: p, embeddings: {batch_window: 2ms, max_inputs: 64}}
  plain: {provider: p, embeddings: {}}
routes:
  short: {targets: [half], batch: provider}
  long:
    targets: [own]
    batch: {mode: allowed, max_lines: 10, max_wait: 5s, unfinished: resubmit}
  none: {targets: [half]}
jobs: {batch_poll: 5s, batch_poll_max: 1m}
"""


def test_the_batching_keys_compile(tmp_path: Path) -> None:
    policy = load_folder(write(tmp_path, {"p.yaml": POLICY}), {})
    assert policy.routes["short"].batch == BatchPolicy("provider", 1000, 60.0, "sync")
    assert policy.routes["long"].batch == BatchPolicy("allowed", 10, 5.0, "resubmit")
    assert policy.routes["none"].batch is None
    assert policy.models["embed"].embeddings == MicroBatch(0.002, 64)
    assert policy.models["plain"].embeddings == MicroBatch(0.005, 256)
    assert policy.models["half"].embeddings is None
    assert policy.models["half"].price.batch == 0.5
    assert policy.models["own"].price.batch_prices == Price(1.5, 7.5)
    assert policy.jobs is not None
    assert (policy.jobs.batch_poll, policy.jobs.batch_poll_max) == (5.0, 60.0)


def test_a_batch_call_costs_the_share_or_the_providers_own_batch_prices(tmp_path: Path) -> None:
    policy = load_folder(write(tmp_path, {"p.yaml": POLICY}), {})
    half, own = policy.models["half"].price, policy.models["own"].price
    assert cost_usd(half, 1000, 100, 0) == (1000 * 2 + 100 * 8) / 1e6
    assert cost_usd(half, 1000, 100, 0, batch=True) == (1000 * 1 + 100 * 4) / 1e6
    assert cost_usd(own, 1000, 100, 0, batch=True) == (1000 * 1.5 + 100 * 7.5) / 1e6
    # Cached reads in a batch: at the batch input price, unless the batch prices say otherwise.
    assert cost_usd(own, 1000, 100, 400, batch=True) == (1000 * 1.5 + 100 * 7.5) / 1e6


def test_wrong_batching_keys_are_reported_on_their_lines(tmp_path: Path) -> None:
    text = """\
        providers:
          p: {type: openai, api_key: k}
        models:
          m:
            provider: p
            price: {input: 1, batch: 2}
            embeddings: {batch_window: soon, max_inputs: 0}
        routes:
          r: {targets: [m], batch: later}
          s: {targets: [m], batch: {mode: provider, unfinished: retry}}
        """
    assert problems(write(tmp_path, {"p.yaml": text})) == [
        "p.yaml:6: models.m.price.batch: no definitions validate",
        "p.yaml:7: models.m.embeddings.batch_window: 'soon' is not a duration "
        "(use e.g. 250ms, 30s, 5m, 1h)",
        "p.yaml:7: models.m.embeddings.max_inputs: min value is 1",
        "p.yaml:9: routes.r.batch: no definitions validate",
        "p.yaml:10: routes.s.batch: no definitions validate",
    ]


def test_polls_back_off_while_nothing_changes_and_wait_out_retry_after() -> None:
    config = JobsConfig(batch_poll=30.0, batch_poll_max=600.0)
    assert [pause(config, n) for n in range(6)] == [30.0, 60.0, 120.0, 240.0, 480.0, 600.0]
    assert pause(config, 0, retry_after=90.0) == 90.0
    assert pause(config, 5, retry_after=90.0) == 600.0
