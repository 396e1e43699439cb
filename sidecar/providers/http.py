"""What every HTTP adapter shares: one tuned connection pool, error classification, SSE,
and the request/answer cycle with hooks for each wire format.

Nothing an upstream sends is trusted: every byte passed on is redacted first (redact.py),
and a 200 that is not the answer asked for (not JSON, no `choices`, an error event in a
stream) is a `protocol` failure like a 500: it falls over and counts in the breaker.

One `ClientSession` per provider lives as long as the provider's configuration does (a
reload that leaves a provider unchanged keeps its warm connections).
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

import aiohttp
import orjson

from sidecar.errors import (
    AUTH,
    CLIENT,
    CONNECT,
    HTTP_5XX,
    HTTP_429,
    OVERLOADED,
    PROTOCOL,
    TIMEOUT,
    UpstreamError,
)
from sidecar.policy.model import ProviderConfig
from sidecar.providers.base import CHAT, Call, Events, Leases, Reply
from sidecar.providers.batches import BatchApi
from sidecar.providers.redact import Redactor, secrets_of
from sidecar.shapes import CHAT_ANSWER_SHAPE, CHUNK_SHAPE, EMBEDDINGS_ANSWER_SHAPE

_ANSWER_SHAPES = {CHAT: CHAT_ANSWER_SHAPE}


def new_session(config: ProviderConfig) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=config.max_connections,
        limit_per_host=0,
        ttl_dns_cache=300,
        keepalive_timeout=30,
    )
    return aiohttp.ClientSession(
        connector=connector,
        # Timeouts are per attempt (see `Call.timeout`); none here.
        timeout=aiohttp.ClientTimeout(total=None),
        auto_decompress=True,
        skip_auto_headers=("User-Agent",),
        raise_for_status=False,
    )


def where(base_url: str) -> str:
    """The host part of a URL, without any userinfo that could hold a credential."""
    parts = urlsplit(base_url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"


def connection_error(base_url: str, exc: BaseException) -> UpstreamError:
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return UpstreamError(TIMEOUT, "timed out")
    reason = exc.__class__.__name__
    if isinstance(exc, aiohttp.ClientConnectorError):
        reason = f"cannot connect to {where(base_url)} ({exc.os_error.strerror or reason})"
    elif isinstance(exc, aiohttp.ServerDisconnectedError):
        reason = "connection closed before the answer"
    return UpstreamError(CONNECT, reason)


def status_error(
    provider: str, status: int, body: bytes, headers: Mapping[str, str]
) -> UpstreamError:
    """Classify a failed answer. `body` is already redacted and in OpenAI's shape."""
    retry_after = parse_retry_after(headers.get("retry-after"))
    if status == 429:
        return UpstreamError(
            HTTP_429, "HTTP 429 (rate limited)", status=status, retry_after=retry_after
        )
    if status in (401, 403):
        # The app does not hold this key, so its 401 is our configuration problem, not the
        # app's: never pass the provider's text (which may quote part of the key) along.
        return UpstreamError(
            AUTH,
            f"HTTP {status}: provider '{provider}' rejected the sidecar's credentials",
            status=status,
        )
    if status == 529:
        return UpstreamError(
            OVERLOADED, "HTTP 529 (overloaded)", status=status, retry_after=retry_after
        )
    if status >= 500:
        # The provider's own words say why (a parameter it does not support, say), so the
        # 502 that lists the attempts names them; `body` is already redacted.
        said = said_by(body)
        return UpstreamError(
            HTTP_5XX,
            f"HTTP {status}" + (f" ({said})" if said else ""),
            status=status,
            retry_after=retry_after,
        )
    return UpstreamError(CLIENT, f"HTTP {status}", status=status, raw_body=body)


def said_by(body: bytes, limit: int = 200) -> str:
    """An error body's message (OpenAI's shape, else its text), short and on one line."""
    try:
        error = orjson.loads(body)["error"]
        text = str(error.get("message") if isinstance(error, dict) else error)
    except (orjson.JSONDecodeError, KeyError, TypeError):
        text = body.decode("utf-8", "replace")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


