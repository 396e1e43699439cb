"""OpenAI-compatible upstreams (OpenAI, Azure-style proxies, vLLM, llama.cpp, Ollama, ...).

The internal format is OpenAI's, so this adapter only swaps the model name and the key, and
asks for structured output in the server's own dialect (providers/structured.py).
"""

from __future__ import annotations

from typing import ClassVar

import orjson

from sidecar.policy.model import ProviderConfig
from sidecar.providers.base import CHAT, EMBEDDINGS, Call
from sidecar.providers.batch_openai import OpenAIBatches
from sidecar.providers.http import HttpProvider
from sidecar.providers.prompt_cache import cache_key, without_markers
from sidecar.providers.redact import Redactor
from sidecar.providers.structured import openai_body


class OpenAIProvider(HttpProvider):
    paths: ClassVar[dict[str, str]] = {CHAT: "/chat/completions", EMBEDDINGS: "/embeddings"}

    def __init__(self, config: ProviderConfig, redactor: Redactor | None = None) -> None:
        super().__init__(config, redactor)
        self.batches = OpenAIBatches(self)

    def auth_headers(self, config: ProviderConfig) -> dict[str, str]:
        return {"authorization": f"Bearer {config.api_key.reveal()}"} if config.api_key else {}

    def payload(self, call: Call) -> bytes:
        body = {**call.body, "model": call.model}
        if call.native is not None:
            body = openai_body(body, call.native, self.config.structured_output)
        body.pop("x_anthropic", None)  # Anthropic-only fields from the Anthropic ingress
        if body.pop("x_cache_control", None):  # an Anthropic app's breakpoints: not OpenAI's
            body = without_markers(body)
        cache = call.prompt_cache
        if cache is not None and cache.key and "prompt_cache_key" not in body:
            body["prompt_cache_key"] = cache_key(cache.route, call.body)
        return orjson.dumps(body)
