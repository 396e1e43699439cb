"""One battery for the `State` seam, run against every backend: memory, sqlite (a file in
the test's folder) and Redis (a real `redis-server` on a random port, a key prefix per test).

What limits and budgets rely on: GCRA allowances are exact and give back, slots are capped
and reclaimed, reservations hold money atomically (also under `asyncio.gather`), `once`
fires once, usage rows add up and are found by prefix."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sidecar.stores.memory import MemoryState
from sidecar.stores.redis_backend import RedisState
from sidecar.stores.sqlite import SqliteState
from sidecar.stores.state import LEVER_FIELDS, LEVERS, Hold, State, Usage

BACKENDS = ["memory", "sqlite", "redis"]


@pytest.fixture(params=BACKENDS)
async def state(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[State]:
    store: State
    if request.param == "memory":
        store = MemoryState()
    elif request.param == "sqlite":
        store = await SqliteState(tmp_path / "state.db", flush_interval=0.05).open()
    else:
        server = request.getfixturevalue("redis_server")
        store = RedisState(server.url, prefix=f"test-{uuid.uuid4().hex[:8]}:")
    yield store
    await store.close()


def hold(keys: tuple[str, ...], amount: float, ttl: float = 60.0) -> Hold:
    return Hold(uuid.uuid4().hex, keys, amount, time.time() + ttl)


def rows(*keys: str) -> tuple[tuple[str, float], ...]:
    return tuple((k, time.time() + 3600) for k in keys)


# -- rates (GCRA) ------------------------------------------------------------------------


async def test_rate_admits_exactly_the_limit_then_says_when(state: State):
    results = [await state.take_rate("r:a", 1.0, 10, 60.0) for _ in range(11)]
    assert results[:10] == [0.0] * 10
    # Ten per minute is one every six seconds: the 11th is due six seconds after the 1st.
    assert 5.5 < results[10] <= 6.0
    # Refusing spends nothing: asking again gives the same answer.
    assert 5.5 < await state.take_rate("r:a", 1.0, 10, 60.0) <= 6.0
    # Other keys are untouched.
    assert await state.take_rate("r:b", 1.0, 10, 60.0) == 0.0


async def test_rate_admits_again_after_the_retry_after(state: State):
    for _ in range(5):
        assert await state.take_rate("r:fast", 1.0, 5, 0.5) == 0.0
    wait = await state.take_rate("r:fast", 1.0, 5, 0.5)
    assert 0.05 < wait <= 0.1
    await asyncio.sleep(wait + 0.02)
    assert await state.take_rate("r:fast", 1.0, 5, 0.5) == 0.0
    assert await state.take_rate("r:fast", 1.0, 5, 0.5) > 0.0


async def test_rate_costs_are_weighted_and_adjust_gives_back(state: State):
    assert await state.take_rate("t:a", 80.0, 100, 60.0) == 0.0
    assert await state.take_rate("t:a", 30.0, 100, 60.0) > 0.0  # 110 > 100
    await state.adjust_rate("t:a", -70.0, 100, 60.0)  # the real count was 10
    assert await state.take_rate("t:a", 30.0, 100, 60.0) == 0.0  # 40
    assert await state.take_rate("t:a", 60.0, 100, 60.0) == 0.0  # 100
    assert await state.take_rate("t:a", 1.0, 100, 60.0) > 0.0
    await state.adjust_rate("t:a", 5.0, 100, 60.0)  # the real count was higher: charged
    wait = await state.take_rate("t:a", 1.0, 100, 60.0)
    assert 3.0 < wait <= 3.6  # 6 tokens over, at 100 per minute


async def test_rate_is_exact_under_concurrency(state: State):
    results = await asyncio.gather(*(state.take_rate("r:c", 1.0, 20, 60.0) for _ in range(100)))
    assert sum(1 for r in results if r == 0.0) == 20


# -- concurrency slots -------------------------------------------------------------------


async def test_slots_respect_the_limit_and_release_frees_one(state: State):
    got = await asyncio.gather(*(state.acquire_slot("s:a", 3, f"l{i}", 60.0) for i in range(10)))
    assert sum(got) == 3
    holders = [f"l{i}" for i, ok in enumerate(got) if ok]
    assert not await state.acquire_slot("s:a", 3, "late", 60.0)
    await state.release_slot("s:a", holders[0])
    assert await state.acquire_slot("s:a", 3, "late", 60.0)
    assert not await state.acquire_slot("s:a", 3, "later", 60.0)
    await state.release_slot("s:a", "never-held")  # harmless
    assert not await state.acquire_slot("s:a", 3, "later", 60.0)


async def test_expired_leases_are_reclaimed(state: State):
    assert await state.acquire_slot("s:b", 1, "dead", 0.1)
    assert not await state.acquire_slot("s:b", 1, "next", 60.0)
    await asyncio.sleep(0.15)  # its holder died without releasing
    assert await state.acquire_slot("s:b", 1, "next", 60.0)


# -- budgets: reserve, spent, settle -----------------------------------------------------


async def test_holds_count_against_the_limit_and_settle_moves_them_to_spent(state: State):
    first = hold(("b:x",), 0.4)
    assert await state.reserve(first, (1.0,)) == -1
    assert await state.spent("b:x") == pytest.approx((0.0, 0.4))
    second = hold(("b:x",), 0.4)
    assert await state.reserve(second, (1.0,)) == -1
    assert await state.reserve(hold(("b:x",), 0.4), (1.0,)) == 0  # 1.2 > 1.0
    await state.settle(first, rows("b:x", "u:other"), Usage(cost_usd=0.1))
    assert await state.spent("b:x") == pytest.approx((0.1, 0.4))
    assert await state.reserve(hold(("b:x",), 0.4), (1.0,)) == -1  # 0.1 + 0.4 + 0.4
    await state.settle(second, rows("b:x"), Usage(cost_usd=0.3))
    spent, held = await state.spent("b:x")
    assert spent == pytest.approx(0.4)
    assert held == pytest.approx(0.4)


async def test_reserve_names_the_first_budget_without_room_and_holds_nothing(state: State):
    keys = ("b:team", "b:user", "b:route")
    assert await state.reserve(hold(keys, 0.3), (1.0, 0.5, 1.0)) == -1
    assert await state.reserve(hold(keys, 0.3), (1.0, 0.5, 1.0)) == 1
    # A refused reservation holds nothing anywhere, not even on the keys before it.
    assert await state.spent("b:team") == pytest.approx((0.0, 0.3))
    assert await state.spent("b:route") == pytest.approx((0.0, 0.3))
    assert await state.reserve(hold(keys, 0.3), (0.5, 1.0, 1.0)) == 0


async def test_an_expired_hold_stops_counting(state: State):
    assert await state.reserve(hold(("b:dead",), 0.9, ttl=0.1), (1.0,)) == -1
    assert await state.reserve(hold(("b:dead",), 0.9), (1.0,)) == 0
    await asyncio.sleep(0.2)  # its request died without settling
    assert await state.spent("b:dead") == (0.0, 0.0)
    assert await state.reserve(hold(("b:dead",), 0.9), (1.0,)) == -1


async def test_concurrent_reservations_never_exceed_the_limit(state: State):
    holds = [hold(("b:c",), 0.1) for _ in range(50)]
    results = await asyncio.gather(*(state.reserve(h, (1.0,)) for h in holds))
    admitted = [h for h, r in zip(holds, results, strict=True) if r == -1]
    assert len(admitted) == 10
    assert all(r in (-1, 0) for r in results)
    # Settle them all concurrently at 0.05 each: spend is exact, nothing stays held.
    await asyncio.gather(*(state.settle(h, rows("b:c"), Usage(cost_usd=0.05)) for h in admitted))
    assert await state.spent("b:c") == pytest.approx((0.5, 0.0))
    results = await asyncio.gather(*(state.reserve(hold(("b:c",), 0.1), (1.0,)) for _ in range(20)))
    assert results.count(-1) == 5


async def test_settle_without_a_hold_records_usage(state: State):
    await state.settle(None, rows("b:free"), Usage(cost_usd=0.25))
    assert await state.spent("b:free") == pytest.approx((0.25, 0.0))
    assert await state.spent("b:unknown") == (0.0, 0.0)


# -- once, usage rows --------------------------------------------------------------------


async def test_once_is_true_once_per_ttl(state: State):
    firsts = await asyncio.gather(*(state.once("warned:x", 0.2) for _ in range(10)))
    assert firsts.count(True) == 1
    assert await state.once("warned:y", 0.2)
    # TTLs are wall-clock (Redis's TIME on Redis): leave room for a VM's clock to be nudged.
    await asyncio.sleep(0.6)
    assert await state.once("warned:x", 0.2)


def levers(**saved: float) -> tuple[float, ...]:
    return tuple(saved.get(lever, 0.0) for lever in LEVERS)


async def test_usage_rows_add_up_and_are_found_by_prefix(state: State):
    one = Usage(1, 7, 3, 2, 0.25, 0.5, levers(cache=0.75, retry=-0.25))
    await state.settle(None, rows("u:day:D:team:a", "u:day:D:team:b", "u:day:D:user:a"), one)
    await state.settle(None, rows("u:day:D:team:a", "u:hour:H:team:a"), one)
    found = await state.usage("u:day:D:team:")
    assert set(found) == {"u:day:D:team:a", "u:day:D:team:b"}
    assert found["u:day:D:team:a"] == pytest.approx(
        {
            "requests": 2,
            "input_tokens": 14,
            "output_tokens": 6,
            "cached_tokens": 4,
            "cost_usd": 0.5,
            "saved_usd": 1.0,
            **{f: 0.0 for f in LEVER_FIELDS},
            "saved_cache_usd": 1.5,
            "saved_retry_usd": -0.5,
            "feedback": 0.0,
            "feedback_score": 0.0,
        }
    )
    assert found["u:day:D:team:b"]["requests"] == 1
    zero = Usage(1)  # fields that are zero still read back as zero
    await state.settle(None, rows("u:day:D:team:c"), zero)
    assert (await state.usage("u:day:D:team:c"))["u:day:D:team:c"] == {
        f: (1.0 if f == "requests" else 0.0) for f in Usage.FIELDS
    }
    assert await state.usage("u:week:") == {}


async def test_feedback_adds_to_rows_without_adding_requests(state: State):
    await state.settle(None, rows("u:day:D:route:a"), Usage(1, 7, 3, 0, 0.25))
    scored = Usage(0, feedback=1, feedback_score=0.75)
    await state.settle(None, rows("u:day:D:route:a", "u:day:D:model:m"), scored)
    await state.settle(None, rows("u:day:D:route:a"), Usage(0, feedback=1, feedback_score=0.0))
    row = (await state.usage("u:day:D:route:"))["u:day:D:route:a"]
    assert (row["requests"], row["cost_usd"]) == (1, 0.25)
    assert (row["feedback"], row["feedback_score"]) == (2, 0.75)
    assert (await state.usage("u:day:D:model:"))["u:day:D:model:m"]["feedback"] == 1


# -- notes and tallies (feedback's index of answers, shadow trial results) ----------------


async def test_a_note_is_recalled_until_it_expires_and_a_later_one_replaces_it(state: State):
    assert await state.recall("a:none") is None
    await state.note("a:x", '{"route": "chat"}', 60.0)
    await state.note("a:short", "soon gone", 0.2)
    assert await state.recall("a:x") == '{"route": "chat"}'
    assert await state.recall("a:short") == "soon gone"
    await state.note("a:x", "replaced", 60.0)
    assert await state.recall("a:x") == "replaced"
    await asyncio.sleep(0.6)  # wall-clock TTLs: room for a nudged clock, as for `once`
    assert await state.recall("a:short") is None
    assert await state.recall("a:x") == "replaced"


async def test_tallies_add_up_per_field_and_are_found_by_prefix(state: State):
    later = time.time() + 3600
    await state.tally("s:chat:mini:D1", {"n": 1, "agree": 1, "cost": 0.25}, later)
    await asyncio.gather(
        *(state.tally("s:chat:mini:D1", {"n": 1, "lat3": 1}, later) for _ in range(20))
    )
    await state.tally("s:chat:tiny:D1", {"n": 1, "errors": 1}, later)
    await state.tally("s:other:mini:D1", {"n": 5}, later)
    await state.tally("s:chat:gone:D0", {"n": 1}, time.time() - 1)  # expired already
    found = await state.tallies("s:chat:")
    assert set(found) == {"s:chat:mini:D1", "s:chat:tiny:D1"}
    assert found["s:chat:mini:D1"] == pytest.approx({"n": 21, "agree": 1, "cost": 0.25, "lat3": 20})
    assert found["s:chat:tiny:D1"] == {"n": 1, "errors": 1}
    assert await state.tallies("s:none:") == {}


# -- sqlite: durable across a restart ----------------------------------------------------


async def test_sqlite_keeps_spend_rates_and_once_across_close_and_reopen(tmp_path: Path):
    path = tmp_path / "s.db"
    first = await SqliteState(path, flush_interval=60.0).open()  # only close() flushes
    for _ in range(3):
        assert await first.take_rate("r:a", 1.0, 3, 60.0) == 0.0
    await first.settle(None, rows("u:day:D:team:a"), Usage(1, 7, 3, 0, 0.25))
    assert await first.once("warned:a", 60.0)
    await first.note("a:x", "kept", 60.0)
    await first.tally("s:r:c:D", {"n": 2, "agree": 1}, time.time() + 60)
    await first.close()

    second = await SqliteState(path).open()
    try:
        assert await second.spent("u:day:D:team:a") == pytest.approx((0.25, 0.0))
        assert (await second.usage("u:day:"))["u:day:D:team:a"]["input_tokens"] == 7
        assert 19.0 < await second.take_rate("r:a", 1.0, 3, 60.0) <= 20.0
        assert not await second.once("warned:a", 60.0)
        assert await second.recall("a:x") == "kept"
        assert (await second.tallies("s:"))["s:r:c:D"] == {"n": 2.0, "agree": 1.0}
        await second.settle(None, rows("u:day:D:team:a"), Usage(1, 7, 3, 0, 0.25))
    finally:
        await second.close()
    third = await SqliteState(path).open()
    try:
        assert await third.spent("u:day:D:team:a") == pytest.approx((0.5, 0.0))
    finally:
        await third.close()


# -- sticky levels (a conversation's tier) ---------------------------------------------


async def test_stick_keeps_the_highest_level_reached(state: State):
    assert await state.stick("t:conv", -1, 60.0) == -1  # nothing held: a read
    assert await state.stick("t:conv", 0, 60.0) == 0
    assert await state.stick("t:conv", 2, 60.0) == 2
    assert await state.stick("t:conv", 1, 60.0) == 2  # a lower tier does not bring it down
    assert await state.stick("t:conv", -1, 60.0) == 2
    assert await state.stick("t:other", -1, 60.0) == -1  # other conversations untouched


async def test_a_stuck_level_expires_from_when_it_was_last_reached(state: State):
    assert await state.stick("t:short", 1, 0.3) == 1
    await asyncio.sleep(0.15)
    assert await state.stick("t:short", 0, 0.3) == 1  # lower: does not refresh the time
    await asyncio.sleep(0.2)
    assert await state.stick("t:short", -1, 0.3) == -1  # 0.35 s after it was reached
    assert await state.stick("t:short", 1, 0.3) == 1
    await asyncio.sleep(0.15)
    assert await state.stick("t:short", 1, 0.3) == 1  # reached again: the time starts over
    await asyncio.sleep(0.2)
    assert await state.stick("t:short", -1, 0.3) == 1


async def test_stick_is_atomic_under_concurrency(state: State):
    results = await asyncio.gather(*(state.stick("t:race", i % 4, 60.0) for i in range(40)))
    assert max(results) == 3
    assert await state.stick("t:race", -1, 60.0) == 3


async def test_sqlite_keeps_stuck_levels_across_a_restart(tmp_path: Path):
    path = tmp_path / "levels.db"
    store = await SqliteState(path).open()
    await store.stick("t:kept", 2, 60.0)
    await store.close()
    again = await SqliteState(path).open()
    try:
        assert await again.stick("t:kept", 0, 60.0) == 2
    finally:
        await again.close()


async def test_sqlite_opens_a_file_from_before_the_ledger_and_adds_its_columns(tmp_path: Path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE usage_rows (
            key TEXT PRIMARY KEY, requests REAL, input_tokens REAL, output_tokens REAL,
            cached_tokens REAL, cost_usd REAL, saved_usd REAL, expires_at REAL);
        CREATE TABLE rates (key TEXT PRIMARY KEY, tat REAL);
        CREATE TABLE seen (key TEXT PRIMARY KEY, expires_at REAL);
        """
    )
    db.execute(
        "INSERT INTO usage_rows VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        ("u:day:D:team:a", 2, 14, 6, 0, 0.5, 0.25, time.time() + 3600),
    )
    db.commit()
    db.close()
    store = await SqliteState(path).open()
    try:
        row = (await store.usage("u:day:"))["u:day:D:team:a"]
        assert (row["cost_usd"], row["saved_usd"]) == (0.5, 0.25)
        assert row["saved_selection_usd"] == 0.0
        await store.settle(
            None, rows("u:day:D:team:a"), Usage(1, 7, 3, 0, 0.25, 0.1, levers(selection=0.1))
        )
    finally:
        await store.close()
    again = await SqliteState(path).open()
    try:
        row = (await again.usage("u:day:"))["u:day:D:team:a"]
        assert row["requests"] == 3
        assert row["saved_usd"] == pytest.approx(0.35)
        assert row["saved_selection_usd"] == pytest.approx(0.1)
    finally:
        await again.close()


