"""The tier classifier end to end: labelled examples in the policy folder, embedded at
reload through the policy's own embedding model (a real fake OpenAI server whose vectors
the test sets), kept on disk so a restart or an unrelated edit embeds nothing, and an
embedder that is down: the last good classifier is kept, or, the first time, requests get
the default tier and /status says so. Requests never fail for it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import aiohttp
import openai

from sidecar.app import Sidecar
from tests.support.sidecar import start_sidecar, write_policy
from tests.support.upstream import FakeOpenAI

BENCH = Path(__file__).resolve().parents[2] / "bench"
EXAMPLES = {  # text → (tier, vector)
    "where is my order": ("small", [1.0, 0.0, 0.0]),
    "what is the price": ("small", [0.9, 0.1, 0.0]),
    "track my parcel": ("small", [1.0, 0.05, 0.0]),
    "compute the refund with fees": ("large", [0.0, 1.0, 0.0]),
    "compare my three orders": ("large", [0.1, 0.9, 0.0]),
    "write a python function": ("large", [0.05, 1.0, 0.0]),
}
ASKED = {
    "is my package here?": [0.95, 0.05, 0.0],  # near the small examples
    "how much do I get back": [0.05, 1.0, 0.0],  # near the large ones
    "something in between": [0.7, 0.7, 0.0],  # no clear winner: the default tier
}


def policy(url: str, timeout: str = "20s") -> str:
    return f"""
        providers:
          main: {{type: openai, base_url: "{url}", timeout: 2s}}
        models:
          big: {{provider: main, name: up-big}}
          small: {{provider: main, name: up-small}}
          embed: {{provider: main, name: up-embed, price: {{input: 1000}}}}
        routes:
          chat:
            timeout: {timeout}
            select:
              tiers:
                small: {{targets: [small]}}
                large: {{targets: [big]}}
              classifier: {{examples: tiers.jsonl, model: embed, k: 4, margin: 0.2}}
        state: {{backend: memory}}
        """


def examples(folder: Path, extra: dict[str, tuple[str, list[float]]] | None = None) -> None:
    lines = [
        json.dumps({"text": t, "tier": tier})
        for t, (tier, _) in {**EXAMPLES, **(extra or {})}.items()
    ]
    (folder / "tiers.jsonl").write_text("\n".join(lines) + "\n")


def vectors(upstream: FakeOpenAI) -> None:
    upstream.vectors.update({t: v for t, (_, v) in EXAMPLES.items()})
    upstream.vectors.update(ASKED)


async def start(folder: Path, upstream: FakeOpenAI) -> Sidecar:
    write_policy(folder, "policy.yaml", policy(upstream.base_url))
    examples(folder)
    return await start_sidecar(folder)


async def ask(sc: Sidecar, content: str) -> dict[str, str]:
    async with openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{sc.port}/v1", api_key="x", max_retries=0
    ) as c:
        raw = await c.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": content}]
        )
        raw.parse()
        return dict(raw.headers)


async def status(sc: Sidecar) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{sc.ops_port}/status") as r:
        return dict((await r.json())["classifiers"]["chat"])


def embedded(upstream: FakeOpenAI) -> list[str]:
    """Every text the embedding model was asked for, in order."""
    return [t for s in upstream.calls("up-embed") for t in s.body["input"]]


async def test_the_classifier_chooses_tiers_and_unsure_requests_get_the_default(
    tmp_path: Path, upstream: FakeOpenAI
):
    vectors(upstream)
    sc = await start(tmp_path / "policies", upstream)
    try:
        assert sorted(embedded(upstream)) == sorted(EXAMPLES)  # at reload, in one call
        assert len(upstream.calls("up-embed")) == 1
        assert (await status(sc))["state"] == "ready"
        headers = await ask(sc, "is my package here?")
        assert (headers["x-sidecar-tier"], headers["x-sidecar-model"]) == ("small", "small")
        assert (await ask(sc, "how much do I get back"))["x-sidecar-tier"] == "large"
        # No clear winner: the default tier (the top one, when the policy names none).
        assert (await ask(sc, "something in between"))["x-sidecar-tier"] == "large"
        assert embedded(upstream)[len(EXAMPLES) :] == list(ASKED)  # one call per request
        await ask(sc, "is my package here?")  # asked a moment ago: no embedding call
        assert len(embedded(upstream)) == len(EXAMPLES) + len(ASKED)
    finally:
        await sc.stop()


async def test_a_restart_or_an_unrelated_edit_embeds_nothing_and_an_added_example_only_itself(
    tmp_path: Path, upstream: FakeOpenAI
):
    vectors(upstream)
    folder = tmp_path / "policies"
    sc = await start(folder, upstream)
    await sc.stop()
    sc = await start_sidecar(folder)  # the same state directory: vectors are on disk
    try:
        assert len(embedded(upstream)) == len(EXAMPLES)
        assert (await status(sc))["state"] == "ready"
        write_policy(folder, "policy.yaml", policy(upstream.base_url, timeout="30s"))
        await sc.holder.reload()  # (or the watcher did)
        assert sc.holder.current.policy.routes["chat"].timeout == 30.0
        assert len(embedded(upstream)) == len(EXAMPLES)
        upstream.vectors["refund with a restocking fee"] = [0.0, 0.95, 0.05]
        examples(folder, {"refund with a restocking fee": ("large", [0.0, 0.95, 0.05])})
        await sc.holder.reload()
        assert embedded(upstream)[len(EXAMPLES) :] == ["refund with a restocking fee"]
        assert (await status(sc))["examples"] == len(EXAMPLES) + 1
    finally:
        await sc.stop()


async def test_an_embedder_down_at_reload_keeps_the_last_good_classifier(
    tmp_path: Path, upstream: FakeOpenAI
):
    vectors(upstream)
    folder = tmp_path / "policies"
    sc = await start(folder, upstream)
    try:
        assert (await ask(sc, "is my package here?"))["x-sidecar-tier"] == "small"
        upstream.behave("up-embed", status=500)
        examples(folder, {"a new example": ("large", [0.0, 1.0, 1.0])})
        await sc.holder.reload()
        state = await status(sc)
        assert state["state"] == "failed"
        assert "last good" in state["using"]
        assert "500" in state["error"]
        # A text embedded before is voted on by the last good classifier.
        headers = await ask(sc, "is my package here?")
        assert (headers["x-sidecar-tier"], headers["x-sidecar-model"]) == ("small", "small")
        # A new one cannot be embedded now: the default tier, and an answer all the same.
        assert (await ask(sc, "how much do I get back"))["x-sidecar-tier"] == "large"
    finally:
        await sc.stop()


async def test_an_embedder_down_from_the_start_sends_everything_to_the_default_tier(
    tmp_path: Path, upstream: FakeOpenAI
):
    upstream.behave("up-embed", status=500)
    sc = await start(tmp_path / "policies", upstream)
    try:
        state = await status(sc)
        assert state["state"] == "failed"
        assert state["using"] == "none: requests get the route's default tier"
        headers = await ask(sc, "is my package here?")
        assert (headers["x-sidecar-tier"], headers["x-sidecar-model"]) == ("large", "big")
    finally:
        await sc.stop()


async def test_the_classifier_on_a_held_out_set_through_http(tmp_path: Path, upstream: FakeOpenAI):
    """bench/tiers: the savings workload's labelled examples, and its tasks asked in words
    no example used; vectors from the savings bench's embedder (bench/fake_llm.py). An
    unsure vote gets the default tier, large: right for complex tasks only. 42 of 43 right
    (bench/selection.py prints the same count)."""
    sys.path.insert(0, str(BENCH))
    from fake_llm import embed

    examples = (BENCH / "tiers" / "examples.jsonl").read_text()
    held_out = [
        json.loads(line) for line in (BENCH / "tiers" / "held_out.jsonl").read_text().splitlines()
    ]
    for text in [json.loads(line)["text"] for line in examples.splitlines()] + [
        h["text"] for h in held_out
    ]:
        upstream.vectors[text] = embed(text)
    folder = tmp_path / "policies"
    write_policy(folder, "policy.yaml", policy(upstream.base_url).replace("k: 4", "k: 5"))
    (folder / "tiers.jsonl").write_text(examples)
    sc = await start_sidecar(folder)
    try:
        tiers = [(await ask(sc, h["text"]))["x-sidecar-tier"] for h in held_out]
    finally:
        await sc.stop()
    right = sum(got == h["tier"] for got, h in zip(tiers, held_out, strict=True))
    assert (right, len(held_out)) == (42, 43)
    complex_to_small = sum(
        got == "small" and h["tier"] == "large" for got, h in zip(tiers, held_out, strict=True)
    )
    assert complex_to_small == 0  # the costly mistake: a task the small model gets wrong
