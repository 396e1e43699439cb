"""Every configured secret taken out of what an upstream says, before the app or a log sees it.

Providers echo keys: whole in an error body, masked in the middle (`sk-proj-abc****xyz1`),
or inside a stream's error event. All bytes an HTTP provider passes on — JSON answers,
stream events, 4xx bodies, the text of an upstream error — go through the pool's one
`Redactor`, which knows every provider's key and header values of the live policy, so a
provider that echoes another's key is caught too.

Cheap when there is nothing to find (the usual case): one substring search per secret,
in C; the regular expression runs only on a hit.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from sidecar.policy.model import ProviderConfig

REDACTED = b"[redacted]"
MIN_LENGTH = 8  # shorter values (a test's `api_key: k`, `x-org: acme`) would garble answers
PREFIX = 8  # a key this long or longer is found by its first 8 characters, masked or not
_PREFIX_FROM = 12


class Redactor:
    __slots__ = ("_needles", "_pattern")

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._needles: tuple[bytes, ...] = ()
        self._pattern: re.Pattern[bytes] | None = None
        self.update(secrets)

    def update(self, secrets: Iterable[str]) -> None:
        """Take the secrets of a new policy (the pool calls this on every reload)."""
        values = sorted({s.encode() for s in secrets if len(s) >= MIN_LENGTH}, key=len)[::-1]
        needles = [v[:PREFIX] if len(v) >= _PREFIX_FROM else v for v in values]
        # A key's first characters and whatever token follows them, up to a quote, a comma,
        # a space or a backslash: the JSON around a redacted key stays valid JSON.
        parts = [
            re.escape(v[:PREFIX]) + rb"[^\s\"',\\]*" if len(v) >= _PREFIX_FROM else re.escape(v)
            for v in values
        ]
        self._pattern = re.compile(b"|".join(parts)) if parts else None
        self._needles = tuple(dict.fromkeys(needles))

    def __call__(self, data: bytes) -> bytes:
        if self._pattern is None or not any(n in data for n in self._needles):
            return data
        return self._pattern.sub(REDACTED, data)

    def text(self, text: str) -> str:
        return self(text.encode(errors="replace")).decode(errors="replace")


def secrets_of(configs: Mapping[str, ProviderConfig]) -> list[str]:
    """What the providers of a policy hold that nobody may read: keys and header values
    (headers carry keys too: `api-key`, `authorization`)."""
    found: list[str] = []
    for config in configs.values():
        found.append(config.api_key.reveal())
        for _, value in config.headers:
            found.append(value)
            found.extend(value.split())  # `Bearer KEY`: the key alone is echoed too
    return found
