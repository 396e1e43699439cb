from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support.anthropic_upstream import FakeAnthropic
from tests.support.otlp import OtlpReceiver
from tests.support.redis import RedisServer
from tests.support.sidecar import Sidecars
from tests.support.upstream import FakeOpenAI


@pytest.fixture
async def upstream() -> AsyncIterator[FakeOpenAI]:
    fake = await FakeOpenAI().start()
    yield fake
    await fake.stop()


@pytest.fixture
async def upstream_anthropic() -> AsyncIterator[FakeAnthropic]:
    fake = await FakeAnthropic().start()
    yield fake
    await fake.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture
async def otlp() -> AsyncIterator[OtlpReceiver]:
    """A real OTLP/HTTP (protobuf) receiver on a random loopback port."""
    receiver = await OtlpReceiver().start()
    yield receiver
    await receiver.stop()


@pytest.fixture
async def sidecars(tmp_path: Path) -> AsyncIterator[Sidecars]:
    """Start in-process sidecars with `await sidecars.start(policy_text)`; all are stopped
    at the end of the test."""
    started = Sidecars(tmp_path)
    yield started
    await started.stop()
