"""Semantic cache hits that would be wrong (issue 24), through the OpenAI SDK, with the
deterministic embedder of tests/support/embedder.py: it puts a question about another order
number, date, id or quoted string at similarity ~0.99 from the original, closer than the
threshold, as real embedders do. The guards turn those into misses (with the reason in a
header and a metric); true paraphrases still hit; a hit also needs the same system prompt
and preceding conversation; sampled hits are checked against the upstream, and a cache
whose hits disagree stops serving them."""

from __future__ import annotations

from typing import Any

import aiohttp
import openai
import pytest

from sidecar.app import Sidecar
from tests.support.embedder import concepts
from tests.support.sidecar import Sidecars
from tests.support.upstream import FakeOpenAI
from tests.support.wait import eventually

# (cached question, a near miss, the guard that tells them apart); from the labelled set
NEAR_MISSES = [
    ("Where is my order #48213?", "Where is my order #48214?", "numbers"),
    ("Transfer $250 to my savings account.", "Transfer $520 to my savings account.", "amounts"),
    ("Which meetings do I have on 3 May?", "Which meetings do I have on 5 May?", "dates"),
    ("Reset the password for user jdoe42.", "Reset the password for user jdoe24.", "ids"),
    ('Translate "good morning" into French.', 'Translate "good night" into French.', "quoted"),
    (
        "When did jane@shop.example last log in?",
        "When did jean@shop.example last log in?",
        "emails",
    ),
    ("Is https://status.example.com/api up?", "Is https://status.example.com/web up?", "urls"),
]
PARAPHRASES = [
    ("Where is my order #48213?", "What's the status of order #48213?"),
    ("Transfer $250 to my savings account.", "Move $250 into my savings account."),
    ("Show me flights from JFK to LAX on June 3.", "Find flights JFK to LAX on June 3."),
    ('Translate "good morning" into French.', 'How do you say "good morning" in French?'),
]


@pytest.fixture
async def sc(sidecars: Sidecars, upstream: FakeOpenAI) -> Sidecar:
    upstream.embedder = concepts
    semantic = "{mode: semantic, semantic: {model: emb%s}}"
    return await sidecars.start(
        f"""
        providers:
          main: {{type: openai, base_url: "{upstream.base_url}"}}
        models:
          a: {{provider: main, name: up-a, price: {{input: 1000, output: 2000}}}}
          emb: {{provider: main, name: up-emb}}
        cache:
          guarded: {semantic % ""}
          unguarded: {semantic % ", guards: []"}
          named: {semantic % ", similarity: 0.9, guards: [numbers, ids, names]"}
          whole: {semantic % ", input: conversation"}
          checked: {semantic % ", verify_sample: 1.0, min_agreement: 0.8, verify_window: 5"}
        routes:
          guarded: {{targets: [a], cache: guarded}}
          unguarded: {{targets: [a], cache: unguarded}}
          named: {{targets: [a], cache: named}}
          whole: {{targets: [a], cache: whole}}
          checked: {{targets: [a], cache: checked}}
        state: {{backend: memory}}
        """,
    )


async def ask(
    sc: Sidecar, route: str, question: str, before: list[dict[str, str]] | None = None
) -> tuple[str, dict[str, str]]:
    messages: list[Any] = [*(before or []), {"role": "user", "content": question}]
    async with openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{sc.port}/v1", api_key="x", max_retries=0
    ) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=route, messages=messages, temperature=0
        )
        return raw.parse().choices[0].message.content or "", dict(raw.headers)


def how(headers: dict[str, str]) -> tuple[str, str | None]:
    return headers["x-sidecar-cache"], headers.get("x-sidecar-cache-reason")


async def ops(sc: Sidecar, path: str) -> Any:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{sc.ops_port}{path}") as r,
    ):
        return await r.json()


async def test_near_misses_miss_with_the_guard_that_refused_them(
    sc: Sidecar, upstream: FakeOpenAI
) -> None:
    for cached, near, kind in NEAR_MISSES:
        upstream.behave("up-a", reply=f"about: {cached}")
        assert how((await ask(sc, "guarded", cached))[1]) == ("miss", None)
        await ask(sc, "unguarded", cached)
        upstream.behave("up-a", reply=f"about: {near}")
        text, headers = await ask(sc, "guarded", near)
        assert (text, how(headers)) == (f"about: {near}", ("miss", f"guard:{kind}"))
        # Without guards the same near miss is served someone else's answer.
        text, headers = await ask(sc, "unguarded", near)
        assert (text, how(headers)) == (f"about: {cached}", ("semantic-hit", None)), kind
    stats = (await ops(sc, "/stats"))["metrics"]["sidecar.cache.lookups"]["points"]
    refused = {
        p["attributes"]["reason"]: p["value"]
        for p in stats
        if p["attributes"].get("sidecar.route") == "guarded" and "reason" in p["attributes"]
    }
    assert refused == {f"guard:{kind}": 1 for _, _, kind in NEAR_MISSES}


