from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.upstream import FakeOpenAI


@pytest.fixture
async def upstream() -> AsyncIterator[FakeOpenAI]:
    fake = await FakeOpenAI().start()
    yield fake
    await fake.stop()
