"""Anthropic's Messages API as an upstream, translated to and from the OpenAI shape."""

from __future__ import annotations

from typing import ClassVar

import orjson

from sidecar.policy.model import ProviderConfig
from sidecar.policy.native import NativeSchema
from sidecar.providers import anthropic_wire
from sidecar.providers.base import CHAT, Call, Events, translated
from sidecar.providers.batch_anthropic import AnthropicBatches
from sidecar.providers.http import HttpProvider, checked_answer
from sidecar.providers.redact import Redactor
from sidecar.providers.structured import forced_tool

# Anthropic error types → OpenAI's, so the OpenAI SDKs raise the usual exception.
_ERROR_TYPES = {
    "invalid_request_error": "invalid_request_error",
    "not_found_error": "invalid_request_error",
    "request_too_large": "invalid_request_error",
    "permission_error": "permission_error",
}


class AnthropicProvider(HttpProvider):
    paths: ClassVar[dict[str, str]] = {CHAT: "/v1/messages"}

    def __init__(self, config: ProviderConfig, redactor: Redactor | None = None) -> None:
        super().__init__(config, redactor)
        self.batches = AnthropicBatches(self)

    def auth_headers(self, config: ProviderConfig) -> dict[str, str]:
        headers = {"anthropic-version": config.anthropic_version}
        if config.api_key:
            headers["x-api-key"] = config.api_key.reveal()
        return headers

    def payload(self, call: Call) -> bytes:
        return orjson.dumps(
            anthropic_wire.request(
                call.body, call.model, self.config.max_tokens, self._tool(call), call.prompt_cache
            )
        )

    def answer(self, raw: bytes, call: Call) -> bytes:
        return checked_answer(anthropic_wire.response(raw, self._tool(call)), call.operation)

    def events(self, events: Events, call: Call) -> Events:
        include_usage = bool((call.body.get("stream_options") or {}).get("include_usage"))
        stream = anthropic_wire.stream(events, include_usage, self._tool(call))
        return translated(stream, "Anthropic stream event")

    def _tool(self, call: Call) -> NativeSchema | None:
        """The schema this call forces a tool for (its answer is unwrapped into content)."""
        if self.config.structured_output != "tool" or forced_tool(call.body, call.native) is None:
            return None
        return call.native

    def client_error(self, raw: bytes) -> bytes:
        try:
            err = orjson.loads(raw)["error"]
            kind = err.get("type", "invalid_request_error")
            return orjson.dumps(
                {
                    "error": {
                        "message": err.get("message", ""),
                        "type": _ERROR_TYPES.get(kind, kind),
                        "code": kind,
                    }
                }
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            return super().client_error(raw)
