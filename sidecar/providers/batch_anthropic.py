"""Anthropic's Message Batches API as a `BatchApi`.

    POST /v1/messages/batches {requests: [{custom_id, params}]} → GET /v1/messages/batches/{id}
    until processing_status is `ended` → GET its results_url (JSONL, one line per request:
    result.type succeeded | errored | canceled | expired)

A message batch has no metadata, so a submission cut off mid-call is looked for among the
batches created since it started with as many requests. The results are read only from
the provider's own host: a `results_url` elsewhere would be sent the API key.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

import orjson

from sidecar.errors import PROTOCOL, UpstreamError
from sidecar.providers.base import CHAT, MALFORMED
from sidecar.providers.batches import BatchState, LineResult, openai_error

if TYPE_CHECKING:
    from sidecar.providers.http import HttpProvider

PATH = "/v1/messages/batches"
SKEW = 120.0  # seconds of clock difference `find` allows between us and the provider
# Anthropic's error types that are the request's own fault (the rest may be retried).
REFUSED = {"invalid_request_error": 400, "not_found_error": 404, "request_too_large": 413}


class AnthropicBatches:
    operations = frozenset({CHAT})

    def __init__(self, provider: HttpProvider) -> None:
        self.provider = provider
        self.base = provider.config.base_url
        self.payload = provider.payload
        self.answer = provider.answer

    async def _json(self, method: str, url: str, body: bytes | None = None) -> Any:
        raw = await self.provider.fetch(method, url, body)
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamError(
                PROTOCOL, "the batch API answered with a body that is not JSON"
            ) from None

    async def submit(self, tag: str, operation: str, lines: Sequence[tuple[str, bytes]]) -> str:
        requests = b",".join(
            b'{"custom_id":%b,"params":%b}' % (orjson.dumps(custom_id), payload)
            for custom_id, payload in lines
        )
        batch = await self._json("POST", self.base + PATH, b'{"requests":[%b]}' % requests)
        return str(batch["id"])

    async def find(self, tag: str, since: float, count: int) -> str | None:
        listed = await self._json("GET", f"{self.base}{PATH}?limit=100")
        found: list[tuple[float, str]] = []
        for batch in listed.get("data") or ():
            try:
                created = datetime.fromisoformat(str(batch["created_at"])).timestamp()
                total = sum(int(n) for n in (batch.get("request_counts") or {}).values())
            except (*MALFORMED, OverflowError):
                continue
            if created >= since - SKEW and total == count:
                found.append((created, str(batch["id"])))
        return min(found)[1] if found else None

    async def poll(self, batch_id: str) -> BatchState:
        batch = await self._json("GET", f"{self.base}{PATH}/{batch_id}")
        try:
            status = str(batch["processing_status"])
            counts = {k: int(v) for k, v in (batch.get("request_counts") or {}).items()}
        except MALFORMED as exc:
            raise UpstreamError(PROTOCOL, f"malformed batch ({exc.__class__.__name__})") from None
        url = batch.get("results_url")
        return BatchState(
            status,
            status == "ended",
            counts,
            None,
            (),
            (str(url),) if url else (),
        )

    def _results_url(self, batch_id: str, state: BatchState) -> str:
        canonical = f"{self.base}{PATH}/{batch_id}/results"
        if not state.where:
            return canonical
        url = urljoin(self.base + "/", state.where[0])
        ours, theirs = urlsplit(self.base), urlsplit(url)
        same = (ours.scheme, ours.hostname, ours.port) == (
            theirs.scheme,
            theirs.hostname,
            theirs.port,
        )
        return url if same else canonical

    async def results(self, batch_id: str, state: BatchState) -> list[LineResult]:
        raw = await self.provider.fetch("GET", self._results_url(batch_id, state))
        return [_line(text, batch_id) for text in raw.splitlines() if text.strip()]

    async def cancel(self, batch_id: str) -> None:
        await self._json("POST", f"{self.base}{PATH}/{batch_id}/cancel")


def _line(text: bytes, batch_id: str) -> LineResult:
    try:
        line = orjson.loads(text)
        custom_id = str(line["custom_id"])
        result = line["result"]
        kind = result["type"]
        if kind == "succeeded":
            return LineResult(custom_id, 200, orjson.dumps(result["message"]))
        if kind == "errored":
            error = (result.get("error") or {}).get("error") or {}
            what = str(error.get("type") or "api_error")
            message = str(error.get("message") or what)
            status = REFUSED.get(what, 500)
            kind_name = "invalid_request_error" if status < 500 else "server_error"
            return LineResult(custom_id, status, error=openai_error(message, what, kind_name))
        return LineResult(custom_id, None, reason=f"{kind} in the provider's batch {batch_id}")
    except MALFORMED as exc:
        raise UpstreamError(
            PROTOCOL, f"malformed batch result line ({exc.__class__.__name__})"
        ) from None
