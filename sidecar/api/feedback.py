"""`POST /v1/feedback` on the proxy listener: the app says how good an answer was.

    {"id": "chatcmpl-…", "score": 0.8, "label": "wrong_order"}

`id` is the answer's `id` (or its `x-sidecar-trace-id`); `score` a number from 0 (bad) to
1 (good), or "up" / "down" (1 / 0); `label` optional, at most 64 characters. The answer is
found in the index of recent answers (pipeline/recent.py), so the score counts against the
route, model and tier that produced it; an id that is unknown, or older than
`quality.feedback.ttl`, is a 404.
"""

from __future__ import annotations

import logging

import orjson
from aiohttp import web

from sidecar.api.body import json_body
from sidecar.api.keys import HOLDER
from sidecar.api.openai import OPENAI
from sidecar.api.proxy import JSON, error_response, not_ready
from sidecar.errors import InvalidRequest, SidecarError, StateUnavailable
from sidecar.pipeline.recent import find, record_feedback
from sidecar.shapes import FEEDBACK_SHAPE
from sidecar.stores.state import StoreUnavailable

log = logging.getLogger("sidecar.feedback")

THUMBS = {"up": 1.0, "down": 0.0}
MAX_LABEL = 64


async def feedback(request: web.Request) -> web.Response:
    snapshot = request.app[HOLDER].current
    if snapshot is None:
        return error_response(OPENAI, not_ready())
    try:
        body = await json_body(request, FEEDBACK_SHAPE)
        score, label = _score(body.get("score")), body.get("label") or None
        if label is not None and len(label) > MAX_LABEL:
            raise InvalidRequest(f"label: at most {MAX_LABEL} characters", param="label")
        ttl = snapshot.policy.quality.feedback_ttl
        if not ttl:
            raise InvalidRequest(
                "feedback is off in this sidecar's policy (quality.feedback.ttl: 0s)",
                code="feedback_off",
                status=404,
            )
        answer_id = str(body["id"])
        try:
            answered = await find(snapshot.state, answer_id)
            if answered is None:
                raise InvalidRequest(
                    f"no answer with id '{answer_id[:100]}' in the last {ttl:g}s: it is "
                    "unknown, or too old for feedback (quality.feedback.ttl)",
                    code="answer_not_found",
                    param="id",
                    status=404,
                )
            await record_feedback(snapshot, answered, score, label)
        except StoreUnavailable as exc:
            log.error("state store unavailable (%s): feedback not recorded", exc)
            raise StateUnavailable(f"the state store is unavailable ({exc})") from None
    except SidecarError as exc:
        return error_response(OPENAI, exc)
    out = {
        "object": "feedback",
        "id": answer_id,
        "route": answered.route,
        "model": answered.model,
        "tier": answered.tier,
        "cache": answered.cache,
        "score": score,
        "label": label,
    }
    return web.Response(body=orjson.dumps(out), content_type=JSON)


def _score(raw: object) -> float:
    if isinstance(raw, str):
        if raw in THUMBS:
            return THUMBS[raw]
        raise InvalidRequest("score: a number from 0 to 1, or 'up' or 'down'", param="score")
    if isinstance(raw, int | float) and 0.0 <= raw <= 1.0:
        return float(raw)
    raise InvalidRequest(f"score: {raw} is not between 0 and 1", param="score")
