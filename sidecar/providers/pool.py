"""Live provider clients, kept across reloads by configuration.

A reload that leaves a provider's configuration unchanged keeps its client and warm
connections; a changed or removed one is retired and closed once its last call is done.
This is the only state the providers hold, and it is keyed by stable names; with it, the
one `Redactor` every HTTP provider passes upstream bytes through, told each reload's
secrets (so a provider kept from an older policy also hides the keys of newer ones).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from sidecar.policy.model import ProviderConfig
from sidecar.providers.anthropic import AnthropicProvider
from sidecar.providers.http import HttpProvider
from sidecar.providers.mock import MockProvider
from sidecar.providers.openai import OpenAIProvider
from sidecar.providers.redact import Redactor, secrets_of
from sidecar.stores.holds import Closer

log = logging.getLogger(__name__)

Adapter = HttpProvider | MockProvider
ADAPTERS: dict[str, type[HttpProvider]] = {"openai": OpenAIProvider, "anthropic": AnthropicProvider}


class ProviderPool:
    def __init__(self) -> None:
        self._live: dict[str, tuple[ProviderConfig, Adapter]] = {}
        self._closer = Closer()
        self.redactor = Redactor()

    def materialize(self, configs: Mapping[str, ProviderConfig]) -> dict[str, Adapter]:
        """Clients for `configs`, reusing unchanged ones; retires the rest."""
        self.redactor.update(secrets_of(configs))
        live: dict[str, tuple[ProviderConfig, Adapter]] = {}
        for name, config in configs.items():
            current = self._live.get(name)
            if current is not None and current[0] == config:
                live[name] = current
            else:
                live[name] = (config, self._adapter(config))
        kept = {id(adapter) for _, adapter in live.values()}
        for _, adapter in self._live.values():
            if id(adapter) not in kept:
                self._retire(adapter)
        self._live = live
        return {name: adapter for name, (_, adapter) in live.items()}

    def _adapter(self, config: ProviderConfig) -> Adapter:
        if config.type == "mock":
            return MockProvider(config)
        return ADAPTERS[config.type](config, self.redactor)

    def _retire(self, adapter: Adapter) -> None:
        """Close `adapter` whenever it is idle. A request that took an older snapshot may
        still call it later (a retry after its backoff); that call reopens it."""

        def close() -> None:
            self._closer.close_soon("provider", lambda: _close_if_idle(adapter))

        adapter.when_idle(close)
        if not adapter.busy:
            close()

    async def close(self) -> None:
        for _, adapter in self._live.values():
            await adapter.close()
        self._live = {}
        await self._closer.wait()


async def _close_if_idle(adapter: Adapter) -> None:
    if not adapter.busy:  # else a call started since; the idle callback comes again
        await adapter.close()
