"""`llm-sidecar jobs submit|status|results`: the batch API from a terminal.

A thin client of the sidecar's own HTTP API (the same endpoints the OpenAI SDK uses), so
it works against any sidecar a user can reach. `submit` accepts OpenAI batch lines
(`{custom_id, method, url, body}`) or bare request bodies, one per line.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import orjson

from sidecar.jobs.model import CHAT_ENDPOINT

FINISHED = ("completed", "failed", "cancelled", "expired")


class ClientError(Exception):
    pass


def batch_lines(content: bytes, endpoint: str | None) -> tuple[bytes, str]:
    """The file as OpenAI batch lines, and its endpoint."""
    rows = [orjson.loads(line) for line in content.splitlines() if line.strip()]
    if not rows:
        raise ClientError("the file holds no requests")
    if all(isinstance(r, dict) and "custom_id" in r for r in rows):
        return content, endpoint or rows[0].get("url") or CHAT_ENDPOINT
    endpoint = endpoint or CHAT_ENDPOINT
    wrapped = [
        {"custom_id": f"line-{n}", "method": "POST", "url": endpoint, "body": body}
        for n, body in enumerate(rows, 1)
    ]
    return b"".join(orjson.dumps(w) + b"\n" for w in wrapped), endpoint


def progress(batch: dict[str, Any], started: float, out: TextIO) -> None:
    counts = batch.get("request_counts") or {}
    total, done, failed = (
        counts.get("total", 0),
        counts.get("completed", 0),
        counts.get("failed", 0),
    )
    finished = done + failed
    elapsed = max(time.monotonic() - started, 1e-6)
    rate = finished / elapsed
    eta = f"{(total - finished) / rate:.0f}s" if rate > 0 and finished < total else "-"
    width = 30
    filled = int(width * finished / total) if total else 0
    bar = "#" * filled + "." * (width - filled)
    line = (
        f"[{bar}] {done} done, {failed} failed / {total}  {rate:.1f}/s  ETA {eta}  "
        f"({batch.get('status')})"
    )
    end = "\r" if out.isatty() else "\n"
    out.write(line + at_providers(batch) + end)
    out.flush()


def at_providers(batch: dict[str, Any]) -> str:
    """Where lines going through providers' batch APIs are, for the progress line."""
    seen = batch.get("provider_batches") or {}
    parts = []
    if seen.get("deferred"):
        parts.append(f"{seen['deferred']} waiting for a provider batch")
    if seen.get("submitted"):
        open_ = [b for b in seen.get("batches") or () if b.get("finished_at") is None]
        where = ", ".join(
            f"{b['provider']} {b.get('provider_batch_id') or '(submitting)'} {b['status']}"
            for b in open_
        )
        parts.append(f"{seen['submitted']} at {where or 'a provider'}")
    return f"  [{'; '.join(parts)}]" if parts else ""


class Client:
    def __init__(self, base_url: str) -> None:
        self.base = base_url.rstrip("/")
        if not self.base.endswith("/v1"):
            self.base += "/v1"
        self.session = aiohttp.ClientSession()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        async with self.session.request(method, self.base + path, **kwargs) as r:
            body = await r.read()
            if r.status >= 400:
                try:
                    message = orjson.loads(body)["error"]["message"]
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    message = body.decode(errors="replace")[:500]
                raise ClientError(f"{method} {path}: {r.status} {message}")
            return orjson.loads(body)

    async def raw(self, path: str) -> bytes:
        async with self.session.get(self.base + path) as r:
            if r.status >= 400:
                raise ClientError(f"GET {path}: {r.status}")
            return await r.read()

    async def results(self, batch: dict[str, Any]) -> bytes:
        """Output then error lines: every request once, with its custom_id."""
        parts = [
            await self.raw(f"/files/{batch[key]}/content")
            for key in ("output_file_id", "error_file_id")
            if batch.get(key)
        ]
        return b"".join(p if p.endswith(b"\n") or not p else p + b"\n" for p in parts)


async def submit(
    url: str,
    path: Path,
    endpoint: str | None,
    window: str,
    wait: bool,
    output: Path | None,
    provider_batch: str | None = None,
) -> int:
    content, endpoint = batch_lines(await asyncio.to_thread(path.read_bytes), endpoint)
    async with Client(url) as client:
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", content, filename=path.name, content_type="application/jsonl")
        file = await client.call("POST", "/files", data=form)
        batch = await client.call(
            "POST",
            "/batches",
            json={"input_file_id": file["id"], "endpoint": endpoint, "completion_window": window},
            headers={"x-sidecar-batch": provider_batch} if provider_batch else None,
        )
        print(batch["id"])
        if batch["status"] == "failed":
            for error in (batch.get("errors") or {}).get("data", []):
                print(f"{path}:{error.get('line')}: {error.get('message')}", file=sys.stderr)
            return 1
        if not wait:
            return 0
        started = time.monotonic()
        while batch["status"] not in FINISHED:
            progress(batch, started, sys.stderr)
            await asyncio.sleep(0.5)
            batch = await client.call("GET", f"/batches/{batch['id']}")
        progress(batch, started, sys.stderr)
        sys.stderr.write("\n")
        if output is not None:
            await asyncio.to_thread(output.write_bytes, await client.results(batch))
        counts = batch["request_counts"]
        return 0 if batch["status"] == "completed" and not counts["failed"] else 1


async def status(url: str, ident: str) -> int:
    async with Client(url) as client:
        kind = "batches" if ident.startswith("batch_") else "jobs"
        print(
            orjson.dumps(
                await client.call("GET", f"/{kind}/{ident}"), option=orjson.OPT_INDENT_2
            ).decode()
        )
    return 0


async def results(url: str, ident: str, output: Path | None) -> int:
    async with Client(url) as client:
        if ident.startswith("batch_"):
            batch = await client.call("GET", f"/batches/{ident}")
            if batch["status"] not in FINISHED:
                raise ClientError(f"batch {ident} is still {batch['status']}")
            content = await client.results(batch)
        else:
            job = await client.call("GET", f"/jobs/{ident}")
            content = orjson.dumps({k: job[k] for k in ("id", "status", "result", "error")}) + b"\n"
    if output is None:
        sys.stdout.buffer.write(content)
    else:
        await asyncio.to_thread(output.write_bytes, content)
    return 0
