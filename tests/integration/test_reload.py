"""Hot reload through real servers: edits, new and removed files, ConfigMap swaps, invalid
edits and load, seen by the official OpenAI SDK and the ops port. No restart anywhere."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import aiohttp
import openai
import pytest

from sidecar.app import Sidecar
from sidecar.providers.http import HttpProvider
from tests.support.redis import RedisServer
from tests.support.sidecar import start_sidecar, write_policy
from tests.support.upstream import FakeOpenAI
from tests.support.wait import eventually

MESSAGES: Any = [{"role": "user", "content": "hi"}]
WITHIN = 2.0  # seconds a reload may take to show, end to end


def policy(upstream: FakeOpenAI, target: str = "a", *, timeout: str = "5s", extra: str = "") -> str:
    """Route `chat` to model `target`; models a and b answer "from a" / "from b"."""
    return f"""
    providers:
      main:
        type: openai
        base_url: {upstream.base_url}
        timeout: {timeout}
    models:
      a: {{provider: main, name: up-a}}
      b: {{provider: main, name: up-b}}
    routes:
      chat:
        targets: [{target}]
    {extra}
    """


def version(sidecar: Sidecar) -> str | None:
    return sidecar.holder.current.version if sidecar.holder.current else None


async def new_version(sidecar: Sidecar, old: str | None) -> str:
    """The policy version once it differs from `old` (within WITHIN seconds)."""

    async def changed() -> str | None:
        now = version(sidecar)
        return now if now != old else None

    return await eventually(changed, within=WITHIN)


async def ask(api: openai.AsyncOpenAI, model: str = "chat") -> tuple[str, str]:
    """(answer text, x-sidecar-policy-version) of one chat completion."""
    raw = await api.chat.completions.with_raw_response.create(model=model, messages=MESSAGES)
    return raw.parse().choices[0].message.content or "", raw.headers["x-sidecar-policy-version"]


async def ops(sidecar: Sidecar, path: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{sidecar.ops_port}{path}") as r,
    ):
        return r.status, await r.json()


@pytest.fixture
def folder(tmp_path: Path, upstream: FakeOpenAI) -> Path:
    upstream.behave("up-a", reply="from a")
    upstream.behave("up-b", reply="from b")
    return tmp_path / "policies"


@pytest.fixture
async def sidecar(folder: Path, upstream: FakeOpenAI) -> AsyncIterator[Sidecar]:
    write_policy(folder, "main.yaml", policy(upstream))
    sc = await start_sidecar(folder)
    yield sc
    await sc.stop()


@pytest.fixture
async def api(sidecar: Sidecar) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{sidecar.port}/v1", api_key="app-key", max_retries=0
    ) as client:
        yield client


async def test_editing_a_file_changes_the_target_without_restart(
    api: openai.AsyncOpenAI, folder: Path, upstream: FakeOpenAI
):
    text, old = await ask(api)
    assert text == "from a"

    write_policy(folder, "main.yaml", policy(upstream, "b"))

    async def answered_by_b() -> tuple[str, str] | None:
        answer = await ask(api)
        return answer if answer[0] == "from b" else None

    _, new = await eventually(answered_by_b, within=WITHIN)
    assert new != old
    assert len(new) == 12


async def test_adding_and_removing_a_file_adds_and_removes_its_route(
    api: openai.AsyncOpenAI, sidecar: Sidecar, folder: Path
):
    with pytest.raises(openai.NotFoundError):
        await api.chat.completions.create(model="extra", messages=MESSAGES)
    _, v1 = await ask(api)

    # Names merge across files: the new file's route uses a model the first file defines.
    extra = write_policy(folder, "team/extra.yaml", "routes:\n  extra:\n    targets: [b]\n")

    async def extra_answers() -> tuple[str, str] | None:
        try:
            return await ask(api, "extra")
        except openai.NotFoundError:
            return None

    text, v2 = await eventually(extra_answers, within=WITHIN)
    assert text == "from b"
    assert v2 != v1
    _, status = await ops(sidecar, "/status")
    assert status["policy"]["files"] == ["main.yaml", "team/extra.yaml"]

    extra.unlink()

    async def extra_gone() -> openai.NotFoundError | None:
        try:
            await ask(api, "extra")
        except openai.NotFoundError as exc:
            return exc
        return None

    gone = await eventually(extra_gone, within=WITHIN)
    assert gone.code == "model_not_found"
    assert gone.response.headers["x-sidecar-policy-version"] == v1  # same content, same hash
    assert await ask(api) == ("from a", v1)


async def test_reloads_under_load_fail_no_request(
    api: openai.AsyncOpenAI, sidecar: Sidecar, folder: Path, upstream: FakeOpenAI
):
    # The two versions also differ in the provider's settings, so every reload retires the
    # provider client that requests of the previous snapshot may still be using.
    versions = {"a": policy(upstream, "a", timeout="5s"), "b": policy(upstream, "b", timeout="6s")}
    upstream.behave("up-a", reply="from a", chunk_delay=0.01)
    upstream.behave("up-b", reply="from b", chunk_delay=0.01)
    seen: dict[str, set[str]] = {"from a": set(), "from b": set()}
    failures: list[BaseException] = []
    done = 0
    stop = asyncio.Event()

    async def client(n: int) -> None:
        nonlocal done
        while not stop.is_set():
            try:
                if n % 4 == 0:  # a quarter of the clients stream
                    raw = await api.chat.completions.with_raw_response.create(
                        model="chat", messages=MESSAGES, stream=True
                    )
                    parts = [
                        c.choices[0].delta.content or "" async for c in raw.parse() if c.choices
                    ]
                    text = "".join(parts)
                else:
                    raw = await api.chat.completions.with_raw_response.create(
                        model="chat", messages=MESSAGES
                    )
                    text = raw.parse().choices[0].message.content or ""
                # The answer always comes from the version the response says it used.
                seen[text].add(raw.headers["x-sidecar-policy-version"])
                done += 1
            except Exception as exc:
                failures.append(exc)

    clients = [asyncio.create_task(client(n)) for n in range(20)]
    try:
        start = time.monotonic()
        swaps = 0
        while swaps < 6 or time.monotonic() - start < 2.0:
            which = "b" if swaps % 2 == 0 else "a"
            before = version(sidecar)
            write_policy(folder, "main.yaml", versions[which])
            swaps += 1
            await new_version(sidecar, before)
            await asyncio.sleep(0.15)
    finally:
        stop.set()
        await asyncio.gather(*clients)
    assert failures == []
    assert done > 50, done
    assert seen["from a"]
    assert seen["from b"]
    assert not seen["from a"] & seen["from b"]
    _, status = await ops(sidecar, "/status")
    assert status["last_reload"]["ok"] is True


async def test_stream_in_flight_finishes_on_the_snapshot_it_started_with(
    api: openai.AsyncOpenAI, sidecar: Sidecar, folder: Path, upstream: FakeOpenAI
):
    words = "one two three four five six seven eight"
    upstream.behave("up-a", reply=words, chunk_delay=0.12)
    raw = await api.chat.completions.with_raw_response.create(
        model="chat", messages=MESSAGES, stream=True
    )
    old = raw.headers["x-sidecar-policy-version"]
    chunks = aiter(raw.parse())
    text = ""
    while not text:  # the stream is under way
        chunk = await anext(chunks)
        text += (chunk.choices[0].delta.content or "") if chunk.choices else ""

    # The new policy removes the stream's provider and model, and points the route elsewhere.
    write_policy(
        folder,
        "main.yaml",
        f"""
        providers:
          other:
            type: openai
            base_url: {upstream.base_url}
        models:
          fresh: {{provider: other, name: up-b}}
        routes:
          chat:
            targets: [fresh]
        """,
    )

    async def reloaded() -> tuple[str, str] | None:
        answer = await ask(api)
        return answer if answer[1] != old else None

    assert (await eventually(reloaded, within=WITHIN))[0] == "from b"
    async for chunk in chunks:
        text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
    assert text == words
    assert upstream.cancelled == 0


async def test_retry_after_a_reload_uses_the_provider_of_its_snapshot(
    api: openai.AsyncOpenAI, sidecar: Sidecar, folder: Path, upstream: FakeOpenAI
):
    """A request waiting between two attempts while a reload retires its provider client
    still makes its second attempt (a retired client closes when idle, and a request that
    started earlier may still need it); the client closes once that attempt is done."""
    write_policy(
        folder,
        "main.yaml",
        policy(upstream, "a", extra="    retry: {attempts: 2, backoff: 600ms}"),
    )
    old = await new_version(sidecar, version(sidecar))
    snapshot = sidecar.holder.current
    assert snapshot is not None
    upstream.behave("up-a", reply="second try", status=503, fail_times=1)
    request = asyncio.create_task(ask(api))

    async def first_attempt_failed() -> bool:
        return len(upstream.calls("up-a")) == 1

    await eventually(first_attempt_failed, within=WITHIN)
    write_policy(folder, "main.yaml", policy(upstream, "b", timeout="7s"))
    await new_version(sidecar, old)

    assert await request == ("second try", old)
    assert len(upstream.calls("up-a")) == 2
    retired = cast(HttpProvider, snapshot.providers["main"])

    async def retired_client_closed() -> bool:
        session = retired._session  # its pooled connections to the upstream go with it
        return not retired.busy and session is not None and session.closed

    await eventually(retired_client_closed, within=WITHIN)


@pytest.mark.parametrize(
    ("edit", "needle", "message"),
    [
        ({"target": "b", "extra": "    colour: red"}, "colour: red", "unknown key 'colour'"),
        ({"target": "nope"}, "targets: [nope]", "'nope'"),
    ],
    ids=["unknown-key", "undefined-model"],
)
async def test_an_invalid_edit_keeps_the_last_good_policy_until_fixed(
    api: openai.AsyncOpenAI,
    sidecar: Sidecar,
    folder: Path,
    upstream: FakeOpenAI,
    edit: dict[str, str],
    needle: str,
    message: str,
):
    _, good = await ask(api)
    _, before = await ops(sidecar, "/status")
    bad = policy(upstream, **edit)
    write_policy(folder, "main.yaml", bad)
    line = next(i for i, text in enumerate(bad.splitlines(), 1) if needle in text)

    async def rejected() -> dict[str, Any] | None:
        _, status = await ops(sidecar, "/status")
        return (
            status
            if status["last_reload"]["failures"] > before["last_reload"]["failures"]
            else None
        )

    status = await eventually(rejected, within=WITHIN)
    last = status["last_reload"]
    assert last["ok"] is False
    assert last["version"] != good
    assert any(e.startswith(f"main.yaml:{line}: ") and message in e for e in last["errors"]), last
    assert status["policy"]["version"] == good
    assert status["ready"] is True
    assert (await ops(sidecar, "/readyz"))[0] == 200
    assert await ask(api) == ("from a", good)  # nothing of the bad edit applied, not even "b"

    write_policy(folder, "main.yaml", policy(upstream, "b"))

    async def recovered() -> tuple[str, str] | None:
        answer = await ask(api)
        return answer if answer[0] == "from b" else None

    _, fixed = await eventually(recovered, within=WITHIN)
    assert fixed != good
    _, status = await ops(sidecar, "/status")
    assert status["last_reload"]["ok"] is True
    assert status["last_reload"]["errors"] == []


def configmap_update(folder: Path, text: str, stamp: str) -> None:
    """What the kubelet does: a new timestamped folder, `..data` swapped atomically, the old
    folder removed. The visible `policy.yaml` is a symlink through `..data`."""
    old = os.readlink(folder / "..data") if (folder / "..data").is_symlink() else None
    new = folder / f"..{stamp}"
    new.mkdir(parents=True)
    write_policy(new, "policy.yaml", text)
    os.symlink(new.name, folder / "..data_tmp")
    os.replace(folder / "..data_tmp", folder / "..data")
    if not (folder / "policy.yaml").is_symlink():
        os.symlink("..data/policy.yaml", folder / "policy.yaml")
    if old is not None:
        shutil.rmtree(folder / old)


async def test_configmap_style_update_takes_effect(tmp_path: Path, upstream: FakeOpenAI):
    upstream.behave("up-a", reply="from a")
    upstream.behave("up-b", reply="from b")
    folder = tmp_path / "configmap"
    configmap_update(folder, policy(upstream, "a"), "2026_01_01_00_00_00.000001")
    sc = await start_sidecar(folder)
    try:
        async with openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{sc.port}/v1", api_key="app-key", max_retries=0
        ) as api:
            text, v1 = await ask(api)
            assert text == "from a"

            configmap_update(folder, policy(upstream, "b"), "2026_01_01_00_05_00.000002")
            assert not (folder / "..2026_01_01_00_00_00.000001").exists()

            async def answered_by_b() -> tuple[str, str] | None:
                answer = await ask(api)
                return answer if answer[0] == "from b" else None

            _, v2 = await eventually(answered_by_b, within=WITHIN)
            assert v2 != v1
            _, status = await ops(sc, "/status")
            assert status["policy"]["files"] == ["policy.yaml"]  # never ..data/ or ..2026_*/
            assert status["last_reload"]["ok"] is True
            assert status["last_reload"]["failures"] == 0
    finally:
        await sc.stop()


async def test_readiness_follows_the_policy(folder: Path, upstream: FakeOpenAI):
    write_policy(folder, "main.yaml", policy(upstream, "nope"))
    sc = await start_sidecar(folder)  # starts anyway, to say what is wrong
    try:
        assert await ops(sc, "/healthz") == (200, {"status": "ok"})
        assert (await ops(sc, "/readyz"))[0] == 503
        _, status = await ops(sc, "/status")
        assert status["ready"] is False
        assert status["last_reload"]["ok"] is False
        assert any(
            e.startswith("main.yaml:") and "nope" in e for e in status["last_reload"]["errors"]
        )

        async with openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{sc.port}/v1", api_key="app-key", max_retries=0
        ) as api:
            with pytest.raises(openai.APIStatusError) as info:
                await api.chat.completions.create(model="chat", messages=MESSAGES)
            err = info.value
            assert err.status_code == 503
            assert err.code == "not_ready"
            assert err.type == "server_error"
            assert "/status" in err.message
            assert int(err.response.headers["retry-after"]) >= 1

            write_policy(folder, "main.yaml", policy(upstream, "b"))

            async def ready() -> bool:
                return (await ops(sc, "/readyz"))[0] == 200

            await eventually(ready, within=WITHIN)
            assert (await ask(api))[0] == "from b"
            assert await ops(sc, "/healthz") == (200, {"status": "ok"})
    finally:
        await sc.stop()


async def test_a_state_backend_a_reload_replaced_is_closed_after_its_last_request(
    tmp_path: Path, upstream: FakeOpenAI, redis_server: RedisServer
):
    folder = tmp_path / "p"
    providers = _one_route(upstream)
    write_policy(
        folder, "p.yaml", providers + f'state: {{backend: redis, url: "{redis_server.url}"}}'
    )
    baseline = await redis_server.clients()
    sc = await start_sidecar(folder, state_dir=tmp_path)
    try:
        async with openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{sc.port}/v1", api_key="x", max_retries=0
        ) as api:
            await api.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "hi"}]
            )
            assert await redis_server.clients() > baseline  # usage went to Redis
            write_policy(folder, "p.yaml", providers + "state: {backend: memory}")
            await sc.holder.reload()
            await api.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "hi"}]
            )
        assert await eventually(lambda: redis_server.at_most(baseline), within=3.0)
    finally:
        await sc.stop()


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_editing_state_settings_keeps_usage_and_spend(
    tmp_path: Path, upstream: FakeOpenAI, backend: str
):
    folder = tmp_path / "p"
    providers = _one_route(upstream)
    write_policy(folder, "p.yaml", providers + f"state: {{backend: {backend}}}")
    sc = await start_sidecar(folder, state_dir=tmp_path)

    async def requests() -> int:
        url = f"http://127.0.0.1:{sc.ops_port}/usage?scope=route"
        async with aiohttp.ClientSession() as http, http.get(url) as r:
            rows = {row["value"]: row for row in (await r.json())["rows"]}
        return int(rows["chat"]["requests"]) if "chat" in rows else 0

    try:
        async with openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{sc.port}/v1", api_key="x", max_retries=0
        ) as api:
            ask = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
            await api.chat.completions.create(**ask)  # type: ignore[call-overload]
            assert await eventually(lambda: _equals(requests, 1))
            edit = f"state: {{backend: {backend}, on_error: closed, flush_interval: 200ms}}"
            write_policy(folder, "p.yaml", providers + edit)
            assert await sc.holder.reload()
            await api.chat.completions.create(**ask)  # type: ignore[call-overload]
            assert await eventually(lambda: _equals(requests, 2))
    finally:
        await sc.stop()


async def _equals(count: Callable[[], Awaitable[int]], expected: int) -> bool:
    return await count() == expected


def _one_route(upstream: FakeOpenAI) -> str:
    """A policy with route `chat` to one model, for tests that vary only `state:`."""
    return f"""
        providers:
          main: {{type: openai, base_url: "{upstream.base_url}"}}
        models:
          a: {{provider: main, name: up-a}}
        routes:
          chat: {{targets: [a]}}
        """