async def sse_events(content: aiohttp.StreamReader) -> Events:
    """Complete SSE events (`…\\n\\n`) as they arrive, batched by the network read that
    completed them; chunk borders are the network's."""
    buf = b""
    async for chunk in content.iter_any():
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n")
        buf += chunk
        batch = []
        start = 0
        while (end := buf.find(b"\n\n", start)) >= 0:
            batch.append(buf[start : end + 2])
            start = end + 2
        buf = buf[start:]
        if batch:
            yield batch
    if buf.strip():
        yield [buf.rstrip(b"\n") + b"\n\n"]


class HttpProvider:
    """An upstream reached over HTTP. Subclasses say how to address it and translate;
    the connection pool, timeouts, leases, error classification and SSE framing are here."""

    paths: Mapping[str, str] = {}
    batches: BatchApi | None = None  # a wire format with a batch API sets its adapter

    def __init__(self, config: ProviderConfig, redactor: Redactor | None = None) -> None:
        self.name = config.name
        self.config = config
        self._urls = {op: config.base_url + path for op, path in self.paths.items()}
        self._headers = {
            "content-type": "application/json",
            **self.auth_headers(config),
            **dict(config.headers),
        }
        # A JSON call's whole attempt runs under its caller's deadline (dispatch's, or
        # the semantic cache's), so aiohttp's own timers would only repeat that work (1.5%
        # of a request's instructions, bench/instructions.py). A stream outlives that
        # deadline once its first event is in; then only the read timeout notices an
        # upstream gone silent.
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=config.timeout, sock_read=config.timeout
        )
        self._session: aiohttp.ClientSession | None = None
        self._leases = Leases(config.max_concurrency, config.concurrency_wait)
        self.redact = redactor or Redactor(secrets_of({config.name: config}))

    # -- what a wire format defines ------------------------------------------------------

    def auth_headers(self, config: ProviderConfig) -> dict[str, str]:
        raise NotImplementedError

    def payload(self, call: Call) -> bytes:
        raise NotImplementedError

    def answer(self, raw: bytes, call: Call) -> bytes:
        """The upstream's JSON answer (redacted), in OpenAI's shape."""
        return checked_answer(raw, call.operation)

    def events(self, events: Events, call: Call) -> Events:
        """The upstream's SSE events (redacted), as OpenAI chunk events."""
        return events

    def client_error(self, raw: bytes) -> bytes:
        """A 4xx body (redacted) for the client, in OpenAI's error shape."""
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            return raw
        text = raw[:300].decode(errors="replace")
        error = {"message": text, "type": "invalid_request_error", "code": "upstream_rejected"}
        return orjson.dumps({"error": error})

    # -- shared --------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self._leases.count > 0

    @property
    def full(self) -> bool:
        return self._leases.full

    def when_idle(self, callback: Callable[[], None]) -> None:
        self._leases.idle = callback

    async def send(self, call: Call) -> Reply:
        url = self._urls.get(call.operation)
        if url is None:
            raise unsupported(f"{call.operation} through a '{self.config.type}' provider")
        payload = self.payload(call)
        release = await self._leases.acquire()
        if self._session is None or self._session.closed:
            # Retired by a reload and closed when idle, but a request of the older snapshot
            # still calls it (a retry after its backoff): reopen; it closes again when idle.
            self._session = new_session(self.config)
        try:
            if call.stream:
                resp = await self._session.post(
                    url, data=payload, headers=self._headers, timeout=self._stream_timeout
                )
            else:
                resp = await self._session.post(url, data=payload, headers=self._headers)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            release()
            raise connection_error(self.config.base_url, exc) from None
        except BaseException:
            release()
            raise
        try:
            if resp.status >= 400:
                body = await resp.read()
                raise status_error(
                    self.name, resp.status, self.client_error(self.redact(body)), resp.headers
                )
            if call.stream:
                if not resp.headers.get("content-type", "").startswith("text/event-stream"):
                    raise UpstreamError(PROTOCOL, "asked for a stream, got no event stream")

                def done() -> None:
                    resp.release()
                    release()

                events = self.events(self._read_events(resp, done), call)
                return Reply(events=checked_chunks(events, self.redact), on_close=done)
            body = self.answer(self.redact(await resp.read()), call)
        except (aiohttp.ClientError, OSError) as exc:
            resp.close()
            release()
            raise connection_error(self.config.base_url, exc) from None
        except UpstreamError as exc:
            resp.close()
            release()
            raise redacted(exc, self.redact) from None
        except BaseException:
            resp.close()
            release()
            raise
        resp.release()
        release()
        return Reply(body=body)

    async def fetch(
        self, method: str, url: str, body: bytes | aiohttp.FormData | None = None
    ) -> bytes:
        """One call beside the answer path (a batch API's): the answer's bytes, redacted,
        or an `UpstreamError` classified as an answer's would be (a 429 keeps its
        Retry-After). Within the provider's `timeout`."""
        if self._session is None or self._session.closed:
            self._session = new_session(self.config)
        headers = self._headers
        if isinstance(body, aiohttp.FormData):  # multipart sets its own content type
            headers = {k: v for k, v in headers.items() if k != "content-type"}
        try:
            async with (
                asyncio.timeout(self.config.timeout),
                self._session.request(method, url, data=body, headers=headers) as resp,
            ):
                raw = self.redact(await resp.read())
                if resp.status >= 400:
                    error = status_error(
                        self.name, resp.status, self.client_error(raw), resp.headers
                    )
                    raise redacted(error, self.redact)
                return raw
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise connection_error(self.config.base_url, exc) from None

    async def _read_events(self, resp: aiohttp.ClientResponse, done: Callable[[], None]) -> Events:
        complete = False
        try:
            redact = self.redact
            async for batch in sse_events(resp.content):
                yield [redact(event) for event in batch]
            complete = True
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise connection_error(self.config.base_url, exc) from None
        finally:
            if not complete:
                resp.close()  # mid-stream: never hand a half-read connection back to the pool
            done()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def checked_answer(raw: bytes, operation: str) -> bytes:
    """`raw` if it is an answer the pipeline can read, else a `protocol` failure (a 200 that
    is not JSON, or lacks `choices`, is no answer). Costs one parse of the answer."""
    try:
        answer = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UpstreamError(PROTOCOL, "answered 200 with a body that is not JSON") from None
    problem = _ANSWER_SHAPES.get(operation, EMBEDDINGS_ANSWER_SHAPE).problem(answer)
    if problem is not None:
        raise UpstreamError(PROTOCOL, f"answered 200 with a malformed body ({problem})")
    return raw


