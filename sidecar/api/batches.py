"""OpenAI's Files and Batch API, so `client.files.create` / `client.batches.create` of the
official SDK work unchanged against the sidecar. Each input line runs as a job.

    POST /v1/files                   multipart: file (JSONL), purpose=batch
    GET  /v1/files/{id}              the file object
    GET  /v1/files/{id}/content      the bytes (input, output or error file)
    DELETE /v1/files/{id}
    POST /v1/batches                 {input_file_id, endpoint, completion_window, metadata?}
    GET  /v1/batches                 newest first
    GET  /v1/batches/{id}            live request_counts; output_file_id once completed
    POST /v1/batches/{id}/cancel     queued lines are cancelled, running ones finish
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import BodyPartReader, web

from sidecar.api.body import arriving, encoding, json_body
from sidecar.api.jobs import answer, answered, caller, context, not_found
from sidecar.errors import BodyTooLarge, InvalidRequest
from sidecar.jobs import batches
from sidecar.jobs.model import ENDPOINTS, new_id
from sidecar.jobs.queue import StoredFile
from sidecar.policy.durations import parse_duration
from sidecar.shapes import BATCH_SHAPE

PURPOSES = ("batch",)


@answered
async def upload(request: web.Request) -> web.Response:
    _, config, queue = context(request)
    limit = config.max_file_bytes  # files may be larger than request bodies, or smaller
    try:
        purpose, filename, content = await _multipart(request.clone(client_max_size=limit))
    except web.HTTPRequestEntityTooLarge:
        raise BodyTooLarge(
            f"the file is larger than {limit} bytes (the policy's jobs.max_file_bytes)"
        ) from None
    if purpose not in PURPOSES:
        raise InvalidRequest("purpose must be 'batch'", code="invalid_purpose")
    file = StoredFile(new_id("file-"), filename, purpose, len(content), int(time.time()))
    await queue.put_file(file, content)
    return answer(file.view())


async def _multipart(request: web.Request) -> tuple[str | None, str, bytes]:
    """The parts of an upload, read like any request body: within the body timeout; a
    compressed upload is refused (415)."""
    if not request.content_type.startswith("multipart/"):
        raise InvalidRequest("upload a file as multipart/form-data", code="invalid_upload")
    if encoding(request) is not None:
        raise InvalidRequest(
            "upload the file uncompressed", code="unsupported_encoding", status=415
        )
    purpose: str | None = None
    filename, content = "upload.jsonl", None
    async with arriving(request):
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "purpose":
                purpose = (await part.text()).strip()
            elif part.name == "file":
                filename = part.filename or filename
                content = bytes(await part.read())
    if content is None:
        raise InvalidRequest("the upload has no 'file' part", code="invalid_upload")
    return purpose, filename, content


@answered
async def file_info(request: web.Request) -> web.Response:
    file_id = request.match_info["file_id"]
    _, _, queue = context(request)
    file = await queue.get_file(file_id)
    if file is None:
        raise not_found(f"no file '{file_id}'", "file_not_found")
    return answer(file.view())


@answered
async def file_content(request: web.Request) -> web.Response:
    file_id = request.match_info["file_id"]
    _, _, queue = context(request)
    content = await queue.file_content(file_id)
    if content is None:
        raise not_found(f"no file '{file_id}'", "file_not_found")
    return web.Response(body=content, content_type="application/octet-stream")


@answered
async def delete_file(request: web.Request) -> web.Response:
    file_id = request.match_info["file_id"]
    _, _, queue = context(request)
    if not await queue.delete_file(file_id):
        raise not_found(f"no file '{file_id}'", "file_not_found")
    return answer({"id": file_id, "object": "file", "deleted": True})


@answered
async def create(request: web.Request) -> web.Response:
    snapshot, _, queue = context(request)
    body = await json_body(request, BATCH_SHAPE)
    endpoint = body.get("endpoint")
    if endpoint not in ENDPOINTS:
        raise InvalidRequest(
            f"endpoint must be one of {', '.join(ENDPOINTS)}", code="invalid_endpoint"
        )
    window_text = body.get("completion_window", "24h")
    try:
        window = parse_duration(window_text)
    except ValueError:
        raise InvalidRequest(
            "completion_window must be a duration such as 24h", code="invalid_window"
        ) from None
    input_file_id = body.get("input_file_id")
    if not isinstance(input_file_id, str):
        raise InvalidRequest("input_file_id is required", code="missing_input_file")
    metadata: Any = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidRequest("metadata must be an object", code="invalid_metadata")
    headers, app_key = caller(request.headers, snapshot)  # for every line
    try:
        batch = await batches.create(
            queue,
            input_file_id=input_file_id,
            endpoint=endpoint,
            window=window,
            window_text=window_text,
            metadata=metadata,
            headers=headers,
            app_key=app_key,
        )
    except batches.BatchError as exc:
        raise InvalidRequest(str(exc), code="invalid_batch") from None
    return answer(batch)


@answered
async def retrieve(request: web.Request) -> web.Response:
    batch_id = request.match_info["batch_id"]
    _, _, queue = context(request)
    batch = await batches.current(queue, batch_id)
    if batch is None:
        raise not_found(f"no batch '{batch_id}'", "batch_not_found")
    return answer(batch)


@answered
async def cancel(request: web.Request) -> web.Response:
    batch_id = request.match_info["batch_id"]
    snapshot, _, queue = context(request)
    try:
        batch = await batches.cancel(queue, batch_id, snapshot.state)
    except batches.BatchError as exc:
        raise InvalidRequest(str(exc), code="invalid_batch_state") from None
    if batch is None:
        raise not_found(f"no batch '{batch_id}'", "batch_not_found")
    return answer(batch)


@answered
async def listing(request: web.Request) -> web.Response:
    _, _, queue = context(request)
    try:
        limit = max(1, min(100, int(request.query.get("limit", "20"))))
    except ValueError:
        raise InvalidRequest("limit must be a number", code="invalid_limit") from None
    found = await queue.list_batches(limit)
    return answer(
        {
            "object": "list",
            "data": found,
            "first_id": found[0]["id"] if found else None,
            "last_id": found[-1]["id"] if found else None,
            "has_more": False,
        }
    )