async def test_names_are_guarded_when_the_cache_asks(sc: Sidecar, upstream: FakeOpenAI) -> None:
    await ask(sc, "named", "List the open tickets assigned to Maria.")
    _, headers = await ask(sc, "named", "List the open tickets assigned to Mario.")
    assert how(headers) == ("miss", "guard:names")
    _, headers = await ask(sc, "named", "Please list the open tickets assigned to Maria.")
    assert how(headers) == ("semantic-hit", None)


async def test_true_paraphrases_still_hit(sc: Sidecar, upstream: FakeOpenAI) -> None:
    for cached, asked in PARAPHRASES:
        upstream.behave("up-a", reply=f"about: {cached}")
        await ask(sc, "guarded", cached)
        text, headers = await ask(sc, "guarded", asked)
        assert (text, how(headers)) == (f"about: {cached}", ("semantic-hit", None)), asked
    assert len(upstream.calls("up-a")) == len(PARAPHRASES)


async def test_another_system_prompt_or_earlier_turn_misses(
    sc: Sidecar, upstream: FakeOpenAI
) -> None:
    shop = [{"role": "system", "content": "You answer for the Northwind shop."}]
    bank = [{"role": "system", "content": "You answer for the Contoso bank."}]
    cached, asked = PARAPHRASES[0]
    await ask(sc, "guarded", cached, shop)
    assert how((await ask(sc, "guarded", asked, bank))[1]) == ("miss", None)
    assert how((await ask(sc, "guarded", asked, shop))[1]) == ("semantic-hit", None)

    def chat(first: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": first}, {"role": "assistant", "content": "Done."}]

    follow_up, reworded = "Can I pay for it with PayPal?", "Do you accept PayPal payment for it?"
    await ask(sc, "guarded", follow_up, chat("Cancel my subscription for account AC-9921."))
    _, headers = await ask(sc, "guarded", reworded, chat("Is flight LH400 on time?"))
    assert how(headers) == ("miss", None)  # another conversation: "it" is something else
    _, headers = await ask(
        sc, "guarded", reworded, chat("Cancel my subscription for account AC-9921.")
    )
    assert how(headers) == ("semantic-hit", None)
    # `input: conversation` embeds the earlier turns instead: a reworded one may match.
    await ask(sc, "whole", follow_up, chat("Cancel my subscription for account AC-9921."))
    before = chat("Please end the subscription on account AC-9921.")
    assert how((await ask(sc, "whole", reworded, before))[1]) == ("semantic-hit", None)
    before = chat("Please end the subscription on account AC-9912.")
    assert how((await ask(sc, "whole", reworded, before))[1]) == ("miss", "guard:ids")


async def test_hits_that_disagree_with_the_upstream_stop_being_served(
    sc: Sidecar, upstream: FakeOpenAI
) -> None:
    status = (await ops(sc, "/status"))["caches"]
    assert set(status) == {"checked"}  # the caches that verify, from the start
    assert (status["checked"]["agreement"], status["checked"]["verified"]) == (None, 0)
    upstream.behave("up-a", reply="Order #48213 left the warehouse on Monday.")
    cached, asked = PARAPHRASES[0]
    await ask(sc, "checked", cached)
    upstream.behave("up-a", reply="Order #48213 was delivered on Friday.")  # the truth moved
    for _ in range(5):
        text, headers = await ask(sc, "checked", asked)
        assert (text, how(headers)) == (
            "Order #48213 left the warehouse on Monday.",
            ("semantic-hit", None),
        )

    async def checked() -> bool:
        return (await ops(sc, "/status"))["caches"]["checked"]["verified"] == 5

    await eventually(checked)
    status = (await ops(sc, "/status"))["caches"]["checked"]
    assert status["agreement"] == 0.0
    assert status["below_min_agreement"] is True
    assert status["effective_similarity"] > 1.0  # no similarity is enough any more
    text, headers = await ask(sc, "checked", asked)
    assert (text, how(headers)) == ("Order #48213 was delivered on Friday.", ("miss", "tightened"))
    # Each verification asked the upstream once more, off the app's path.
    assert len(upstream.calls("up-a")) == 1 + 5 + 1
    # They cost what they cost, on the request's rows (not as requests): the ledger's
    # `shadow` lever, against what the hits saved.
    call = (7 * 1000 + 3 * 2000) / 1e6  # the fake upstream's usage at the model's price
    [usage] = (await ops(sc, "/usage?scope=route&window=day&value=checked"))["rows"]
    assert usage["requests"] == 7
    assert usage["cost_usd"] == pytest.approx(7 * call)  # two misses, five verifications
    assert usage["saved_by_lever"]["cache"] == pytest.approx(5 * call)
    assert usage["saved_by_lever"]["shadow"] == pytest.approx(-5 * call)
    metrics = (await ops(sc, "/stats"))["metrics"]
    [disagreed] = metrics["sidecar.cache.verifications"]["points"]
    assert (disagreed["attributes"]["result"], disagreed["value"]) == ("disagree", 5)
