"""OpenAI's Batch API as a `BatchApi`: upload the lines as a JSONL file, create a batch over
it, poll it, read its output and error files.

    POST /files (purpose=batch) → POST /batches {input_file_id, endpoint, completion_window,
    metadata} → GET /batches/{id} until completed | failed | expired | cancelled →
    GET /files/{output_file_id}/content and /files/{error_file_id}/content

The batch carries our submission id in `metadata.sidecar_submission`, so a submission cut
off mid-call is found again in `GET /batches` instead of being created twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from sidecar.errors import PROTOCOL, UpstreamError
from sidecar.providers.base import CHAT, EMBEDDINGS, MALFORMED
from sidecar.providers.batches import BatchState, LineResult, openai_error

if TYPE_CHECKING:
    from sidecar.providers.http import HttpProvider

ENDPOINTS = {CHAT: "/v1/chat/completions", EMBEDDINGS: "/v1/embeddings"}
ENDED = frozenset({"completed", "failed", "expired", "cancelled"})
TAG = "sidecar_submission"
LISTED = 100  # batches `find` looks through, newest first


class OpenAIBatches:
    operations = frozenset(ENDPOINTS)

    def __init__(self, provider: HttpProvider) -> None:
        self.provider = provider
        self.base = provider.config.base_url  # ends in /v1, as for chat completions
        self.payload = provider.payload
        self.answer = provider.answer

    async def _json(self, method: str, path: str, body: Any = None) -> Any:
        data = body if body is None or isinstance(body, aiohttp.FormData) else orjson.dumps(body)
        raw = await self.provider.fetch(method, self.base + path, data)
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamError(PROTOCOL, f"{path} answered with a body that is not JSON") from None

    async def submit(self, tag: str, operation: str, lines: Sequence[tuple[str, bytes]]) -> str:
        url = ENDPOINTS[operation].encode()
        content = b"".join(
            b'{"custom_id":%b,"method":"POST","url":"%b","body":%b}\n'
            % (orjson.dumps(custom_id), url, payload)
            for custom_id, payload in lines
        )
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", content, filename=f"{tag}.jsonl", content_type="application/jsonl")
        file = await self._json("POST", "/files", form)
        batch = await self._json(
            "POST",
            "/batches",
            {
                "input_file_id": file["id"],
                "endpoint": ENDPOINTS[operation],
                "completion_window": "24h",
                "metadata": {TAG: tag},
            },
        )
        return str(batch["id"])

    async def find(self, tag: str, since: float, count: int) -> str | None:
        listed = await self._json("GET", f"/batches?limit={LISTED}")
        for batch in listed.get("data") or ():
            if (batch.get("metadata") or {}).get(TAG) == tag:
                return str(batch["id"])
        return None

    async def poll(self, batch_id: str) -> BatchState:
        batch = await self._json("GET", f"/batches/{batch_id}")
        try:
            status = str(batch["status"])
            errors = (batch.get("errors") or {}).get("data") or []
            line_errors = tuple(
                (int(e["line"]), str(e.get("message") or e.get("code") or "refused"))
                for e in errors
                if e.get("line")
            )
            said = "; ".join(str(e.get("message") or e.get("code")) for e in errors[:3])
        except MALFORMED as exc:
            raise UpstreamError(PROTOCOL, f"malformed batch ({exc.__class__.__name__})") from None
        reason = None
        if status in ("failed", "expired", "cancelled"):
            reason = f"the provider's batch {batch_id} {status}" + (f": {said}" if said else "")
        files = tuple(f for f in (batch.get("output_file_id"), batch.get("error_file_id")) if f)
        return BatchState(
            status,
            status in ENDED,
            dict(batch.get("request_counts") or {}),
            reason,
            line_errors,
            files,
        )

    async def results(self, batch_id: str, state: BatchState) -> list[LineResult]:
        out: list[LineResult] = []
        for file_id in state.where:
            raw = await self.provider.fetch("GET", f"{self.base}/files/{file_id}/content")
            for text in raw.splitlines():
                if text.strip():
                    out.append(_line(text))
        return out

    async def cancel(self, batch_id: str) -> None:
        await self._json("POST", f"/batches/{batch_id}/cancel")


def _line(text: bytes) -> LineResult:
    """One line of an output or error file."""
    try:
        line = orjson.loads(text)
        custom_id = str(line["custom_id"])
        response = line.get("response")
        if isinstance(response, dict):
            status = int(response.get("status_code") or 0)
            body = response.get("body")
            if status == 200:
                return LineResult(custom_id, 200, orjson.dumps(body))
            error = (body or {}).get("error") if isinstance(body, dict) else None
            if not isinstance(error, dict):
                error = openai_error(f"the provider answered {status}", "upstream_error")
            return LineResult(custom_id, status, error=error)
        error = line.get("error") or {}
        code = str(error.get("code") or "not_run")
        return LineResult(custom_id, None, reason=f"{code}: {error.get('message') or code}")
    except MALFORMED as exc:
        raise UpstreamError(
            PROTOCOL, f"malformed batch result line ({exc.__class__.__name__})"
        ) from None
