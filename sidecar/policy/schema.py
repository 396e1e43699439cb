"""The structure of a policy file, for cerberus: one definition per section.

These plain dicts are the single source of truth for the format; `check` and the
loader validate with them, and a published JSON Schema can be generated from them.
References between sections (a target naming a model) are checked later, in `compile`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import cerberus
from cerberus.errors import BasicErrorHandler, ValidationError

from sidecar.policy.durations import parse_duration
from sidecar.policy.guards import KINDS as GUARD_KINDS

PROVIDER_TYPES = ("openai", "anthropic", "mock")
# How a provider is asked for schema-shaped output (see providers/structured.py).
STRUCTURED_DIALECTS = (
    "json_schema",
    "json_object",
    "guided_json",
    "structured_outputs",
    "tool",
    "none",
)

DURATION: dict[str, Any] = {"type": "string", "check_with": "duration"}
NAMES: dict[str, Any] = {
    # A condition value: one string or a list of strings, any of which matches.
    "type": ["string", "list"],
    "schema": {"type": "string"},
    "minlength": 1,
}

MOCK: dict[str, Any] = {
    "reply": {"type": "string"},
    "latency": DURATION,
    "chunk_delay": DURATION,
    "embedding_dims": {"type": "integer", "min": 1, "max": 8192},
}

FAILURE_CLASSES = ("connect", "timeout", "5xx", "429", "overloaded", "auth", "protocol")

CIRCUIT: dict[str, Any] = {
    # Open after N failures in a row, or when failures / calls in `window` reach the ratio
    # (with at least `min_calls` calls). After `cooldown`, one probe is let through.
    "consecutive_failures": {"type": "integer", "min": 1},
    "failure_ratio": {"type": "float", "min": 0.01, "max": 1.0},
    "min_calls": {"type": "integer", "min": 1},
    "window": DURATION,
    "cooldown": DURATION,
}

PROVIDER: dict[str, Any] = {
    "type": {"type": "string", "required": True, "allowed": list(PROVIDER_TYPES)},
    "base_url": {"type": "string", "check_with": "url"},
    "api_key": {"type": "string"},
    "timeout": DURATION,
    "headers": {"type": "dict", "keysrules": {"type": "string"}, "valuesrules": {"type": "string"}},
    "max_connections": {"type": "integer", "min": 1, "max": 10000},
    "anthropic_version": {"type": "string", "empty": False},
    "max_tokens": {"type": "integer", "min": 1},
    "mock": {"type": "dict", "schema": MOCK},
    "max_concurrency": {"type": "integer", "min": 1},
    "concurrency_wait": DURATION,
    "circuit": {"type": "dict", "schema": CIRCUIT},
    "structured_output": {"type": "string", "allowed": list(STRUCTURED_DIALECTS)},
    "prompt_cache_key": {"type": "boolean"},  # default: true for api.openai.com only
}

PRICE: dict[str, Any] = {
    "input": {"type": "number", "min": 0},
    "output": {"type": "number", "min": 0},
    "cached_input": {"type": "number", "min": 0},
    "cache_write": {"type": "number", "min": 0},
    "cache_write_1h": {"type": "number", "min": 0},
    # Through the provider's batch API: a share of these prices (0.5: half), or its own.
    "batch": {
        "anyof": [
            {"type": "number", "min": 0, "max": 1},
            {
                "type": "dict",
                "schema": {
                    "input": {"type": "number", "min": 0, "required": True},
                    "output": {"type": "number", "min": 0, "required": True},
                    "cached_input": {"type": "number", "min": 0},
                    "cache_write": {"type": "number", "min": 0},
                },
            },
        ]
    },
}

# Concurrent embeddings calls for one model, merged into one upstream call (issue 20).
MICRO_BATCH: dict[str, Any] = {
    "batch_window": DURATION,  # how long the first call waits for others to join it
    "max_inputs": {"type": "integer", "min": 1, "max": 2048},  # inputs per upstream call
}

# Prompt economy (pipeline/prepare.py, providers/prompt_cache.py). `prompt_cache` is
# `auto` (the default) or `off`, or a mapping with `mode` and, on a route, Anthropic's `ttl`
# or, on a model, the shortest prefix its provider caches.
CACHE_MODES = ["auto", "off"]
PROMPT_CACHE_MODEL: dict[str, Any] = {
    "anyof": [
        {"type": "string", "allowed": CACHE_MODES},
        {
            "type": "dict",
            "schema": {
                "mode": {"type": "string", "allowed": CACHE_MODES},
                "min_tokens": {"type": "integer", "min": 1},
            },
        },
    ]
}
PROMPT_CACHE_ROUTE: dict[str, Any] = {
    "anyof": [
        {"type": "string", "allowed": CACHE_MODES},
        {
            "type": "dict",
            "schema": {
                "mode": {"type": "string", "allowed": CACHE_MODES},
                "ttl": {"type": "string", "allowed": ["5m", "1h"]},
            },
        },
    ]
}
PROMPT: dict[str, Any] = {
    "max_input_tokens": {"type": "integer", "min": 1},
    "strategy": {"type": "string", "allowed": ["drop_oldest", "keep_first"]},
    "normalize": {
        "type": "list",
        "schema": {"type": "string", "allowed": ["whitespace", "duplicate_system"]},
    },
}
MAX_OUTPUT: dict[str, Any] = {
    # 1024, or {limit: 1024, mode: default} to fill in only when the app sends no max_tokens
    "anyof": [
        {"type": "integer", "min": 1},
        {
            "type": "dict",
            "schema": {
                "limit": {"type": "integer", "min": 1, "required": True},
                "mode": {"type": "string", "allowed": ["cap", "default"]},
            },
        },
    ]
}

MODEL: dict[str, Any] = {
    "provider": {"type": "string", "required": True},
    "name": {"type": "string", "empty": False},
    "price": {"type": "dict", "schema": PRICE},
    "circuit": {"type": "dict", "schema": CIRCUIT},
    "embeddings": {"type": "dict", "schema": MICRO_BATCH},
    "prompt_cache": PROMPT_CACHE_MODEL,
}

MATCH: dict[str, Any] = {
    "model": {"type": "string", "empty": False},
    "headers": {"type": "dict", "keysrules": {"type": "string"}, "valuesrules": NAMES},
    "user": NAMES,
    "team": NAMES,
}

BACKOFF: dict[str, Any] = {
    "base": DURATION,
    "max": DURATION,
    "jitter": {"type": "boolean"},
}

RETRY: dict[str, Any] = {
    "attempts": {"type": "integer", "min": 1, "max": 10},
    # `250ms`, or {base: 250ms, max: 5s, jitter: true}
    "backoff": {"anyof": [DURATION, {"type": "dict", "schema": BACKOFF}]},
    "on": {"type": "list", "schema": {"type": "string", "allowed": list(FAILURE_CLASSES)}},
}

TARGET: dict[str, Any] = {
    # a model name, or {model: NAME, retry: {...}} to give one target its own retry policy
    "anyof": [
        {"type": "string", "empty": False},
        {
            "type": "dict",
            "schema": {
                "model": {"type": "string", "required": True, "empty": False},
                "retry": {"type": "dict", "schema": RETRY},
            },
        },
    ]
}

OUTPUT: dict[str, Any] = {
    "schema": {
        "type": "string",
        "required": True,
        "empty": False,
    },  # a `schemas` name, or from_request
    "extract": {"type": "string", "allowed": ["strict", "lenient"]},
    "on_invalid": {
        "type": "dict",
        "schema": {
            "retries": {"type": "integer", "min": 0, "max": 5},
            "retry_target": {"type": "string", "allowed": ["same", "next"]},
            "then": {"type": "string", "allowed": ["fallback", "default", "error"]},
        },
    },
    "default": {"type": ["dict", "list", "string", "number", "boolean"]},
    # none: the name `validate` had before; default: both where the provider can enforce
    "enforce": {"type": "string", "allowed": ["native", "validate", "both", "none"]},
    "stream_mode": {"type": "string", "allowed": ["validate", "passthrough"]},
}

# Issue 24: what a semantic hit must share with its question, and how hits are checked.
SEMANTIC_CHECKS: dict[str, Any] = {
    "guards": {"type": "list", "schema": {"type": "string", "allowed": list(GUARD_KINDS)}},
    "verify_sample": {"type": "number", "min": 0.0, "max": 1.0},  # share of hits re-asked
    "min_agreement": {"type": "number", "min": 0.0, "max": 1.0},
    "verify_window": {"type": "integer", "min": 5, "max": 10_000},
    "on_low_agreement": {"type": "string", "allowed": ["tighten", "alert"]},
}

CACHE: dict[str, Any] = {
    "mode": {"type": "string", "allowed": ["exact", "semantic"]},
    "ttl": DURATION,
    "max_entries": {"type": "integer", "min": 1},
    "max_bytes": {"type": "integer", "min": 1024},
    "store": {"type": "string", "allowed": ["memory", "redis"]},
    "url": {"type": "string", "regex": r"rediss?://.+"},  # default: state.url
    "scope": {"type": "string", "allowed": ["global", "user", "team"]},
    "any_temperature": {"type": "boolean"},  # false: only temperature 0 (default: any)
    # Requests that offer tools: false never; text (default) keeps answers without tool
    # calls; always (or true) every answer; a list: also calls to those tools only.
    "tools": {
        "anyof": [
            {"type": "boolean"},
            {"type": "string", "allowed": ["text", "always"]},
            {"type": "list", "minlength": 1, "schema": {"type": "string", "empty": False}},
        ]
    },
    "semantic": {
        "type": "dict",
        "schema": {
            "model": {"type": "string", "required": True, "empty": False},  # an embeddings model
            "similarity": {"type": "float", "min": 0.5, "max": 1.0},
            "input": {"type": "string", "allowed": ["last_user", "conversation"]},
            **SEMANTIC_CHECKS,
        },
    },
}

HEDGE: dict[str, Any] = {
    "after": {**DURATION, "required": True},
    "max": {"type": "integer", "min": 1, "max": 4},
}

# Deferrable lines (batch lines, jobs) through the providers' batch APIs (issue 20).
BATCH_MODES = ("provider", "allowed")
BATCH: dict[str, Any] = {
    "mode": {"type": "string", "allowed": list(BATCH_MODES)},
    "max_lines": {"type": "integer", "min": 1, "max": 50000},  # a provider batch's size
    "max_wait": DURATION,  # the longest a line waits for its group to fill
    "unfinished": {"type": "string", "allowed": ["resubmit", "sync", "fail"]},
}

# Model selection (issue 18): tiers chosen before the call, cascades verified after it.
CASCADE: dict[str, Any] = {
    "schema": {"type": "boolean"},  # the route's output schema
    "finish": {"type": "boolean"},  # not cut off (finish_reason length)
    "empty": {"type": "boolean"},
    # true: the built-in refusal patterns; a list: these regular expressions instead
    "refusal": {"type": ["boolean", "list"], "schema": {"type": "string", "empty": False}},
    "min_logprob": {"type": "number", "max": 0},  # mean token log-probability
    "stream": {"type": "string", "allowed": ["buffer", "passthrough"]},
}
# on a tier: its own checks, or `false` for none
MAYBE_CASCADE: dict[str, Any] = {
    "anyof": [{"type": "boolean", "allowed": [False]}, {"type": "dict", "schema": CASCADE}]
}
TIER_RULE: dict[str, Any] = {
    "tier": {"type": "string", "required": True, "empty": False},
    "min_input_tokens": {"type": "integer", "min": 0},
    "max_input_tokens": {"type": "integer", "min": 0},
    "min_turns": {"type": "integer", "min": 0},
    "max_turns": {"type": "integer", "min": 0},
    "tools": {"type": "boolean"},
    "images": {"type": "boolean"},
    "response_format": {"type": "boolean"},
    "keywords": {"type": "list", "minlength": 1, "schema": {"type": "string", "empty": False}},
    "regex": {"type": "string", "empty": False},
}
SELECT: dict[str, Any] = {
    "tiers": {
        "type": "dict",
        "required": True,
        "minlength": 1,
        "keysrules": {"type": "string", "regex": r"[A-Za-z0-9][A-Za-z0-9._-]*"},
        "valuesrules": {
            "type": "dict",
            "schema": {
                "targets": {"type": "list", "required": True, "minlength": 1, "schema": TARGET},
                "cascade": MAYBE_CASCADE,
            },
        },
    },
    "default": {"type": "string", "empty": False},  # default: the top tier
    "rules": {"type": "list", "schema": {"type": "dict", "schema": TIER_RULE}},
    "classifier": {
        "type": "dict",
        "schema": {
            "examples": {"type": "string", "required": True, "regex": r".+\.jsonl"},
            "model": {"type": "string", "required": True, "empty": False},  # embeddings
            "k": {"type": "integer", "min": 1, "max": 50},
            "margin": {"type": "float", "min": 0.0, "max": 1.0},
        },
    },
    "sticky": DURATION,
}

# Shadow trials (sidecar/shadow): after the app's answer has gone out, a sampled copy of the
# request goes to each candidate model, and the two answers are compared.
SHADOW: dict[str, Any] = {
    "candidates": {
        "type": "list",
        "required": True,
        "minlength": 1,
        "schema": {"type": "string", "empty": False},
    },
    "sample": {"type": "number", "min": 0.0, "max": 1.0},  # share of answers copied
    "max_usd_per_day": {"type": "number", "required": True, "min": 0},  # all replicas
    "max_concurrent": {"type": "integer", "min": 1, "max": 64},  # per process
    "timeout": DURATION,  # per candidate call
    "compare": {
        "type": "dict",
        "schema": {
            "embedding": {"type": "string", "empty": False},  # semantic similarity with it
            "similarity": {"type": "float", "min": 0.5, "max": 1.0},  # agreement from here
        },
    },
}

ROUTE: dict[str, Any] = {
    "match": {"type": "dict", "schema": MATCH},
    # one of the two: targets tried in order, or tiers chosen per request
    "targets": {
        "type": "list",
        "required": True,
        "excludes": "select",
        "minlength": 1,
        "schema": TARGET,
    },
    "retry": {"type": "dict", "schema": RETRY},
    "timeout": DURATION,
    "first_token_timeout": DURATION,
    "hedge": {"type": "dict", "schema": HEDGE},
    "output": {"type": "dict", "schema": OUTPUT},
    "cache": {"type": "string", "empty": False},  # a `cache` entry's name
    "baseline": {"type": "string", "empty": False},  # a model: what savings are measured against
    # `provider` | `allowed`, or {mode, max_lines, max_wait, unfinished}
    "batch": {
        "anyof": [
            {"type": "string", "allowed": list(BATCH_MODES)},
            {"type": "dict", "schema": BATCH},
        ]
    },
    "prompt_cache": PROMPT_CACHE_ROUTE,
    "prompt": {"type": "dict", "schema": PROMPT},
    "max_output_tokens": MAX_OUTPUT,
    "select": {"type": "dict", "required": True, "excludes": "targets", "schema": SELECT},
    "cascade": {"type": "dict", "schema": CASCADE},
    "shadow": {"type": "dict", "schema": SHADOW},
}


# What limits and budgets can be per. The answering model is known only after dispatch,
# so it is a usage dimension but not an admission scope.
SCOPES = ("user", "team", "route", "key", "global")
# `shadow`: a route's shadow trial spend (sidecar/shadow), apart from the app's.
USAGE_SCOPES = ("global", "user", "team", "route", "model", "key", "shadow")
WINDOWS = ("hour", "day", "week", "month", "total")

STATE: dict[str, Any] = {
    "backend": {"type": "string", "allowed": ["memory", "sqlite", "redis"]},
    "path": {"type": "string", "empty": False},  # sqlite file
    "url": {"type": "string", "regex": r"rediss?://.+"},  # redis
    "on_error": {"type": "string", "allowed": ["open", "closed"]},
    "flush_interval": DURATION,
}

QUEUE: dict[str, Any] = {
    "max_wait": DURATION,
    "max_size": {"type": "integer", "min": 0},
}

LIMIT: dict[str, Any] = {
    "scope": {"type": "string", "required": True, "allowed": list(SCOPES)},
    "values": NAMES,  # only these scope values; default: every value, each on its own
    "routes": NAMES,  # only requests on these routes; default: all
    "requests_per_minute": {"type": "number", "min": 0.001},
    "tokens_per_minute": {"type": "number", "min": 1},
    "max_concurrent": {"type": "integer", "min": 1},
    "queue": {"type": "dict", "schema": QUEUE},
}

BUDGET: dict[str, Any] = {
    "scope": {"type": "string", "required": True, "allowed": list(SCOPES)},
    "values": NAMES,
    "routes": NAMES,
    "limit_usd": {"type": "number", "required": True, "min": 0},
    "window": {"type": "string", "required": True, "allowed": list(WINDOWS)},
    "on_exceed": {"type": "string", "allowed": ["reject", "downgrade", "alert"]},
    "downgrade_to": {"type": "string", "empty": False},
    "warn_at": {"type": "number", "min": 0.01, "max": 1.0},
}


TELEMETRY: dict[str, Any] = {
    "capture_content": {"type": "boolean"},
    "identity_in_spans": {"type": "boolean"},
    "user_attribute": {"type": "boolean"},
    "max_users": {"type": "integer", "min": 1, "max": 10000},
}

# What quality metrics look for (pipeline/judge.py), and app feedback (api/feedback.py).
QUALITY: dict[str, Any] = {
    "refusals": {"type": "list", "schema": {"type": "string", "empty": False}},  # regexes
    "feedback": {
        "type": "dict",
        "schema": {
            "ttl": DURATION,  # how long an answer takes feedback; 0s: no index, no feedback
            "labels": {"type": "list", "schema": {"type": "string", "empty": False}},
        },
    },
}


# Async jobs and batches (sidecar/jobs): the queue, its workers and webhooks.
JOBS: dict[str, Any] = {
    "backend": {"type": "string", "allowed": ["sqlite", "redis"]},
    "path": {"type": "string", "empty": False},  # sqlite file, relative to --state-dir
    "url": {"type": "string", "regex": r"rediss?://.+"},  # redis; default state.url
    "workers": {"type": "integer", "min": 0, "max": 256},  # in this process
    "max_attempts": {"type": "integer", "min": 1, "max": 100},
    "retry_backoff": DURATION,
    "visibility_timeout": DURATION,
    "poll_interval": DURATION,
    "webhook_allow": {"type": "list", "schema": {"type": "string", "empty": False}},
    "webhook_secret_env": {"type": "string", "regex": r"[A-Za-z_][A-Za-z0-9_]*"},
    "webhook_attempts": {"type": "integer", "min": 1, "max": 20},
    "retention": DURATION,  # how long finished jobs stay readable; 0s keeps them
    "max_file_bytes": {"type": "integer", "min": 1},  # largest upload to /v1/files
    "batch_poll": DURATION,  # how often a provider batch is polled at first
    "batch_poll_max": DURATION,  # ... backing off to this while nothing changes
}


def _named(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "dict",
        "nullable": True,  # a section whose entries are all commented out
        "keysrules": {"type": "string", "regex": r"[A-Za-z0-9][A-Za-z0-9._:/@-]*"},
        "valuesrules": {"type": "dict", "schema": entry},
    }


POLICY_FILE: dict[str, Any] = {
    "providers": _named(PROVIDER),
    "models": _named(MODEL),
    "routes": _named(ROUTE),
    "limits": _named(LIMIT),
    # JSON Schema (draft 2020-12) documents, checked with jsonschema at compile time.
    "schemas": {
        "type": "dict",
        "nullable": True,
        "keysrules": {"type": "string", "regex": r"[A-Za-z0-9][A-Za-z0-9._:/@-]*"},
        "valuesrules": {"type": "dict"},
    },
    "budgets": _named(BUDGET),
    "cache": _named(CACHE),
    "state": {"type": "dict", "schema": STATE},
    "telemetry": {"type": "dict", "schema": TELEMETRY},
    "jobs": {"type": "dict", "nullable": True, "schema": JOBS},  # `jobs:` alone: defaults
    "quality": {"type": "dict", "schema": QUALITY},
}

# Named sections merge across files by entry name; the others may appear in one file only.
SECTIONS = ("providers", "models", "routes", "limits", "budgets", "schemas", "cache")
SINGLE_SECTIONS = ("state", "telemetry", "jobs", "quality")


class _Validator(cerberus.Validator):  # type: ignore[misc]
    def _check_with_duration(self, field: str, value: Any) -> None:
        try:
            parse_duration(value)
        except ValueError as exc:
            self._error(field, str(exc))

    def _check_with_url(self, field: str, value: Any) -> None:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            self._error(field, f"'{value}' is not an http(s) URL")


_MESSAGES = BasicErrorHandler()


def structure_errors(data: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    """Each structural problem as (path in the document, message)."""
    validator = _Validator(POLICY_FILE)  # not reentrant: one per call, reloads may overlap
    if validator.validate(data):
        return []
    return sorted(
        (
            (tuple(e.document_path), _message(e))
            for e in _leaves(validator._errors)
            if not _excused(e, data)
        ),
        key=lambda pm: [str(p) for p in pm[0]],
    )


def _excused(error: ValidationError, data: dict[str, Any]) -> bool:
    """A key `required` unless another one is there (`excludes`), when the other is there
    but wrong: its own error says what is wrong, the first would only mislead."""
    if error.code != 0x02:
        return False
    parent: Any = data
    for part in error.document_path[:-1]:
        parent = parent.get(part) if isinstance(parent, dict) else None
    other = _EXCLUSIVE.get(error.field)
    return isinstance(parent, dict) and other in parent


_EXCLUSIVE = {"targets": "select", "select": "targets"}


def _leaves(errors: list[ValidationError]) -> Iterator[ValidationError]:
    for error in errors:
        if error.child_errors and not error.is_logic_error:
            yield from _leaves(error.child_errors)
        else:
            yield error


def _message(error: ValidationError) -> str:
    path = ".".join(str(p) for p in error.document_path)
    if error.code == 0x03:  # unknown field
        return f"unknown key '{error.field}' at {path}"
    if error.code == 0x02:  # required field
        return f"'{path}' is required"
    text = (
        error.info[0]
        if error.code == 0x00 and error.info
        else _MESSAGES._format_message(error.field, error)
    )
    return f"{path}: {text}"
