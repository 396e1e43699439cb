"""Token counts when a provider reports none, and before a call for limits and budgets.

Before a call, the estimate is cheap on purpose (about 4 bytes a token, plus a few
tokens a message): it runs for every admitted request and is corrected by the provider's
real usage afterwards. For an answer whose provider reported no usage, tiktoken's
cl100k_base counts the text when the optional `tokens` extra is installed; its data is
loaded from the installed package (never downloaded) on a worker thread the first time it
is needed, and the byte estimate stands in until then. Either way the usage is marked
estimated.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("sidecar.tokens")

# tiktoken's own published hash of cl100k_base.tiktoken: a tampered file is refused.
_CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
_CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++"""
    r"""[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
IMAGE_TOKENS = 765  # a 512x512 tile and the base, a middle guess for an image part


class _Encoder:
    """Loaded at most once per process, off the event loop."""

    def __init__(self) -> None:
        self.encoding: Any = None
        self._started = False
        self._lock = threading.Lock()

    def warm(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        threading.Thread(target=self._load, name="tiktoken-load", daemon=True).start()

    def _load(self) -> None:
        try:
            import tiktoken
            from tiktoken.load import load_tiktoken_bpe

            spec = importlib.util.find_spec("tiktoken_ext")
            if spec is None or not spec.submodule_search_locations:
                return
            path = os.path.join(spec.submodule_search_locations[0], "data", "cl100k_base.tiktoken")
            with open(path, "rb") as f:
                if hashlib.sha256(f.read()).hexdigest() != _CL100K_SHA256:
                    log.error("tokens: %s does not match tiktoken's hash; not used", path)
                    return
            ranks = load_tiktoken_bpe(path, expected_hash=_CL100K_SHA256)
            self.encoding = tiktoken.Encoding(
                "cl100k_base", pat_str=_CL100K_PATTERN, mergeable_ranks=ranks, special_tokens={}
            )
        except (ImportError, OSError, ValueError) as exc:
            log.info("tokens: tiktoken unavailable (%s); estimating from bytes", exc)


_ENCODER = _Encoder()


def count_text(text: str) -> int:
    """Tokens in `text`: tiktoken when loaded, else the byte estimate (and start loading)."""
    encoding = _ENCODER.encoding
    if encoding is None:
        _ENCODER.warm()
        return (len(text.encode()) + 3) // 4
    return len(encoding.encode_ordinary(text))


def estimate_request(body: Mapping[str, Any]) -> int:
    """Input tokens of a chat or embeddings request, roughly, without parsing much."""
    messages = body.get("messages")
    if messages is None:  # embeddings
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        return sum(_size(i) for i in items) // 4 + 1
    return request_overhead(body) + sum(estimate_message(m) for m in messages)


def request_overhead(body: Mapping[str, Any]) -> int:
    """What a chat request costs besides its messages: the reply's priming and the tools."""
    tools = body.get("tools")
    return 3 + (len(str(tools)) // 4 if tools else 0)


def estimate_message(m: Any) -> int:
    """One chat message: its text at 4 characters a token, plus 4 for its framing."""
    if not isinstance(m, dict):
        return 0
    total = 4
    content = m.get("content")
    if isinstance(content, str):
        total += len(content) // 4
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and part.get("type") == "image_url":
                total += IMAGE_TOKENS
            elif isinstance(part, dict):
                total += len(str(part.get("text", ""))) // 4
    for call in m.get("tool_calls") or ():
        total += len(str(call)) // 4
    return total


def _size(item: Any) -> int:
    return len(item) if isinstance(item, str | list) else len(str(item))
