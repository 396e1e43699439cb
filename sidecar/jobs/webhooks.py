"""Webhooks: tell the submitter a job finished. Signed, retried, only to allowed hosts.

Signature (Stripe's scheme, so existing verifiers fit):

    x-sidecar-signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, f"{t}.{raw body}")>

The receiver recomputes the HMAC over the raw body, compares in constant time and rejects
old timestamps (replays). Deliveries are at least once: a receiver dedupes by
`x-sidecar-job-id`. Redirects are not followed, so an allowed host cannot bounce a
delivery to one that is not (SSRF).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import hmac
import logging
import time
from urllib.parse import urlsplit

import aiohttp
import orjson

from sidecar.jobs.model import Job
from sidecar.jobs.queue import JobQueue
from sidecar.policy.model import JobsConfig
from sidecar.stores.state import StoreUnavailable

log = logging.getLogger("sidecar.jobs.webhooks")

SIGNATURE = "x-sidecar-signature"
ATTEMPT_TIMEOUT = 10.0
MAX_PAUSE = 60.0


def refusal(url: str, allow: tuple[str, ...]) -> str | None:
    """Why `url` may not receive webhooks, or None when it may. A pattern is a host glob
    (`hooks.example.com`, `*.example.com`), optionally with a port (`127.0.0.1:*`)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "callback_url must be an http(s) URL"
    if not allow:
        return "this sidecar's policy allows no webhook hosts (jobs.webhook_allow)"
    host = parts.hostname.lower()
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return "callback_url has an invalid port"
    for pattern in allow:
        name, sep, want_port = pattern.rpartition(":")
        if sep and (want_port.isdigit() or want_port == "*") and "]" not in want_port:
            if fnmatch.fnmatchcase(host, name) and fnmatch.fnmatchcase(str(port), want_port):
                return None
        elif fnmatch.fnmatchcase(host, pattern):
            return None
    return f"webhook host '{host}' is not in jobs.webhook_allow"


def sign(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, header: str, body: bytes, tolerance: float = 300.0) -> bool:
    """What a receiver does (docs/guides/jobs-and-batches.md shows the same in a few lines)."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance:
        return False
    expected = sign(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


def event(job: Job) -> bytes:
    return orjson.dumps(
        {"type": f"job.{job.status}", "created_at": int(time.time()), "data": job.view()}
    )


class Webhooks:
    """Deliveries in flight, each its own task, so a slow receiver never holds a worker."""

    def __init__(self, queue: JobQueue) -> None:
        self.queue = queue
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._sending: set[str] = set()  # job ids: one delivery per job in this process

    def send(self, job: Job, config: JobsConfig) -> None:
        if job.callback_url is None or job.id in self._sending:
            return
        self._sending.add(job.id)
        task = asyncio.create_task(self._deliver(job, job.callback_url, config))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, job: Job, url: str, config: JobsConfig) -> None:
        host = urlsplit(url).hostname
        try:
            why = refusal(url, config.webhook_allow)  # the policy may have changed since
            if why is not None:
                log.warning("job %s: webhook not sent: %s", job.id, why)
                await self._record(job, "refused", 0, None)
                return
            body = event(job)
            status: int | None = None
            for attempt in range(1, config.webhook_attempts + 1):
                status = await self._post(url, body, job.id, config)
                if status is not None and 200 <= status < 300:
                    await self._record(job, "delivered", attempt, status)
                    return
                log.info(
                    "job %s: webhook to %s answered %s (try %d)", job.id, host, status, attempt
                )
                if attempt < config.webhook_attempts:
                    await self._record(job, "pending", attempt, status)
                    await asyncio.sleep(min(MAX_PAUSE, config.retry_backoff * 2 ** (attempt - 1)))
            log.warning(
                "job %s: webhook to %s failed %d times", job.id, host, config.webhook_attempts
            )
            await self._record(job, "failed", config.webhook_attempts, status)
        finally:
            self._sending.discard(job.id)

    async def _post(self, url: str, body: bytes, job_id: str, config: JobsConfig) -> int | None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=ATTEMPT_TIMEOUT)
            )
        headers = {
            "content-type": "application/json",
            "user-agent": "llm-sidecar-webhooks",
            "x-sidecar-job-id": job_id,
            SIGNATURE: sign(config.webhook_secret.reveal(), body, int(time.time())),
        }
        try:
            async with self._session.post(
                url, data=body, headers=headers, allow_redirects=False
            ) as response:
                await response.read()
                return response.status
        except (aiohttp.ClientError, TimeoutError, OSError):
            return None

    async def _record(self, job: Job, status: str, attempts: int, last: int | None) -> None:
        state = {"status": status, "attempts": attempts, "last_status": last}
        try:
            await self.queue.set_webhook(job.id, state)
        except StoreUnavailable as exc:
            log.error("job %s: cannot record webhook state (%s)", job.id, exc)

    async def close(self, grace: float) -> None:
        """Give deliveries in flight `grace` seconds; the rest stay `pending` in the store
        and the next process's sweep sends them."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()
            self._session = None