async def checked_chunks(events: Events, redact: Redactor) -> Events:
    """OpenAI chunk events, each checked before it goes on: an error event (`data:
    {"error": ...}`, which the app would otherwise get verbatim) or a chunk the pipeline
    cannot read ends the stream with a `protocol` failure, and what came before it still
    goes out. One parse and one shape check per chunk, in C. A failure's message, which
    may quote the upstream, is redacted once more: a key escaped in JSON (`\\u0073k-…`) is
    only plain text after the parse."""
    try:
        async for batch in events:
            for i, event in enumerate(batch):
                problem = _chunk_problem(event)
                if problem is not None:
                    if i:
                        yield batch[:i]
                    raise UpstreamError(PROTOCOL, problem)
            yield batch
    except UpstreamError as exc:
        raise redacted(exc, redact) from None
    finally:
        await events.aclose()  # type: ignore[attr-defined]


def redacted(error: UpstreamError, redact: Redactor) -> UpstreamError:
    error.message = redact.text(error.message)
    error.args = (error.message,)
    return error


def _chunk_problem(event: bytes) -> str | None:
    if not event.startswith(b"data:"):
        return None  # comments and other fields: SSE clients skip them
    payload = event[5:].strip()
    if payload == b"[DONE]":
        return None
    try:
        chunk = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return "a stream event that is not JSON"
    if isinstance(chunk, dict) and "error" in chunk:
        error = chunk["error"]
        message = error.get("message") if isinstance(error, dict) else error
        return f"the stream carried an error: {str(message)[:200]}"
    problem = CHUNK_SHAPE.problem(chunk)
    return None if problem is None else f"a malformed stream event ({problem})"


def unsupported(feature: str) -> UpstreamError:
    body = {
        "error": {
            "message": f"{feature} is not supported",
            "type": "invalid_request_error",
            "code": "unsupported",
        }
    }
    return UpstreamError(CLIENT, f"unsupported: {feature}", status=400, raw_body=orjson.dumps(body))
