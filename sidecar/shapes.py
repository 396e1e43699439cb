"""The shapes of what crosses the sidecar: request bodies, checked before any stage touches
them, and upstream answers, checked before they are passed on.

One JSON Schema (draft 2020-12) per endpoint, for both ingress formats: OpenAI's chat
completions and embeddings, Anthropic's messages, and the jobs and batches bodies (a job's
`request` is checked as the endpoint it names). They are strict on the types the pipeline
and the translators read — `messages` a list of objects, `max_tokens` a positive integer,
`response_format` an object — and permissive elsewhere: fields not named here go to the
provider untouched, as the providers' own servers accept fields they do not know yet.
An upstream's answer (OpenAI's shape, after any translation) gets the same treatment: what
the pipeline reads of it must have the right type, or the attempt is a `protocol` failure.

Compiled once at import with jsonschema-rs: it checks a two-message chat request in under
a microsecond, where jsonschema (pure Python) took about 60 (and 900 for fifty messages),
a tenth of the sidecar's whole cost per request. A violation becomes one 400 that names
the field's path and the problem (`messages[2].content: expected string or array, got
integer`), with the path also as OpenAI's `param`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jsonschema_rs
import orjson

from sidecar.errors import InvalidRequest
from sidecar.jobs.model import EMBEDDINGS_ENDPOINT

Schema = dict[str, Any]

# orjson reads 1024 levels of nesting but writes only 254: a deeper body could not be sent
# on, cached or queued, so it is refused like a wrong type. Fewer bytes cannot nest so deep.
MAX_DEPTH = 254
_SHALLOW = 2 * MAX_DEPTH

STRING: Schema = {"type": "string"}
OBJECT: Schema = {"type": "object"}
BOOLEAN: Schema = {"type": ["boolean", "null"]}
NUMBER: Schema = {"type": ["number", "null"]}
COUNT: Schema = {"type": ["integer", "null"], "minimum": 1}
NAME: Schema = {"type": "string", "minLength": 1}


def obj(*required: str, **properties: Schema) -> Schema:
    schema: Schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    return schema


def array(items: Schema, *also: str, min_items: int = 0) -> Schema:
    schema: Schema = {"type": ["array", *also], "items": items}
    if min_items:
        schema["minItems"] = min_items
    return schema


def when(kind: str, *required: str) -> Schema:
    """A content block of type `kind` needs `required` (the translators index them)."""
    return {
        "if": {"required": ["type"], "properties": {"type": {"const": kind}}},
        "then": {"required": list(required)},
    }


# -- OpenAI chat completions and embeddings ----------------------------------------------

_PART = obj("type", type=STRING, text=STRING, image_url=obj(url=STRING))
_CALL = obj(id=STRING, type=STRING, function=obj(name=STRING, arguments=STRING))
_MESSAGE = obj(
    "role",
    role=STRING,
    content={"type": ["string", "array", "null"], "items": _PART},
    name=STRING,
    tool_call_id=STRING,
    tool_calls=array(_CALL, "null"),
)
_TOOL = obj(
    type=STRING,
    function=obj("name", name=STRING, description=STRING, parameters=OBJECT),
)
_SIDECAR_ONLY: Schema = {"not": {}}  # `x_anthropic` carries Anthropic ingress fields inward

CHAT = obj(
    "model",
    "messages",
    model=NAME,
    messages=array(_MESSAGE, min_items=1),
    stream=BOOLEAN,
    stream_options={"type": ["object", "null"], "properties": {"include_usage": BOOLEAN}},
    max_tokens=COUNT,
    max_completion_tokens=COUNT,
    n=COUNT,
    temperature=NUMBER,
    top_p=NUMBER,
    stop={"type": ["string", "array", "null"], "items": STRING},
    tools=array(_TOOL, "null"),
    tool_choice={
        "type": ["string", "object", "null"],
        "properties": {"type": STRING, "function": obj(name=STRING)},
    },
    parallel_tool_calls=BOOLEAN,
    response_format={
        "type": ["object", "null"],
        "required": ["type"],
        "properties": {
            "type": STRING,
            "json_schema": obj(name=STRING, schema=OBJECT, strict=BOOLEAN),
        },
    },
    user=STRING,
    x_anthropic=_SIDECAR_ONLY,
)

EMBEDDINGS = obj(
    "model",
    "input",
    model=NAME,
    input={
        "type": ["string", "array"],
        "items": {"type": ["string", "integer", "array"], "items": {"type": "integer"}},
    },
    dimensions=COUNT,
    encoding_format={"type": ["string", "null"]},
    user=STRING,
    x_anthropic=_SIDECAR_ONLY,
)

# -- Anthropic messages ------------------------------------------------------------------

_TEXT_BLOCKS: Schema = {"type": ["string", "array"], "items": obj(type=STRING, text=STRING)}
_BLOCK = obj(
    "type",
    type=STRING,
    text=STRING,
    source=obj(type=STRING, media_type=STRING, data=STRING, url=STRING),
    id=STRING,
    name=STRING,
    input=OBJECT,
    tool_use_id=STRING,
    content=_TEXT_BLOCKS,
    is_error=BOOLEAN,
)
_BLOCK["allOf"] = [when("tool_use", "id", "name"), when("tool_result", "tool_use_id")]

MESSAGES = obj(
    "model",
    "max_tokens",
    "messages",
    model=NAME,
    max_tokens={"type": "integer", "minimum": 1},
    messages=array(
        obj("role", "content", role=STRING, content={"type": ["string", "array"], "items": _BLOCK}),
        min_items=1,
    ),
    system=_TEXT_BLOCKS,
    stop_sequences=array(STRING),
    stream=BOOLEAN,
    temperature=NUMBER,
    top_p=NUMBER,
    top_k={"type": ["integer", "null"]},
    metadata=obj(user_id={"type": ["string", "null"]}),
    tools=array(obj("name", name=STRING, description=STRING, input_schema=OBJECT)),
    tool_choice=obj("type", type=STRING, name=STRING, disable_parallel_tool_use=BOOLEAN),
    thinking=OBJECT,
)

# -- jobs and batches (the handlers check values; here only the types they read) --------

JOB = obj(
    "request",
    request=OBJECT,
    endpoint=STRING,
    callback_url={"type": ["string", "null"]},
    metadata={"type": ["object", "null"]},
    priority=STRING,
    deadline={"type": ["number", "string", "null"]},
)
JOB["if"] = {"required": ["endpoint"], "properties": {"endpoint": {"const": EMBEDDINGS_ENDPOINT}}}
JOB["then"] = {"properties": {"request": EMBEDDINGS}}
JOB["else"] = {"properties": {"request": CHAT}}

BATCH = obj(
    input_file_id=STRING,
    endpoint=STRING,
    completion_window=STRING,
    metadata={"type": ["object", "null"]},
)

# App feedback on an answer (api/feedback.py checks the score's range and the label's length)
FEEDBACK = obj(
    "id",
    "score",
    id=NAME,
    score={"type": ["number", "string"]},
    label={"type": ["string", "null"]},
)


# -- answers, in the internal (OpenAI) shape --------------------------------------------

_TOKENS: Schema = {"type": ["integer", "null"], "minimum": 0}  # negative usage would refund
USAGE: Schema = {
    "type": ["object", "null"],
    "properties": {
        "prompt_tokens": _TOKENS,
        "completion_tokens": _TOKENS,
        "prompt_tokens_details": {
            "type": ["object", "null"],
            "properties": {"cached_tokens": _TOKENS},
        },
    },
}
_ANSWER_CALL = obj(id=STRING, function=obj(name=STRING, arguments=STRING))
_FINISH: Schema = {"type": ["string", "null"]}
CHAT_ANSWER = obj(
    "choices",
    choices=array(
        obj(
            message=obj(
                content={"type": ["string", "null"]}, tool_calls=array(_ANSWER_CALL, "null")
            ),
            finish_reason=_FINISH,
        ),
        min_items=1,
    ),
    usage=USAGE,
)
EMBEDDINGS_ANSWER = obj(
    "data",
    data=array(obj(embedding={"type": ["array", "string"], "items": {"type": "number"}})),
    usage=USAGE,
)
CHUNK = obj(
    choices=array(
        obj(
            delta=obj(
                content={"type": ["string", "null"]},
                tool_calls=array(obj(function=obj(name=STRING, arguments=STRING)), "null"),
            ),
            finish_reason=_FINISH,
        ),
        "null",
    ),
    usage=USAGE,
)


class Shape:
    """One endpoint's compiled schema."""

    __slots__ = ("_validator", "name")

    def __init__(self, name: str, schema: Schema) -> None:
        self.name = name
        self._validator = jsonschema_rs.Draft202012Validator(schema)

    def problem(self, body: Any) -> str | None:
        """What is wrong with `body` (`path: problem`), or None when it fits."""
        try:
            self._validator.validate(body)
        except jsonschema_rs.ValidationError as error:
            where, problem = describe(error)
            return f"{where or 'the body'}: {problem}"
        return None

    def check(self, body: Any) -> None:
        """Raise a 400 naming the field at fault (also as OpenAI's `param`)."""
        try:
            self._validator.validate(body)
        except jsonschema_rs.ValidationError as error:
            where, problem = describe(error)
            raise InvalidRequest(
                f"{where or 'the body'}: {problem}", code="invalid_request", param=where or None
            ) from None


