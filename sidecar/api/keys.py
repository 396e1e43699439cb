"""Typed keys for what the aiohttp applications share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from sidecar.jobs.runtime import JobsRuntime
from sidecar.runtime import Runtime


@dataclass(frozen=True, slots=True)
class BodyLimits:
    """How much of a request body the sidecar reads, and for how long (api/body.py)."""

    max_bytes: int  # on the wire and inflated
    timeout: float  # seconds from the end of a request's headers to the end of its body


HOLDER = web.AppKey("holder", Runtime)
LIFECYCLE = web.AppKey("lifecycle", dict[str, Any])  # {"draining": bool}
USAGE_TOKEN = web.AppKey("usage_token", str)  # "" when the usage API is open
JOBS = web.AppKey("jobs", JobsRuntime)  # the queue and workers of this process
LIMITS = web.AppKey("body_limits", BodyLimits)
