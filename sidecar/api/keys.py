"""Typed keys for what the aiohttp applications share."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from sidecar.jobs.runtime import JobsRuntime
from sidecar.runtime import Runtime

HOLDER = web.AppKey("holder", Runtime)
LIFECYCLE = web.AppKey("lifecycle", dict[str, Any])  # {"draining": bool}
USAGE_TOKEN = web.AppKey("usage_token", str)  # "" when the usage API is open
JOBS = web.AppKey("jobs", JobsRuntime)  # the queue and workers of this process
