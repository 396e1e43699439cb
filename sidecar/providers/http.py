"""What every HTTP adapter shares: one tuned connection pool, error classification, SSE.

One `ClientSession` per provider lives as long as the provider's configuration does (a
reload that leaves a provider unchanged keeps its warm connections).
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

import aiohttp

from sidecar.errors import AUTH, CLIENT, CONNECT, HTTP_5XX, HTTP_429, TIMEOUT, UpstreamError
from sidecar.policy.model import ProviderConfig


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


def connection_error(provider: str, base_url: str, exc: BaseException) -> UpstreamError:
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return UpstreamError(TIMEOUT, "timed out")
    reason = exc.__class__.__name__
    if isinstance(exc, aiohttp.ClientConnectorError):
        reason = f"cannot connect to {where(base_url)} ({exc.os_error.strerror or reason})"
    elif isinstance(exc, aiohttp.ServerDisconnectedError):
        reason = "connection closed before the answer"
    return UpstreamError(CONNECT, reason)


def status_error(
    provider: str,
    status: int,
    body: bytes,
    retry_after: str | None,
    redact: Callable[[bytes], bytes],
) -> UpstreamError:
    if status == 429:
        return UpstreamError(
            HTTP_429,
            "HTTP 429 (rate limited)",
            status=status,
            retry_after=parse_retry_after(retry_after),
        )
    if status in (401, 403):
        # The app does not hold this key, so its 401 is our configuration problem, not the
        # app's: never pass the provider's text (which may quote part of the key) along.
        return UpstreamError(
            AUTH,
            f"HTTP {status}: provider '{provider}' rejected the sidecar's credentials",
            status=status,
        )
    if status >= 500:
        return UpstreamError(
            HTTP_5XX, f"HTTP {status}", status=status, retry_after=parse_retry_after(retry_after)
        )
    return UpstreamError(CLIENT, f"HTTP {status}", status=status, raw_body=redact(body))


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


async def sse_events(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """Complete SSE events (`…\\n\\n`) as they arrive; chunk borders are the network's."""
    buf = b""
    async for chunk in content.iter_any():
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n")
        buf += chunk
        start = 0
        while (end := buf.find(b"\n\n", start)) >= 0:
            yield buf[start : end + 2]
            start = end + 2
        buf = buf[start:]
    if buf.strip():
        yield buf.rstrip(b"\n") + b"\n\n"
