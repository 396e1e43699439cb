"""The providers' batch APIs, on the fake upstreams: OpenAI's Batch API (files, batches,
output and error files) and Anthropic's Message Batches API, with the statuses, request
counts and result lines they document, and scripted trouble.

A batch stays in progress until the test lets it end (`release`), or ends by itself after
`polls_to_end` polls; then each line is answered as the fake's synchronous endpoint would
answer it (its model's `Behaviour`: a reply, or an error status), except lines past
`answer_first` when the batch `expire`s (they come back expired, as the providers report
lines a batch did not reach). Every create is recorded, so a test can count what was
submitted, line by line; polls can be refused with 429 and Retry-After.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web


@dataclass
class Script:
    polls_to_end: int | None = None  # end after this many polls (None: when released)
    released: bool = False
    expire: bool = False  # end as expired: only the first `answer_first` lines answered
    answer_first: int = 0
    refuse_polls: int = 0  # this many polls answer 429 with Retry-After
    retry_after: str = "1"
    create_status: int | None = None  # creates answer this status (and create nothing)
    fail_lines: dict[int, str] = field(default_factory=dict)  # OpenAI: line → validation error
    create_delay: float = 0.0  # a create is recorded (made), then answered this much later
    poll_delay: float = 0.0  # a poll is answered this much later


@dataclass
class Made:
    id: str
    lines: list[dict[str, Any]]  # as submitted
    created_at: float
    polls: int = 0
    status: str = "in_progress"
    cancelled: bool = False
    results: list[dict[str, Any]] = field(default_factory=list)  # Anthropic's result lines
    metadata: dict[str, Any] | None = None
    endpoint: str = ""  # OpenAI's
    input_file_id: str = ""
    output_file_id: str | None = None
    error_file_id: str | None = None
    completed: int = 0
    failed: int = 0


class BatchApiFake:
    """What both fakes share: the script, the batches made, the submissions counted."""

    def __init__(self, fake: Any) -> None:
        self.fake = fake
        self.script = Script()
        self.made: dict[str, Made] = {}
        self.submitted: Counter[str] = Counter()  # custom_id → times submitted
        self.polls = 0
        self.poll_times: list[float] = []  # monotonic, of every poll (refused ones too)
        self.cancels = 0
        self.polling = 0  # polls being answered now

    def release(self) -> None:
        self.script.released = True

    def authorized(self, request: web.Request) -> bool:
        return bool(request.headers.get("authorization") or request.headers.get("x-api-key"))

    def _record(self, made: Made) -> None:
        self.made[made.id] = made
        for line in made.lines:
            self.submitted[line["custom_id"]] += 1

    async def _slow(self, seconds: float) -> None:
        if seconds:
            self.polling += 1
            try:
                await asyncio.sleep(seconds)
            finally:
                self.polling -= 1

    def _polled(self, made: Made) -> web.Response | None:
        """Count a poll; a 429 when the script refuses it; end the batch when it may."""
        self.polls += 1
        self.poll_times.append(time.monotonic())
        if self.script.refuse_polls > 0:
            self.script.refuse_polls -= 1
            return web.json_response(
                self.error(429, "rate_limit_error", "too many polls"),
                status=429,
                headers={"retry-after": self.script.retry_after},
            )
        made.polls += 1
        if made.status in ("in_progress", "cancelling", "canceling"):
            end = self.script.released or (
                self.script.polls_to_end is not None and made.polls >= self.script.polls_to_end
            )
            if made.cancelled or end:
                self._end(made)
        return None

    def _end(self, made: Made) -> None:
        raise NotImplementedError

    def error(self, status: int, kind: str, message: str) -> dict[str, Any]:
        raise NotImplementedError

    def reached(self, made: Made, n: int) -> bool:
        """Whether line `n` (0-based) was answered before the batch ended."""
        if made.cancelled:
            return False
        return not self.script.expire or n < self.script.answer_first


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


class OpenAIBatchFake(BatchApiFake):
    def __init__(self, fake: Any) -> None:
        super().__init__(fake)
        self.files: dict[str, bytes] = {}

    def register(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/v1/files", self._upload)
        r.add_get("/v1/files/{id}/content", self._content)
        r.add_post("/v1/batches", self._create)
        r.add_get("/v1/batches", self._list)
        r.add_get("/v1/batches/{id}", self._get)
        r.add_post("/v1/batches/{id}/cancel", self._cancel)

    def error(self, status: int, kind: str, message: str) -> dict[str, Any]:
        return {"error": {"message": message, "type": kind, "code": None}}

    async def _upload(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return web.json_response(self.error(401, "auth", "no key"), status=401)
        form = await request.post()
        upload = form["file"]
        content = upload.file.read() if hasattr(upload, "file") else bytes(str(upload), "utf-8")
        file_id = f"file-{uuid.uuid4().hex[:16]}"
        self.files[file_id] = content
        return web.json_response(
            {"id": file_id, "object": "file", "bytes": len(content), "purpose": form["purpose"]}
        )

    async def _content(self, request: web.Request) -> web.Response:
        content = self.files.get(request.match_info["id"])
        if content is None:
            return web.json_response(
                self.error(404, "invalid_request_error", "no file"), status=404
            )
        return web.Response(body=content, content_type="application/octet-stream")

    async def _create(self, request: web.Request) -> web.Response:
        if self.script.create_status is not None:
            status = self.script.create_status
            return web.json_response(self.error(status, "server_error", "no"), status=status)
        body = await request.json()
        content = self.files[body["input_file_id"]]
        made = Made(
            f"batch_{uuid.uuid4().hex[:16]}",
            [orjson.loads(x) for x in content.splitlines() if x.strip()],
            time.time(),
            metadata=body.get("metadata"),
            endpoint=body["endpoint"],
            input_file_id=body["input_file_id"],
        )
        if self.script.fail_lines:
            made.status = "failed"
        self._record(made)
        await asyncio.sleep(self.script.create_delay)
        return web.json_response(self._view(made))

    async def _get(self, request: web.Request) -> web.Response:
        made = self.made.get(request.match_info["id"])
        if made is None:
            return web.json_response(self.error(404, "invalid_request_error", "no"), status=404)
        await self._slow(self.script.poll_delay)
        refused = self._polled(made)
        return refused or web.json_response(self._view(made))

    async def _list(self, request: web.Request) -> web.Response:
        limit = int(request.query.get("limit", "20"))
        newest = sorted(self.made.values(), key=lambda m: m.created_at, reverse=True)[:limit]
        return web.json_response({"object": "list", "data": [self._view(m) for m in newest]})

    async def _cancel(self, request: web.Request) -> web.Response:
        made = self.made[request.match_info["id"]]
        self.cancels += 1
        if made.status == "in_progress":
            made.cancelled, made.status = True, "cancelling"
        return web.json_response(self._view(made))

    def _end(self, made: Made) -> None:
        output, errors = [], []
        for n, line in enumerate(made.lines):
            entry: dict[str, Any] = {"id": f"batch_req_{n}", "custom_id": line["custom_id"]}
            if not self.reached(made, n):
                code = "batch_cancelled" if made.cancelled else "batch_expired"
                message = "This request could not be executed before the completion window expired."
                errors.append(
                    {**entry, "response": None, "error": {"code": code, "message": message}}
                )
                continue
            status, body = self.fake.answer_line(line["body"])
            response = {"status_code": status, "request_id": f"req_{n}", "body": body}
            (output if status == 200 else errors).append(
                {**entry, "response": response, "error": None}
            )
        for kind, entries in (("output", output), ("error", errors)):
            if entries:
                file_id = f"file-{made.id}-{kind}"
                self.files[file_id] = b"".join(orjson.dumps(e) + b"\n" for e in entries)
                setattr(made, f"{kind}_file_id", file_id)
        made.completed, made.failed = len(output), len(errors)
        made.status = (
            "cancelled" if made.cancelled else "expired" if self.script.expire else "completed"
        )

    def _view(self, made: Made) -> dict[str, Any]:
        errors = None
        if made.status == "failed":
            data = [
                {"code": "invalid_request", "message": m, "param": None, "line": n}
                for n, m in self.script.fail_lines.items()
            ]
            errors = {"object": "list", "data": data}
        now = int(time.time())
        return {
            "id": made.id,
            "object": "batch",
            "endpoint": made.endpoint,
            "errors": errors,
            "input_file_id": made.input_file_id,
            "completion_window": "24h",
            "status": made.status,
            "output_file_id": made.output_file_id,
            "error_file_id": made.error_file_id,
            "created_at": int(made.created_at),
            "in_progress_at": int(made.created_at),
            "expires_at": int(made.created_at) + 86400,
            "failed_at": now if made.status == "failed" else None,
            "completed_at": now if made.status == "completed" else None,
            "expired_at": now if made.status == "expired" else None,
            "cancelled_at": now if made.status == "cancelled" else None,
            "request_counts": {
                "total": len(made.lines),
                "completed": made.completed,
                "failed": made.failed,
            },
            "metadata": made.metadata,
        }


class AnthropicBatchFake(BatchApiFake):
    def register(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/v1/messages/batches", self._create)
        r.add_get("/v1/messages/batches", self._list)
        r.add_get("/v1/messages/batches/{id}", self._get)
        r.add_get("/v1/messages/batches/{id}/results", self._results)
        r.add_post("/v1/messages/batches/{id}/cancel", self._cancel)

    def error(self, status: int, kind: str, message: str) -> dict[str, Any]:
        return {"type": "error", "error": {"type": kind, "message": message}}

    async def _create(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return web.json_response(self.error(401, "authentication_error", "no key"), status=401)
        if self.script.create_status is not None:
            status = self.script.create_status
            return web.json_response(self.error(status, "api_error", "no"), status=status)
        body = await request.json()
        made = Made(f"msgbatch_{uuid.uuid4().hex[:16]}", list(body["requests"]), time.time())
        self._record(made)
        await asyncio.sleep(self.script.create_delay)
        return web.json_response(self._view(made, request))

    async def _get(self, request: web.Request) -> web.Response:
        made = self.made.get(request.match_info["id"])
        if made is None:
            return web.json_response(self.error(404, "not_found_error", "no batch"), status=404)
        await self._slow(self.script.poll_delay)
        refused = self._polled(made)
        return refused or web.json_response(self._view(made, request))

    async def _list(self, request: web.Request) -> web.Response:
        newest = sorted(self.made.values(), key=lambda m: m.created_at, reverse=True)
        return web.json_response(
            {"data": [self._view(m, request) for m in newest], "has_more": False}
        )

    async def _cancel(self, request: web.Request) -> web.Response:
        made = self.made[request.match_info["id"]]
        self.cancels += 1
        if made.status == "in_progress":
            made.cancelled, made.status = True, "canceling"
        return web.json_response(self._view(made, request))

    async def _results(self, request: web.Request) -> web.Response:
        made = self.made[request.match_info["id"]]
        if made.status != "ended":
            return web.json_response(
                self.error(400, "invalid_request_error", "not ended"), status=400
            )
        body = b"".join(orjson.dumps(r) + b"\n" for r in made.results)
        return web.Response(body=body, content_type="application/binary")

    def _end(self, made: Made) -> None:
        for n, line in enumerate(made.lines):
            if not self.reached(made, n):
                kind = "canceled" if made.cancelled else "expired"
                made.results.append({"custom_id": line["custom_id"], "result": {"type": kind}})
                continue
            status, answer = self.fake.answer_line(line["params"])
            if status == 200:
                result: dict[str, Any] = {"type": "succeeded", "message": answer}
            else:
                result = {"type": "errored", "error": answer}
            made.results.append({"custom_id": line["custom_id"], "result": result})
        made.status = "ended"

    def _view(self, made: Made, request: web.Request) -> dict[str, Any]:
        kinds = Counter(r["result"]["type"] for r in made.results)
        processing = len(made.lines) - len(made.results)
        ended = made.status == "ended"
        return {
            "id": made.id,
            "type": "message_batch",
            "processing_status": made.status,
            "request_counts": {
                "processing": processing,
                "succeeded": kinds["succeeded"],
                "errored": kinds["errored"],
                "canceled": kinds["canceled"],
                "expired": kinds["expired"],
            },
            "created_at": _iso(made.created_at),
            "expires_at": _iso(made.created_at + 86400),
            "ended_at": _iso(time.time()) if ended else None,
            "cancel_initiated_at": _iso(time.time()) if made.cancelled else None,
            "archived_at": None,
            "results_url": (
                f"http://{request.host}/v1/messages/batches/{made.id}/results" if ended else None
            ),
        }
