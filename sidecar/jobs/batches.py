"""OpenAI's Batch API on top of the job queue: one input line, one job.

A batch is a record (OpenAI's `Batch` object) plus its jobs. Its status follows them:
`in_progress` until every job is finished, then whoever notices first — the worker that
settled the last job, or a `GET` — writes the output and error files in OpenAI's format
and swaps the record to `completed` (or `cancelled`). The swap is compare-and-set and
the files have fixed ids, so two finalizers racing write the same thing once.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson

from sidecar.jobs.lines import release_line
from sidecar.jobs.model import (
    CANCELLED,
    CHAT_ENDPOINT,
    DEAD,
    DEFERRED,
    EMBEDDINGS_ENDPOINT,
    ENDPOINTS,
    FAILED,
    PRIORITIES,
    SUBMITTED,
    SUCCEEDED,
    UNFINISHED,
    Job,
    new_id,
)
from sidecar.jobs.queue import JobQueue, StoredFile
from sidecar.shapes import CHAT_SHAPE, EMBEDDINGS_SHAPE, too_deep
from sidecar.stores.state import State

MAX_LINES = 50_000  # OpenAI's own limit per batch
SHAPES = {CHAT_ENDPOINT: CHAT_SHAPE, EMBEDDINGS_ENDPOINT: EMBEDDINGS_SHAPE}
OPEN = ("validating", "in_progress", "finalizing")


class BatchError(Exception):
    """The request to create or cancel a batch is wrong (400)."""


def parse_input(
    content: bytes, endpoint: str
) -> tuple[list[tuple[str, dict[str, Any]]], list[Any]]:
    """The lines of a batch input file as (custom_id, body), and what is wrong with it in
    OpenAI's `errors.data` shape (each with its line number)."""
    lines: list[tuple[str, dict[str, Any]]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()

    def wrong(code: str, message: str, line: int) -> None:
        errors.append({"code": code, "message": message, "line": line, "param": None})

    for n, raw in enumerate(content.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            item = orjson.loads(raw)
        except orjson.JSONDecodeError:
            wrong("invalid_json_line", f"line {n} is not valid JSON", n)
            continue
        if not isinstance(item, dict):
            wrong("invalid_request", f"line {n} is not a JSON object", n)
            continue
        custom_id, body, url = item.get("custom_id"), item.get("body"), item.get("url")
        if not isinstance(custom_id, str) or not custom_id:
            wrong("missing_required_parameter", f"line {n} has no custom_id", n)
        elif custom_id in seen:
            wrong("duplicate_custom_id", f"custom_id '{custom_id}' is used twice", n)
        elif item.get("method", "POST") != "POST":
            wrong("invalid_method", f"line {n}: method must be POST", n)
        elif url not in (endpoint, endpoint.removeprefix("/v1")):
            wrong("mismatched_endpoint", f"line {n}: url '{url}' is not {endpoint}", n)
        elif not isinstance(body, dict) or too_deep(raw, body):
            wrong("invalid_request", f"line {n}: body must be an object (at most 254 deep)", n)
        elif (problem := SHAPES[endpoint].problem(body)) is not None:
            wrong("invalid_request", f"line {n}: {problem}", n)
        elif body.get("stream"):
            wrong("invalid_request", f"line {n}: batch requests cannot stream", n)
        else:
            seen.add(custom_id)
            lines.append((custom_id, body))
    if len(lines) > MAX_LINES:
        wrong("too_many_requests", f"a batch holds at most {MAX_LINES} requests", 0)
    if not lines and not errors:
        wrong("empty_file", "the input file holds no requests", 0)
    return lines, errors


async def create(
    queue: JobQueue,
    *,
    input_file_id: str,
    endpoint: str,
    window: float,
    window_text: str,
    metadata: Mapping[str, Any] | None,
    headers: dict[str, str],
    app_key: str | None,
) -> dict[str, Any]:
    if endpoint not in ENDPOINTS:
        raise BatchError(f"endpoint must be one of {', '.join(ENDPOINTS)}")
    content = await queue.file_content(input_file_id)
    if content is None:
        raise BatchError(f"no file '{input_file_id}'")
    now = int(time.time())
    batch: dict[str, Any] = {
        "id": new_id("batch_"),
        "object": "batch",
        "endpoint": endpoint,
        "errors": None,
        "input_file_id": input_file_id,
        "completion_window": window_text,
        "status": "in_progress",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": now,
        "in_progress_at": now,
        "expires_at": now + int(window),
        **dict.fromkeys(("finalizing_at", "completed_at", "failed_at", "expired_at")),
        **dict.fromkeys(("cancelling_at", "cancelled_at")),
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "metadata": dict(metadata) if metadata else None,
    }
    lines, errors = parse_input(content, endpoint)
    if errors:
        batch.update(status="failed", failed_at=now, in_progress_at=None)
        batch["errors"] = {"object": "list", "data": errors[:1000]}
        await queue.put_batch(batch)
        return batch
    batch["request_counts"]["total"] = len(lines)
    jobs = [
        Job(
            id=new_id("job_"),
            endpoint=endpoint,
            request=body,
            headers=headers,
            app_key=app_key,
            priority=PRIORITIES["low"],
            deadline=float(batch["expires_at"]),
            batch_id=batch["id"],
            custom_id=custom_id,
        )
        for custom_id, body in lines
    ]
    # The record first: a finalizer checks that every job exists before it finishes one.
    await queue.put_batch(batch)
    await queue.submit(jobs)
    return batch


def request_counts(counts: Mapping[str, int], total: int) -> dict[str, int]:
    failed = sum(counts.get(s, 0) for s in (FAILED, DEAD, CANCELLED))
    return {"total": total, "completed": counts.get(SUCCEEDED, 0), "failed": failed}


async def current(queue: JobQueue, batch_id: str) -> dict[str, Any] | None:
    """The batch with live counts; finalized here if its last job has finished."""
    batch = await queue.get_batch(batch_id)
    if batch is None or batch["status"] not in (*OPEN, "cancelling"):
        return batch
    counts = await queue.batch_counts(batch_id)
    total = batch["request_counts"]["total"]
    batch["request_counts"] = request_counts(counts, total)
    seen = await provider_batches(queue, batch_id, counts)
    if seen is not None:
        batch["provider_batches"] = seen
    if sum(counts.values()) < total or any(counts.get(s) for s in UNFINISHED):
        return batch
    return await _finalize(queue, batch)


async def provider_batches(
    queue: JobQueue, batch_id: str, counts: Mapping[str, int]
) -> dict[str, Any] | None:
    """Where the lines that go through providers' batch APIs are: waiting to be submitted
    (deferred), at a provider (submitted), and the provider batches that took them; None
    for a batch none of whose lines went that way."""
    taken = await queue.batch_submissions(batch_id)
    if not taken and not counts.get(DEFERRED):
        return None
    return {
        "deferred": counts.get(DEFERRED, 0),
        "submitted": counts.get(SUBMITTED, 0),
        "batches": [s.view() for s in taken],
    }


async def _finalize(queue: JobQueue, batch: dict[str, Any]) -> dict[str, Any] | None:
    jobs = await queue.batch_jobs(batch["id"])
    output = [_line(job) for job in jobs if job.status == SUCCEEDED]
    errors = [_line(job) for job in jobs if job.status != SUCCEEDED]
    now = int(time.time())
    final = {**batch, "finalizing_at": now, "usage": _usage(jobs)}
    seen = await provider_batches(queue, batch["id"], {})
    if seen is not None:
        final["provider_batches"] = seen
    for kind, lines in (("output", output), ("error", errors)):
        if not lines:
            continue
        content = b"".join(orjson.dumps(line) + b"\n" for line in lines)
        file = StoredFile(
            f"file-{batch['id']}-{kind}",
            f"{batch['id']}_{kind}.jsonl",
            "batch_output",
            len(content),
            now,
        )
        await queue.put_file(file, content)
        final[f"{kind}_file_id"] = file.id
    if batch["status"] == "cancelling":
        final.update(status="cancelled", cancelled_at=now)
    else:
        final.update(status="completed", completed_at=now)
    if await queue.swap_batch(final, expect=batch["status"]):
        return final
    return await queue.get_batch(batch["id"])  # another finalizer won


async def cancel(queue: JobQueue, batch_id: str, state: State) -> dict[str, Any] | None:
    """Queued and deferred lines are cancelled (a deferred line's budget hold goes back to
    `state`); the provider batches holding submitted ones are asked to cancel, and their
    lines are cancelled as the answers come back (those answered before stay answered)."""
    batch = await queue.get_batch(batch_id)
    if batch is None:
        return None
    if batch["status"] not in OPEN:
        if batch["status"] in ("cancelling", "cancelled"):
            return await current(queue, batch_id)
        raise BatchError(f"batch {batch_id} is {batch['status']}: it cannot be cancelled")
    cancelling = {**batch, "status": "cancelling", "cancelling_at": int(time.time())}
    await queue.swap_batch(cancelling, expect=batch["status"])
    await queue.cancel_batch(batch_id)
    lines, held = await queue.cancel_deferred(batch_id)
    for line in lines:
        await release_line(state, line)
    for submission in held:
        await queue.request_cancel(submission)
    return await current(queue, batch_id)


def _line(job: Job) -> dict[str, Any]:
    """One line of an output or error file, as OpenAI writes it."""
    line: dict[str, Any] = {"id": f"batch_req_{job.id}", "custom_id": job.custom_id}
    if job.status == SUCCEEDED:
        response = {"status_code": job.status_code or 200, "request_id": job.id, "body": job.result}
        return {**line, "response": response, "error": None}
    if job.status_code is not None and job.error is not None:
        body = {"error": job.error}
        response = {"status_code": job.status_code, "request_id": job.id, "body": body}
        return {**line, "response": response, "error": None}
    error = job.error or {}
    code = "batch_cancelled" if job.status == CANCELLED else error.get("code") or job.status
    message = error.get("message") or f"the request was not run ({job.status})"
    return {**line, "response": None, "error": {"code": code, "message": message}}


def _usage(jobs: list[Job]) -> dict[str, Any]:
    tokens = {"input": 0, "output": 0, "cached": 0}
    for job in jobs:
        usage = job.result.get("usage") if isinstance(job.result, dict) else None
        if not isinstance(usage, dict):
            continue
        tokens["input"] += int(usage.get("prompt_tokens") or 0)
        tokens["output"] += int(usage.get("completion_tokens") or 0)
        details = usage.get("prompt_tokens_details") or {}
        tokens["cached"] += int(details.get("cached_tokens") or 0)
    return {
        "input_tokens": tokens["input"],
        "input_tokens_details": {"cached_tokens": tokens["cached"]},
        "output_tokens": tokens["output"],
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": tokens["input"] + tokens["output"],
    }