CHAT_SHAPE = Shape("chat completions", CHAT)
EMBEDDINGS_SHAPE = Shape("embeddings", EMBEDDINGS)
MESSAGES_SHAPE = Shape("messages", MESSAGES)
JOB_SHAPE = Shape("job", JOB)
BATCH_SHAPE = Shape("batch", BATCH)
FEEDBACK_SHAPE = Shape("feedback", FEEDBACK)
CHAT_ANSWER_SHAPE = Shape("chat completion", CHAT_ANSWER)
EMBEDDINGS_ANSWER_SHAPE = Shape("embeddings answer", EMBEDDINGS_ANSWER)
CHUNK_SHAPE = Shape("chat completion chunk", CHUNK)


def too_deep(raw: bytes | bytearray, parsed: Any) -> bool:
    """Whether `parsed` (read from `raw`) nests deeper than orjson writes back."""
    if len(raw) <= _SHALLOW:
        return False
    try:
        orjson.dumps(parsed)  # about a fifth of the parse's time; only orjson knows its limit
    except orjson.JSONEncodeError:
        return True
    return False


_JSON_TYPES = {
    dict: "object",
    list: "array",
    str: "string",
    bool: "boolean",
    int: "integer",
    float: "number",
    type(None): "null",
}


def path(parts: Sequence[str | int]) -> str:
    """`["messages", 2, "content"]` → `messages[2].content`."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def describe(error: jsonschema_rs.ValidationError) -> tuple[str, str]:
    """The path of the field at fault, and what is wrong with it."""
    kind = error.kind
    where = path(error.instance_path)
    name, value = kind.name, kind.value
    if name == "type":
        wanted = [t for t in value if t != "null"] or list(value)
        got = _JSON_TYPES.get(type(error.instance), "something else")
        problem = f"expected {' or '.join(wanted)}, got {got}"
    elif name == "required":
        where = path([*error.instance_path, value])
        problem = "is required"
    elif name == "minimum":
        problem = f"must be at least {value}"
    elif name in ("minLength", "minItems"):
        problem = "must not be empty"
    elif name in ("falseSchema", "not"):
        problem = "is the sidecar's own field and cannot be sent"
    else:
        problem = error.message[:200]
    return where, problem
