"""Request bodies, from the wire to a checked dict, before any stage sees them.

    read, within the body deadline and `max_body` bytes        → 408, 413
      → inflate gzip or deflate, within `max_body`, off the loop  → 415 for other encodings
      → parse (orjson), nesting the encoder can write back        → 400 invalid_json
      → the endpoint's shape (api/shapes.py)                      → 400 invalid_request

aiohttp's own decompression is switched off (app.py): it inflated each network chunk whole
as it arrived, before any size limit, so a 1 MiB gzip bomb became hundreds of MiB and
stalled the event loop. Here a bomb stops at `max_body` inflated bytes, on a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from sidecar.api.keys import LIMITS
from sidecar.errors import BodyTooLarge, InvalidRequest
from sidecar.shapes import MAX_DEPTH, Shape, too_deep

_STEP = 1 << 20  # inflate a MiB at a time, checking the limit in between
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
ENCODINGS = ("gzip", "deflate")


async def json_body(request: web.Request, shape: Shape) -> dict[str, Any]:
    body = parse(await read(request))
    shape.check(body)
    return body


async def read(request: web.Request) -> bytes | bytearray:
    """The body as sent, inflated when it was compressed."""
    limits = request.app[LIMITS]
    coding = encoding(request)
    if request.content.is_eof():  # all there already, as a small body comes with its header
        raw = await _read(request, limits.max_bytes)
    else:  # (a timer per request would cost more than the rest of this module)
        async with arriving(request):
            raw = await _read(request, limits.max_bytes)
    if coding is None:
        return raw
    return await asyncio.to_thread(inflate, raw, coding, limits.max_bytes)


async def _read(request: web.Request, limit: int) -> bytes:
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large(limit) from None
    except RequestPayloadError as exc:
        raise InvalidRequest(
            f"the request body is malformed or cut off ({exc})"[:200], code="invalid_body"
        ) from None


@contextlib.asynccontextmanager
async def arriving(request: web.Request) -> AsyncIterator[None]:
    """Reading the body inside: it must be complete within the body timeout (a client that
    sends half a body and stops would hold its connection and this handler forever)."""
    limit = request.app[LIMITS].timeout
    try:
        async with asyncio.timeout(limit):
            yield
    except TimeoutError:
        raise InvalidRequest(
            f"the request body did not arrive within {limit:g}s", code="body_timeout", status=408
        ) from None


def encoding(request: web.Request) -> str | None:
    """The body's Content-Encoding (None for identity); 415 for one the sidecar does not
    inflate (br, zstd, or several stacked)."""
    given = request.headers.getall("content-encoding", ())
    if not given:
        return None
    codings = [c.strip().lower() for value in given for c in value.split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        return None
    if len(codings) > 1 or codings[0] not in _WBITS:
        raise InvalidRequest(
            f"Content-Encoding '{', '.join(codings)[:60]}' is not supported: send the body "
            f"uncompressed, or with one of {', '.join(ENCODINGS)}",
            code="unsupported_encoding",
            status=415,
        )
    return codings[0]


def inflate(raw: bytes, coding: str, limit: int) -> bytearray:
    """gzip (members in a row too) or deflate (zlib-wrapped, or raw as some clients send
    it), stopping with a 413 as soon as the output passes `limit`."""
    wbits = _WBITS[coding]
    if coding == "deflate" and not _zlib_header(raw):
        wbits = -zlib.MAX_WBITS
    out = bytearray()
    pending = raw
    try:
        while pending:  # once per gzip member
            inflater = zlib.decompressobj(wbits)
            while not inflater.eof:
                chunk = inflater.decompress(pending, _STEP)
                out += chunk
                if len(out) > limit:
                    raise too_large(limit, inflated=True)
                pending = inflater.unconsumed_tail
                if not pending and not chunk:
                    raise InvalidRequest(f"the {coding} body is cut off", code="invalid_encoding")
            pending = inflater.unused_data if wbits > zlib.MAX_WBITS else b""
    except zlib.error as exc:
        raise InvalidRequest(
            f"the body is not valid {coding} ({exc})", code="invalid_encoding"
        ) from None
    return out


def _zlib_header(raw: bytes) -> bool:
    return len(raw) >= 2 and raw[0] & 0x0F == 8 and (raw[0] << 8 | raw[1]) % 31 == 0


def too_large(limit: int, inflated: bool = False) -> BodyTooLarge:
    what = "inflated request body" if inflated else "request body"
    return BodyTooLarge(f"the {what} is larger than {limit} bytes")


def parse(raw: bytes | bytearray) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"request body is not valid JSON: {exc}", code="invalid_json"
        ) from None
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object", code="invalid_json")
    if too_deep(raw, body):
        raise InvalidRequest(
            f"request body is nested deeper than {MAX_DEPTH} levels", code="invalid_json"
        )
    return body
