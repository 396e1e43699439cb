"""A blocking HTTP client that sends exactly the bytes and headers it is given (http.client),
for tests that must send what no SDK would: broken JSON, odd encodings, any header value.

Blocking on purpose: hostile tests drive it from a worker thread (`asyncio.to_thread`) while
the sidecar under test keeps serving on the test's event loop.
"""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from typing import Any

ANTHROPIC_PATHS = ("/v1/messages",)


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def send(
    port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> Answer:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        data = response.read()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
    finally:
        connection.close()


def error_shape_problem(path: str, answer: Answer) -> str | None:
    """What is wrong with an error answer's shape for the ingress format of `path`, or None:
    JSON, OpenAI's `{"error": {message, type, code}}` or Anthropic's
    `{"type": "error", "error": {type, message}}`."""
    if not answer.headers.get("content-type", "").startswith("application/json"):
        return f"content-type {answer.headers.get('content-type')!r}: {answer.body[:200]!r}"
    try:
        data = answer.json()
    except ValueError:
        return f"not JSON: {answer.body[:200]!r}"
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return f"no error.message: {data!r:.200}"
    if not isinstance(error.get("type"), str):
        return f"no error.type: {data!r:.200}"
    if path in ANTHROPIC_PATHS:
        return None if data.get("type") == "error" else f"not Anthropic's shape: {data!r:.200}"
    return None if "code" in error else f"no error.code: {data!r:.200}"
