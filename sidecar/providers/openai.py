"""OpenAI-compatible upstreams (OpenAI, Azure-style proxies, vLLM, llama.cpp, Ollama, ...).

The internal format is OpenAI's, so this adapter only swaps the model name and the key.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import aiohttp
import orjson

from sidecar.errors import PROTOCOL, UpstreamError
from sidecar.policy.model import ProviderConfig
from sidecar.providers.base import CHAT, EMBEDDINGS, Call, Leases, Reply
from sidecar.providers.http import connection_error, new_session, sse_events, status_error

_PATHS = {CHAT: "/chat/completions", EMBEDDINGS: "/embeddings"}


class OpenAIProvider:
    def __init__(self, config: ProviderConfig) -> None:
        self.name = config.name
        self.config = config
        self._urls = {op: config.base_url + path for op, path in _PATHS.items()}
        headers = {"content-type": "application/json", **dict(config.headers)}
        if config.api_key:
            headers["authorization"] = f"Bearer {config.api_key.reveal()}"
        self._headers = headers
        self._session: aiohttp.ClientSession | None = None
        self._leases = Leases()
        secret = config.api_key.reveal().encode()
        self._redact: Callable[[bytes], bytes] = (
            (lambda b: b.replace(secret, b"[redacted]")) if secret else (lambda b: b)
        )

    @property
    def busy(self) -> bool:
        return self._leases.count > 0

    def when_idle(self, callback: Callable[[], None]) -> None:
        self._leases.idle = callback

    async def send(self, call: Call) -> Reply:
        if self._session is None:
            self._session = new_session(self.config)
        payload = orjson.dumps({**call.body, "model": call.model})
        release = self._leases.take()
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=call.timeout, sock_read=call.timeout
        )
        try:
            resp = await self._session.post(
                self._urls[call.operation], data=payload, headers=self._headers, timeout=timeout
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            release()
            raise connection_error(self.name, self.config.base_url, exc) from None
        except BaseException:
            release()
            raise
        try:
            if resp.status >= 400:
                body = await resp.read()
                raise status_error(
                    self.name, resp.status, body, resp.headers.get("retry-after"), self._redact
                )
            if call.stream:
                if not resp.headers.get("content-type", "").startswith("text/event-stream"):
                    raise UpstreamError(PROTOCOL, "asked for a stream, got no event stream")

                def done() -> None:
                    resp.release()
                    release()

                return Reply(events=self._events(resp, done), on_close=done)
            body = await resp.read()
        except (aiohttp.ClientError, OSError) as exc:
            resp.close()
            release()
            raise connection_error(self.name, self.config.base_url, exc) from None
        except BaseException:
            resp.close()
            release()
            raise
        resp.release()
        release()
        return Reply(body=body)

    async def _events(
        self, resp: aiohttp.ClientResponse, done: Callable[[], None]
    ) -> AsyncIterator[bytes]:
        complete = False
        try:
            async for event in sse_events(resp.content):
                yield event
            complete = True
        except (aiohttp.ClientError, OSError) as exc:
            raise connection_error(self.name, self.config.base_url, exc) from None
        finally:
            if not complete:
                resp.close()  # mid-stream: never hand a half-read connection back to the pool
            done()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
