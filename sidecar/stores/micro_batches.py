"""Embeddings micro-batches: concurrent calls for one model, sent upstream as one call.

A model with `embeddings: {batch_window, max_inputs}` has its embeddings calls grouped by
everything but their inputs (the provider client, the model, `dimensions`,
`encoding_format`, `user`; texts apart from token arrays): the first call of a group waits
up to `batch_window` for others; the group goes out when the window ends, or at once when
it holds `max_inputs` inputs. Each caller gets exactly its own vectors, in its own order
(`index` from 0), and its share of the usage: the provider's total split in proportion to
each caller's tokens (tiktoken's count of its texts, its token arrays' lengths) by largest
remainder, so the shares add up to exactly what the provider billed.

A failure of the merged call is every caller's (each one's dispatch then retries or falls
over as its route says), except a refusal (a 4xx): one caller's input may be at fault, so
each caller's inputs go again on their own and only the faulty one fails. A caller that
gives up before its group goes out (its deadline, its app gone) takes its inputs with it.

This is process-local state (the groups forming now); one instance per process, in
`Stores`, so groups survive a reload (a new provider client starts new groups).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import orjson

from sidecar.errors import CLIENT, PROTOCOL, UpstreamError
from sidecar.policy.model import MicroBatch
from sidecar.providers.base import EMBEDDINGS, MALFORMED, Call, Provider, Reply
from sidecar.tokens import count_text

log = logging.getLogger("sidecar.embeddings")

Key = tuple[int, str, str, str]  # provider client, model, the other parameters, input kind


@dataclass(eq=False, slots=True)
class _Caller:
    call: Call
    items: list[Any]  # its inputs, as the provider takes them in a list
    weight: int  # its tokens: its share of the usage
    answer: asyncio.Future[Reply]


@dataclass(eq=False, slots=True)
class _Group:
    provider: Provider
    model: str
    callers: list[_Caller] = field(default_factory=list)
    inputs: int = 0
    timer: asyncio.TimerHandle | None = None


class MicroBatches:
    def __init__(self) -> None:
        self._forming: dict[Key, _Group] = {}
        self._sending: set[asyncio.Task[None]] = set()
        self.upstream_calls = 0  # merged calls sent (for tests and benchmarks)

    async def send(self, provider: Provider, call: Call, policy: MicroBatch) -> Reply:
        items, kind = _items(call.body.get("input"))
        if call.operation != EMBEDDINGS or items is None or len(items) >= policy.max_inputs:
            return await provider.send(call)
        params = orjson.dumps(
            {k: v for k, v in call.body.items() if k not in ("input", "model")},
            option=orjson.OPT_SORT_KEYS,
        ).decode()
        key = (id(provider), call.model, params, kind)
        group = self._forming.get(key)
        if group is not None and group.inputs + len(items) > policy.max_inputs:
            self._go(key, group)
            group = None
        if group is None:
            group = self._forming[key] = _Group(provider, call.model)
            group.timer = asyncio.get_running_loop().call_later(policy.window, self._go, key, group)
        caller = _Caller(call, items, sum(_tokens(i) for i in items), _future())
        group.callers.append(caller)
        group.inputs += len(items)
        if group.inputs >= policy.max_inputs:
            self._go(key, group)
        try:
            return await asyncio.shield(caller.answer)
        except asyncio.CancelledError:
            caller.answer.cancel()  # whatever comes for it is dropped
            if self._forming.get(key) is group and caller in group.callers:
                group.callers.remove(caller)  # not sent yet: its inputs leave with it
                group.inputs -= len(items)
            raise

    def _go(self, key: Key, group: _Group) -> None:
        if self._forming.get(key) is group:
            del self._forming[key]
        if group.timer is not None:
            group.timer.cancel()
        if group.callers:
            task = asyncio.create_task(self._send(group))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, group: _Group) -> None:
        callers = group.callers
        if len(callers) == 1:
            await _alone(group.provider, callers[0])
            return
        body = {**callers[0].call.body, "input": [i for c in callers for i in c.items]}
        self.upstream_calls += 1
        try:
            reply = await group.provider.send(Call(EMBEDDINGS, body, group.model, False))
            answers = _split(reply.body, callers)
        except UpstreamError as exc:
            if exc.kind == CLIENT:  # whose input? each goes on its own to find out
                await asyncio.gather(*(_alone(group.provider, c) for c in callers))
                return
            for caller in callers:
                _settle(caller, error=_copy(exc))
            return
        except BaseException as exc:
            for caller in callers:
                _settle(caller, error=UpstreamError(PROTOCOL, f"merged call failed ({exc!r})"))
            raise
        for caller, answer in zip(callers, answers, strict=True):
            _settle(caller, Reply(body=answer))

    async def close(self) -> None:
        for task in list(self._sending):
            task.cancel()
        await asyncio.gather(*self._sending, return_exceptions=True)


def _future() -> asyncio.Future[Reply]:
    return asyncio.get_running_loop().create_future()


def _items(value: Any) -> tuple[list[Any] | None, str]:
    """The inputs as a list the provider takes, and whether they are texts or token
    arrays (the two cannot share a call); None for anything else (the provider judges)."""
    if isinstance(value, str):
        return [value], "text"
    if not isinstance(value, list) or not value:
        return None, ""
    if all(isinstance(v, str) for v in value):
        return list(value), "text"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return [value], "tokens"  # one token array
    if all(isinstance(v, list) and v and all(isinstance(t, int) for t in v) for v in value):
        return list(value), "tokens"
    return None, ""


def _tokens(item: Any) -> int:
    return len(item) if isinstance(item, list) else count_text(item)


def shares(total: int, weights: list[int]) -> list[int]:
    """`total` split in proportion to `weights` (each at least 1), in whole tokens that add
    up to `total` exactly: largest remainder, ties to the earlier caller."""
    weights = [max(1, w) for w in weights]
    whole = sum(weights)
    base = [total * w // whole for w in weights]
    rests = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % whole), i))
    for i in rests[: total - sum(base)]:
        base[i] += 1
    return base


def _split(raw: bytes, callers: list[_Caller]) -> list[bytes]:
    """Each caller's answer: its vectors, re-indexed from 0, and its share of the usage."""
    try:
        answer = orjson.loads(raw)
        data = sorted(answer["data"], key=lambda d: d["index"])
        usage = answer.get("usage") or {}
        total = int(usage.get("prompt_tokens") or 0)
    except (*MALFORMED, orjson.JSONDecodeError) as exc:
        raise UpstreamError(PROTOCOL, f"malformed embeddings answer ({exc!r})") from None
    if len(data) != sum(len(c.items) for c in callers):
        raise UpstreamError(PROTOCOL, "the merged call's answer has the wrong number of vectors")
    out, start = [], 0
    for caller, share in zip(callers, shares(total, [c.weight for c in callers]), strict=True):
        mine = [{**d, "index": i} for i, d in enumerate(data[start : start + len(caller.items)])]
        start += len(caller.items)
        own = {**answer, "data": mine}
        if usage:
            own["usage"] = {"prompt_tokens": share, "total_tokens": share}
        out.append(orjson.dumps(own))
    return out


async def _alone(provider: Provider, caller: _Caller) -> None:
    try:
        _settle(caller, await provider.send(caller.call))
    except UpstreamError as exc:
        _settle(caller, error=exc)


def _settle(
    caller: _Caller, reply: Reply | None = None, error: BaseException | None = None
) -> None:
    if caller.answer.done():  # it gave up meanwhile
        return
    if error is not None:
        caller.answer.set_exception(error)
    else:
        assert reply is not None
        caller.answer.set_result(reply)


def _copy(exc: UpstreamError) -> UpstreamError:
    """One exception object per caller: each raises (and annotates) its own."""
    return UpstreamError(
        exc.kind, exc.message, status=exc.status, retry_after=exc.retry_after, raw_body=exc.raw_body
    )
