"""Replaying the savings workload: straight at the large model, or through a sidecar.

Requests go out in the workload's order, at most `concurrency` at a time; a conversation's
turns go one after another, and a request that repeats or rewords an earlier one waits for
that one's answer (so whether a cache can serve it does not depend on timing). Batch lines
go through the sidecar's Batches API with the `openai` SDK's files and batches calls;
straight at the provider, they are ordinary calls at list price like the rest of the
baseline. Every answer is kept for the oracle; interactive requests are timed from sending
to the last byte of the answer.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import openai
from workload import Request, Workload, batches

from sidecar.providers.anthropic_wire import request as to_anthropic

LARGE = "claude-sonnet-4-5"  # what the baseline calls directly
MAX_TOKENS = 4096  # the sidecar's Anthropic default, so both paths send the same request


@dataclass
class Outcome:
    answer: str | None = None  # None: the request failed
    seconds: float | None = None  # interactive requests only
    cache: str | None = None  # x-sidecar-cache
    error: str | None = None


@dataclass
class Replay:
    workload: Workload
    concurrency: int
    outcomes: dict[int, Outcome] = field(default_factory=dict)

    async def direct(self, fake: str) -> None:
        """The baseline: each request as the app would send it to Anthropic itself (the
        Messages request the sidecar's adapter makes of it), at list price."""
        headers = {"x-api-key": "bench", "anthropic-version": "2023-06-01"}
        async with aiohttp.ClientSession(f"{fake}", headers=headers) as session:

            async def send(r: Request) -> Outcome:
                body = to_anthropic(r.body, LARGE, MAX_TOKENS)
                async with session.post("/v1/messages", json=body) as response:
                    if response.status != 200:
                        return Outcome(error=f"HTTP {response.status}")
                    if not r.stream:
                        message = await response.json()
                        return Outcome("".join(b["text"] for b in message["content"]))
                    text = []
                    async for line in response.content:
                        if line.startswith(b"data: {"):
                            event = json.loads(line[6:])
                            if event.get("type") == "content_block_delta":
                                text.append(event["delta"].get("text", ""))
                    return Outcome("".join(text))

            await self._run(send, None)

    async def sidecar(self, port: int) -> None:
        base = f"http://127.0.0.1:{port}"
        async with (
            aiohttp.ClientSession(base) as session,
            openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="bench", max_retries=0) as sdk,
        ):

            async def send(r: Request) -> Outcome:
                headers = {"x-sidecar-user": r.user}
                async with session.post(
                    "/v1/chat/completions", json=r.body, headers=headers
                ) as response:
                    cache = response.headers.get("x-sidecar-cache")
                    if response.status != 200:
                        return Outcome(cache=cache, error=f"HTTP {response.status}")
                    if not r.stream:
                        answer = await response.json()
                        return Outcome(answer["choices"][0]["message"]["content"], cache=cache)
                    text = []
                    async for line in response.content:
                        if line.startswith(b"data: {"):
                            chunk = json.loads(line[6:])
                            for choice in chunk.get("choices") or ():
                                text.append((choice.get("delta") or {}).get("content") or "")
                    return Outcome("".join(text), cache=cache)

            await self._run(send, sdk)

    async def _run(self, send: Any, sdk: openai.AsyncOpenAI | None) -> None:
        """Everything, in order; batch lines through `sdk`'s Batches API when given."""
        done = {r.index: asyncio.Event() for r in self.workload.requests}
        gate = asyncio.Semaphore(self.concurrency)

        async def one(r: Request) -> None:
            for before in (r.after, r.original):
                if before is not None:
                    await done[before].wait()
            async with gate:
                started = time.perf_counter()
                try:
                    outcome = await send(r)
                except (aiohttp.ClientError, TimeoutError, KeyError, ValueError) as exc:
                    outcome = Outcome(error=exc.__class__.__name__)
                if r.kind != "batch":
                    outcome.seconds = time.perf_counter() - started
            self.outcomes[r.index] = outcome
            done[r.index].set()

        async def submit(lines: list[Request]) -> None:
            assert sdk is not None
            # Submitted where it stands in the order, once what it repeats was answered.
            inside = {r.index for r in lines}
            waits = [r.original for r in lines if r.original not in inside | {None}]
            for before in [lines[0].index - 1, *waits]:
                if before >= 0:
                    await done[before].wait()
            await _through_batches(sdk, lines, self.outcomes)
            for r in lines:
                done[r.index].set()

        tasks = []
        if sdk is not None:
            tasks += [asyncio.create_task(submit(lines)) for _, lines in batches(self.workload)]
        for r in self.workload.requests:
            if r.kind != "batch" or sdk is None:
                tasks.append(asyncio.create_task(one(r)))
        await asyncio.gather(*tasks)


async def _through_batches(
    sdk: openai.AsyncOpenAI, lines: list[Request], outcomes: dict[int, Outcome]
) -> None:
    """One batch through the sidecar's OpenAI-compatible Batches API, waited for."""
    jsonl = "\n".join(
        json.dumps(
            {
                "custom_id": str(r.index),
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": r.body,
            }
        )
        for r in lines
    ).encode()
    uploaded = await sdk.files.create(file=("lines.jsonl", jsonl), purpose="batch")
    batch = await sdk.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    while batch.status not in ("completed", "failed", "cancelled", "expired"):
        await asyncio.sleep(0.2)
        batch = await sdk.batches.retrieve(batch.id)
    for r in lines:
        outcomes[r.index] = Outcome(error=f"batch {batch.status}")
    if batch.output_file_id:
        content = await sdk.files.content(batch.output_file_id)
        for raw in content.text.splitlines():
            line = json.loads(raw)
            response = line.get("response") or {}
            if response.get("status_code") == 200:
                answer = response["body"]["choices"][0]["message"]["content"]
                outcomes[int(line["custom_id"])] = Outcome(answer)