async def test_sqlite_writes_behind_while_running(tmp_path: Path):
    path = tmp_path / "s.db"
    store = await SqliteState(path, flush_interval=0.05).open()
    try:
        await store.settle(None, rows("u:total:all:user:a"), Usage(cost_usd=1.5))
        await asyncio.sleep(0.2)
        # A second reader of the file (as after a crash) sees the flushed row.
        reader = await SqliteState(path, flush_interval=60.0).open()
        try:
            assert await reader.spent("u:total:all:user:a") == pytest.approx((1.5, 0.0))
        finally:
            await reader.close()  # it changed nothing, so it writes nothing
    finally:
        await store.close()


async def test_sqlite_close_during_a_background_write_loses_nothing(tmp_path: Path):
    """A stop that lands while the flusher is writing (the kubelet's SIGTERM at any moment)
    must neither close the file under that write (a crash, or lost rows) nor drop it."""
    path = tmp_path / "s.db"
    store = await SqliteState(path, flush_interval=0.01).open()
    for i in range(60_000):  # a write that takes a while on its thread
        await store.note(f"n:{i}", "x", 600.0)
    for _ in range(2_000):  # until the flusher has begun writing
        if store._lock.locked():
            break
        await asyncio.sleep(0.001)
    assert store._lock.locked()
    await store.close()

    again = await SqliteState(path, flush_interval=60.0).open()
    try:
        assert await again.recall("n:0") == "x"
        assert await again.recall("n:59999") == "x"
    finally:
        await again.close()
