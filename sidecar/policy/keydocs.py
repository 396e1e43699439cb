"""What each policy key means: a description, its default and an example, keyed by dotted path.

Kept apart from `schema` (the structure) so the words can change without touching the rules.
Paths are those of `sidecar.reference.keys`: `<name>` stands for an entry's name, `[]` for a
list item. A block used in two places (a circuit breaker on providers and on models, a retry
policy on routes and on targets, a route's targets and cascade and a tier's) is described
once and reached through `SAME_AS`; an entry of its own wins. The JSON
Schema (`llm-sidecar schema`) and the policy reference page (docs/reference/policy.md) read
these; a test fails when a key has no entry here, so a new key is documented with its rule.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class KeyDoc(NamedTuple):
    description: str
    default: str | None = None  # as a reader would write it; None: no default (or required)
    example: Any = None  # a value for this key, checked against the JSON Schema by a test


# Where a block repeats, its keys are described at the first path.
SAME_AS = {
    "models.<name>.circuit": "providers.<name>.circuit",
    "routes.<name>.targets[].retry": "routes.<name>.retry",
    "routes.<name>.select.tiers.<name>.targets": "routes.<name>.targets",
    "routes.<name>.select.tiers.<name>.cascade": "routes.<name>.cascade",
}

D = KeyDoc
KEYS: dict[str, KeyDoc] = {
    # providers
    "providers": D(
        "Where requests go: one entry per upstream, with its wire format and key.",
        example={"openai": {"type": "openai", "api_key": "${OPENAI_API_KEY}"}},
    ),
    "providers.<name>.type": D(
        "The wire format: `openai` (any OpenAI-compatible server), `anthropic`, or `mock` "
        "(answers in-process, for tests and the demo).",
        example="openai",
    ),
    "providers.<name>.base_url": D(
        "The API's base URL.",
        "https://api.openai.com/v1 (openai), https://api.anthropic.com (anthropic)",
        "http://127.0.0.1:8080/v1",
    ),
    "providers.<name>.api_key": D(
        "The provider key, usually `${NAME}` from the environment. Sent as `Authorization: "
        "Bearer` (openai) or `x-api-key` (anthropic); the app's own key is dropped.",
        example="${OPENAI_API_KEY}",
    ),
    "providers.<name>.timeout": D(
        "Per attempt: connect, answer, and the longest silence inside a stream.", "60s", "30s"
    ),
    "providers.<name>.headers": D(
        "Extra headers sent with every call.", example={"OpenAI-Organization": "org-123"}
    ),
    "providers.<name>.max_connections": D("Connection pool size.", "256", 256),
    "providers.<name>.anthropic_version": D(
        "The `anthropic-version` header.", "2023-06-01", "2023-06-01"
    ),
    "providers.<name>.max_tokens": D(
        "Anthropic requires `max_tokens`: used when a request has none.", "4096", 4096
    ),
    "providers.<name>.mock": D(
        "How a `mock` provider answers.", example={"reply": "fixed answer", "latency": "20ms"}
    ),
    "providers.<name>.mock.reply": D(
        "The fixed answer.", "Mock reply to: <last user message>", "fixed answer"
    ),
    "providers.<name>.mock.latency": D("Wait before each answer.", "0s", "20ms"),
    "providers.<name>.mock.chunk_delay": D("Wait between streamed words.", "0s", "10ms"),
    "providers.<name>.mock.embedding_dims": D(
        "Size of the deterministic unit vectors made from the input's hash.", "16", 16
    ),
    "providers.<name>.max_concurrency": D(
        "Calls in flight at most; the excess waits `concurrency_wait`, then moves to the "
        "route's next target (reason `busy`).",
        "no limit",
        64,
    ),
    "providers.<name>.concurrency_wait": D(
        "How long a call waits for a free slot under `max_concurrency`.", "100ms", "250ms"
    ),
    "providers.<name>.circuit": D(
        "The default circuit breaker of this provider's models (a model's own overrides it): "
        "open after `consecutive_failures` in a row, or when `failure_ratio` of at least "
        "`min_calls` calls in `window` failed; after `cooldown` one probe decides.",
        "no breaker",
        {"consecutive_failures": 5, "cooldown": "30s"},
    ),
    "providers.<name>.circuit.consecutive_failures": D(
        "Failures in a row that open the breaker.", "5 (none when failure_ratio is set)", 5
    ),
    "providers.<name>.circuit.failure_ratio": D(
        "Share of failed calls in `window` that opens the breaker.", example=0.5
    ),
    "providers.<name>.circuit.min_calls": D(
        "Calls in `window` needed before `failure_ratio` applies.", "10", 10
    ),
    "providers.<name>.circuit.window": D("The window `failure_ratio` looks at.", "30s", "30s"),
    "providers.<name>.circuit.cooldown": D(
        "How long an open breaker skips the target before one probe goes through.", "30s", "20s"
    ),
    "providers.<name>.structured_output": D(
        "How output schemas are sent to this provider for native enforcement.",
        "json_schema (openai), tool (anthropic), none (mock)",
        "json_object",
    ),
    "providers.<name>.prompt_cache_key": D(
        "Send OpenAI's `prompt_cache_key` (one per conversation and route) unless the app "
        "sent one.",
        "true for api.openai.com, else false",
        False,
    ),
    # models
    "models": D(
        "The models routes can target: provider, upstream name, price per 1M tokens.",
        example={"gpt-4o-mini": {"provider": "openai", "price": {"input": 0.15, "output": 0.6}}},
    ),
    "models.<name>.provider": D("The `providers` entry that serves it.", example="openai"),
    "models.<name>.name": D(
        "The provider's name for the model.", "the entry's name", "gpt-4o-mini-2024-07-18"
    ),
    "models.<name>.price": D(
        "USD per 1M tokens; cost, budgets and the savings ledger use it.",
        "0 (free)",
        {"input": 0.15, "output": 0.6, "cached_input": 0.075},
    ),
    "models.<name>.price.input": D("Input tokens.", "0", 0.15),
    "models.<name>.price.output": D("Output tokens.", "0", 0.6),
    "models.<name>.price.cached_input": D(
        "Input read from the provider's prompt cache.", "input", 0.075
    ),
    "models.<name>.price.cache_write": D(
        "Input written to the provider's prompt cache.", "input", 3.75
    ),
    "models.<name>.price.cache_write_1h": D(
        "Input written to Anthropic's hour-long cache.", "input", 6
    ),
    "models.<name>.price.batch": D(
        "Answers through the provider's batch API: a share of the prices above (0.5: half), "
        "or the provider's own batch prices.",
        "1 (list price)",
        0.5,
    ),
    "models.<name>.price.batch.input": D("Batch input tokens.", example=0.075),
    "models.<name>.price.batch.output": D("Batch output tokens.", example=0.3),
    "models.<name>.price.batch.cached_input": D(
        "Batch input read from the cache.", "input", 0.0375
    ),
    "models.<name>.price.batch.cache_write": D("Batch input written to the cache.", "input", 0.1),
    "models.<name>.embeddings": D(
        "Micro-batching: concurrent `/v1/embeddings` calls (and semantic cache lookups) go "
        "upstream as one call.",
        "off",
        {"batch_window": "5ms", "max_inputs": 256},
    ),
    "models.<name>.embeddings.batch_window": D(
        "How long the first call of a group waits for others to join it.", "5ms", "2ms"
    ),
    "models.<name>.embeddings.max_inputs": D("Inputs per upstream call.", "256", 256),
    "models.<name>.prompt_cache": D(
        "Provider prompt caching for this model: `auto` or `off`, or a mapping.", "auto", "off"
    ),
    "models.<name>.prompt_cache.mode": D("`auto` or `off`.", "auto", "auto"),
    "models.<name>.prompt_cache.min_tokens": D(
        "The shortest prefix the model caches (where Anthropic breakpoints are placed).",
        "Anthropic's table (1,024 to 4,096)",
        4096,
    ),
    # routes
    "routes": D(
        "What an app asks for (its `model`) and the targets tried in order.",
        example={"chat": {"targets": ["gpt-4o-mini", "claude-haiku"]}},
    ),
    "routes.<name>.match": D(
        "Which requests the route serves; conditions on headers, user or team make it serve "
        "only the callers that meet all of them.",
        "model: the route's name",
        {"model": "chat", "team": ["research", "ml"]},
    ),
    "routes.<name>.match.model": D("The `model` the app sends.", "the route's name", "chat"),
    "routes.<name>.match.headers": D(
        "Request headers and the values (any of them) they must have.",
        example={"x-tenant": "acme"},
    ),
    "routes.<name>.match.user": D(
        "Callers (`x-sidecar-user`, else the body's `user`) the route serves.",
        example=["alice", "bob"],
    ),
    "routes.<name>.match.team": D(
        "Teams (`x-sidecar-team`) the route serves.", example=["research", "ml"]
    ),
    "routes.<name>.targets": D(
        "Models tried in order: a name, or `{model, retry}` for a target with its own retry.",
        example=["gpt-4o-mini", {"model": "claude-haiku", "retry": {"attempts": 3}}],
    ),
    "routes.<name>.targets[].model": D("The target's model.", example="claude-haiku"),
    "routes.<name>.retry": D(
        "Retries on the same target for the failure classes in `on`, after a backoff.",
        "attempts 1",
        {"attempts": 2, "backoff": "250ms"},
    ),
    "routes.<name>.retry.attempts": D("Tries per target, the first included.", "1", 2),
    "routes.<name>.retry.backoff": D(
        "The pause before the second try, doubling per retry: a duration, or "
        "`{base, max, jitter}`. A longer `Retry-After` from the provider wins when it fits "
        "the deadline.",
        "250ms",
        {"base": "250ms", "max": "5s", "jitter": True},
    ),
    "routes.<name>.retry.backoff.base": D("The first pause.", "250ms", "250ms"),
    "routes.<name>.retry.backoff.max": D("The longest pause.", "5s", "5s"),
    "routes.<name>.retry.backoff.jitter": D(
        "Wait between half and all of the pause, so retries spread out.", "true", True
    ),
    "routes.<name>.retry.on": D(
        "Failure classes retried on the same target.",
        "[connect, timeout, 5xx, '429', overloaded]",
        ["connect", "timeout", "5xx"],
    ),
    "routes.<name>.timeout": D(
        "One deadline for the whole request, all attempts included.", "120s", "20s"
    ),
    "routes.<name>.first_token_timeout": D(
        "Streams: how long one attempt may take to send its first event.", "none", "3s"
    ),
    "routes.<name>.hedge": D(
        "No first token (or answer) within `after`: race the next target too, up to `max` "
        "extra; the first answer wins.",
        "off",
        {"after": "2s", "max": 1},
    ),
    "routes.<name>.hedge.after": D("How long before a hedge starts.", example="2s"),
    "routes.<name>.hedge.max": D("Extra targets raced at most.", "1", 1),
    "routes.<name>.output": D(
        "Check every answer against a JSON Schema, and repair or replace what does not match.",
        "off",
        {"schema": "invoice", "on_invalid": {"retries": 2, "then": "default"}},
    ),
    "routes.<name>.output.schema": D(
        "A `schemas` entry, or `from_request`: the schema the client sent.", example="invoice"
    ),
    "routes.<name>.output.extract": D(
        "`strict`: the content must be JSON; `lenient`: also inside ```json fences or prose.",
        "strict",
        "lenient",
    ),
    "routes.<name>.output.on_invalid": D(
        "What an invalid answer gets.", "retries 1, then error", {"retries": 2, "then": "default"}
    ),
    "routes.<name>.output.on_invalid.retries": D(
        "Re-asks with a correction listing the problems.", "1", 2
    ),
    "routes.<name>.output.on_invalid.retry_target": D(
        "`same`, or `next`: send the correction to the next target.", "same", "next"
    ),
    "routes.<name>.output.on_invalid.then": D(
        "After the retries: `fallback` (the next targets), `default` (the policy's default) "
        "or `error` (422 `output_invalid`).",
        "error",
        "default",
    ),
    "routes.<name>.output.default": D(
        "The answer given with `then: default`; checked against the schema at reload.",
        example={"vendor": "unknown", "total": 0, "currency": "EUR"},
    ),
    "routes.<name>.output.enforce": D(
        "`both`: the provider enforces and the sidecar validates; `native`: trust the "
        "provider; `validate`: only the sidecar checks (`none` is the old name).",
        "both",
        "native",
    ),
    "routes.<name>.output.stream_mode": D(
        "`validate`: buffer a stream and check it before sending; `passthrough`: stream at "
        "once, verdict in the last chunk.",
        "validate",
        "passthrough",
    ),
    "routes.<name>.cache": D("A `cache` entry's name: the response cache.", "none", "answers"),
    "routes.<name>.baseline": D(
        "The model the savings ledger compares with.", "the dearest target", "claude-sonnet"
    ),
    "routes.<name>.batch": D(
        "Deferrable lines (batch lines and jobs) go through the providers' batch APIs: "
        "`provider`, `allowed` (only lines that ask), or a mapping.",
        "off",
        "provider",
    ),
    "routes.<name>.batch.mode": D(
        "`provider`: every deferrable line (`x-sidecar-batch: sync` opts out); `allowed`: "
        "only lines with `x-sidecar-batch: provider`.",
        "provider",
        "allowed",
    ),
    "routes.<name>.batch.max_lines": D(
        "A provider batch is submitted once its group holds this many lines.", "1000", 1000
    ),
    "routes.<name>.batch.max_wait": D("... or once its oldest line waited this long.", "1m", "1m"),
    "routes.<name>.batch.unfinished": D(
        "Lines a provider batch did not answer: `sync` (run as calls), `resubmit` (three "
        "batches in all, then fail) or `fail`.",
        "sync",
        "resubmit",
    ),
    "routes.<name>.prompt_cache": D(
        "Provider prompt caching on this route: `auto`, `off`, or `{mode, ttl}`.",
        "auto",
        {"mode": "auto", "ttl": "1h"},
    ),
    "routes.<name>.prompt_cache.mode": D("`auto` or `off`.", "auto", "off"),
    "routes.<name>.prompt_cache.ttl": D(
        "Anthropic's cache lifetime: `5m` or `1h` (writes priced at `cache_write_1h`).",
        "5m",
        "1h",
    ),
    "routes.<name>.prompt": D(
        "Trimming and normalisation before admission (opt-in: they change what the model sees).",
        "off",
        {"max_input_tokens": 30000},
    ),
    "routes.<name>.prompt.max_input_tokens": D(
        "Drop the oldest whole turns until the estimated input fits; 400 `prompt_too_long` "
        "when the system prompt and newest turn alone do not.",
        "no trimming",
        30000,
    ),
    "routes.<name>.prompt.strategy": D(
        "`drop_oldest`, or `keep_first`: the first turn goes last.", "drop_oldest", "keep_first"
    ),
    "routes.<name>.prompt.normalize": D(
        "`whitespace` (collapse runs outside code), `duplicate_system` (drop a repeated "
        "system message).",
        "[]",
        ["whitespace", "duplicate_system"],
    ),
    "routes.<name>.max_output_tokens": D(
        "Cap `max_tokens`: a number, or `{limit, mode}`; budget holds then use the cap.",
        "no cap",
        1024,
    ),
    "routes.<name>.max_output_tokens.limit": D("The cap in tokens.", example=1024),
    "routes.<name>.max_output_tokens.mode": D(
        "`cap`: also lower what the app asked; `default`: only fill in when it asked nothing.",
        "cap",
        "default",
    ),
    # model selection (routes.<name>.select, routes.<name>.cascade)
    "routes.<name>.select": D(
        "Tiers of targets, cheapest first, one chosen per request before the call (rules, "
        "then a classifier, else `default`); instead of `targets`: a route has one of the two.",
        "none: the route's targets",
        {"tiers": {"small": {"targets": ["gpt-4o-mini"]}, "large": {"targets": ["gpt-4o"]}}},
    ),
    "routes.<name>.select.tiers": D(
        "The tiers by name, cheapest first; each tier's targets are a fallback chain.",
        example={"small": {"targets": ["gpt-4o-mini"]}, "large": {"targets": ["gpt-4o"]}},
    ),
    "routes.<name>.select.tiers.<name>.cascade": D(
        "This tier's answer checks, overriding the route's `cascade`; `false`: none.",
        "the route's cascade (none on the top tier)",
        False,
    ),
    "routes.<name>.select.default": D(
        "The tier of a request no rule or classifier decides (unsure).", "the top tier", "large"
    ),
    "routes.<name>.select.rules": D(
        "Rules on the request's features, in order: the first that matches picks its tier.",
        "none",
        [{"tier": "large", "min_input_tokens": 8000}, {"tier": "small", "keywords": ["translate"]}],
    ),
    "routes.<name>.select.rules[].tier": D("The tier this rule picks.", example="large"),
    "routes.<name>.select.rules[].min_input_tokens": D(
        "At least this many estimated input tokens.", example=8000
    ),
    "routes.<name>.select.rules[].max_input_tokens": D(
        "At most this many estimated input tokens.", example=500
    ),
    "routes.<name>.select.rules[].min_turns": D("At least this many user messages.", example=12),
    "routes.<name>.select.rules[].max_turns": D("At most this many user messages.", example=1),
    "routes.<name>.select.rules[].tools": D("The request offers tools (or not).", example=True),
    "routes.<name>.select.rules[].images": D("The request carries images (or not).", example=True),
    "routes.<name>.select.rules[].response_format": D(
        "The request asks for a `response_format` other than text (or not).", example=True
    ),
    "routes.<name>.select.rules[].keywords": D(
        "Any of these whole words, in any case, in the last user message.",
        example=["translate", "yes or no"],
    ),
    "routes.<name>.select.rules[].regex": D(
        "A regular expression on the first 8 KiB of the last user message.",
        example="(?i)step[- ]by[- ]step|prove",
    ),
    "routes.<name>.select.classifier": D(
        "When no rule matched: the `k` nearest labelled examples vote, weighted by similarity.",
        "none",
        {"examples": "tiers.jsonl", "model": "embed-small"},
    ),
    "routes.<name>.select.classifier.examples": D(
        'A `*.jsonl` file of the policy folder: one `{"text", "tier"}` a line.',
        example="tiers.jsonl",
    ),
    "routes.<name>.select.classifier.model": D(
        "An embeddings model of `models`; its calls count against the `selection` lever.",
        example="embed-small",
    ),
    "routes.<name>.select.classifier.k": D("Nearest examples that vote.", "5", 7),
    "routes.<name>.select.classifier.margin": D(
        "How far the winner's share of the vote must lead, else the request is unsure.",
        "0.2",
        0.3,
    ),
    "routes.<name>.select.sticky": D(
        "A conversation stays on the highest tier it reached for this long (in the state store).",
        "off",
        "30m",
    ),
    "routes.<name>.cascade": D(
        "Checks on the answers of every tier but the top one: an answer that fails is never "
        "shown, the next tier up is asked.",
        "none",
        {"schema": True, "refusal": True, "min_logprob": -0.5},
    ),
    "routes.<name>.cascade.schema": D("The route's output schema, when it has one.", "true", False),
    "routes.<name>.cascade.finish": D("Not cut off: `finish_reason: length` fails.", "true", True),
    "routes.<name>.cascade.empty": D("Some content or a tool call.", "true", True),
    "routes.<name>.cascade.refusal": D(
        "The built-in refusal patterns (`true`), these regular expressions (a list), or off.",
        "true",
        ["(?i)^I can't"],
    ),
    "routes.<name>.cascade.min_logprob": D(
        "The answer's mean token log-probability must reach this (asks the tier for "
        "`logprobs`; not for Anthropic targets).",
        "off",
        -0.5,
    ),
    "routes.<name>.cascade.stream": D(
        "`buffer`: check a stream before relaying it; `passthrough`: relay it unchecked.",
        "buffer",
        "passthrough",
    ),
    "routes.<name>.shadow": D(
        "A shadow trial: after an answer went out, a sample of the route's requests is sent "
        "again to each candidate and the answers compared, at no cost to the app's latency.",
        "off",
        {"candidates": ["gpt-4o-mini"], "max_usd_per_day": 5},
    ),
    "routes.<name>.shadow.candidates": D(
        "Models of `models` to try (not the route's first target).",
        example=["gpt-4o-mini", "claude-haiku"],
    ),
    "routes.<name>.shadow.sample": D(
        "Share of answered requests copied to each candidate.", "0.05", 0.1
    ),
    "routes.<name>.shadow.max_usd_per_day": D(
        "The trial's spend per UTC day, all replicas together; then samples are skipped.",
        example=5,
    ),
    "routes.<name>.shadow.max_concurrent": D(
        "Shadow calls of this route in flight per process; more samples are skipped.", "4", 8
    ),
    "routes.<name>.shadow.timeout": D("Per candidate call.", "the route's timeout", "30s"),
    "routes.<name>.shadow.compare": D(
        "Semantic agreement: answers whose embeddings are close enough agree.",
        "exact and JSON-equal only",
        {"embedding": "text-embedding-3-small", "similarity": 0.9},
    ),
    "routes.<name>.shadow.compare.embedding": D(
        "The embeddings model of `models` to compare with (its calls are trial spend).",
        example="text-embedding-3-small",
    ),
    "routes.<name>.shadow.compare.similarity": D(
        "Cosine similarity from which two answers agree.", "0.9", 0.92
    ),
    # limits
    "limits": D(
        "Rate, token and concurrency limits per user, team, route, key or globally.",
        example={"per-user": {"scope": "user", "requests_per_minute": 60}},
    ),
    "limits.<name>.scope": D(
        "What the limit is counted per: each `user`, `team`, `route` or `key` value on its "
        "own, or `global`.",
        example="user",
    ),
    "limits.<name>.values": D(
        "Only these scope values.", "every value, each on its own", ["alice", "bob"]
    ),
    "limits.<name>.routes": D("Only requests on these routes.", "all", ["chat"]),
    "limits.<name>.requests_per_minute": D("Requests per minute (GCRA).", example=60),
    "limits.<name>.tokens_per_minute": D(
        "Tokens per minute: input estimated before the call, corrected with real usage after.",
        example=100000,
    ),
    "limits.<name>.max_concurrent": D("Requests in flight at most.", example=4),
    "limits.<name>.queue": D(
        "Over the limit, wait in line (FIFO by priority) instead of a 429.",
        "no queue",
        {"max_wait": "5s", "max_size": 100},
    ),
    "limits.<name>.queue.max_wait": D("The longest wait in line.", "0s", "5s"),
    "limits.<name>.queue.max_size": D("Requests in line at most.", "1000 with max_wait", 100),
    "schemas": D(
        "JSON Schema (draft 2020-12) documents that routes check answers against.",
        example={"answer": {"type": "object", "required": ["text"]}},
    ),
    # budgets
    "budgets": D(
        "Spend limits in USD per window: reject, downgrade or alert.",
        example={"daily": {"scope": "team", "limit_usd": 50, "window": "day"}},
    ),
    "budgets.<name>.scope": D("What the budget is counted per (as for limits).", example="team"),
    "budgets.<name>.values": D(
        "Only these scope values.", "every value, each on its own", ["research"]
    ),
    "budgets.<name>.routes": D("Only requests on these routes.", "all", ["chat"]),
    "budgets.<name>.limit_usd": D("The spend limit in USD per window.", example=50),
    "budgets.<name>.window": D(
        "`hour`, `day`, `week`, `month` (UTC calendar) or `total`.", example="day"
    ),
    "budgets.<name>.on_exceed": D(
        "`reject` (429 `budget_exceeded`, enforced by reservation), `downgrade` (answer "
        "with `downgrade_to`) or `alert` (log a warning once per window).",
        "reject",
        "downgrade",
    ),
    "budgets.<name>.downgrade_to": D(
        "The cheaper model used once the limit is reached (`on_exceed: downgrade`).",
        example="gpt-4o-mini",
    ),
    "budgets.<name>.warn_at": D(
        "Log a warning once per window at this share of the limit.", "none", 0.8
    ),
    # cache
    "cache": D(
        "Response caches (exact or semantic) that routes use.",
        example={"answers": {"mode": "exact", "ttl": "1h"}},
    ),
    "cache.<name>.mode": D(
        "`exact` (a hash of the request) or `semantic` (also the nearest similar prompt).",
        "exact",
        "semantic",
    ),
    "cache.<name>.ttl": D("How long an answer is kept.", "1h", "10m"),
    "cache.<name>.max_entries": D("Memory store: entries kept at most.", "10000", 10000),
    "cache.<name>.max_bytes": D(
        "Memory store: bytes of answers kept at most (instead of entries).", "none", 104857600
    ),
    "cache.<name>.store": D(
        "`memory` (this sidecar) or `redis` (every sidecar).", "memory", "redis"
    ),
    "cache.<name>.url": D("The Redis URL of `store: redis`.", "state.url", "redis://redis:6379/1"),
    "cache.<name>.scope": D(
        "Whose answers may be shared: `user`, `team` or `global`.", "user", "team"
    ),
    "cache.<name>.any_temperature": D(
        "Any temperature is cacheable (the key holds it); `false`: `temperature: 0` only.",
        "true",
        False,
    ),
    "cache.<name>.tools": D(
        "Requests that offer tools: `text` stores answers without tool calls, `always` (or "
        "`true`) every answer, a list of tool names also calls to those tools, `false` never.",
        "text",
        ["lookup_order"],
    ),
    "cache.<name>.semantic": D(
        "The semantic lookup.", example={"model": "embed-small", "similarity": 0.95}
    ),
    "cache.<name>.semantic.model": D(
        "An embeddings model from `models`; its cost is the request's.", example="embed-small"
    ),
    "cache.<name>.semantic.similarity": D("Cosine similarity for a hit.", "0.95", 0.97),
    "cache.<name>.semantic.input": D(
        "What is embedded: `last_user` or `conversation`.", "last_user", "conversation"
    ),
    "cache.<name>.semantic.guards": D(
        "Specific tokens a semantic hit must share with its question, compared in order: "
        "`numbers`, `amounts`, `dates`, `ids`, `quoted`, `emails`, `urls`, and `names`.",
        "every kind but names",
        ["numbers", "amounts", "dates", "ids", "quoted", "emails", "urls", "names"],
    ),
    "cache.<name>.semantic.verify_sample": D(
        "Share of semantic hits also asked upstream, off the app's path, to measure agreement.",
        "0 (off)",
        0.02,
    ),
    "cache.<name>.semantic.min_agreement": D(
        "The agreement of verified hits below which `on_low_agreement` acts.", "0.9", 0.95
    ),
    "cache.<name>.semantic.verify_window": D(
        "How many of the last verified hits the agreement is taken over.", "100", 200
    ),
    "cache.<name>.semantic.on_low_agreement": D(
        "`tighten`: raise the similarity hits need; `alert`: only warn.", "tighten", "alert"
    ),
    # state
    "state": D(
        "Where limits and spend are kept: memory, sqlite or redis.",
        example={"backend": "redis", "url": "${REDIS_URL}"},
    ),
    "state.backend": D(
        "`memory` (forgets on restart), `sqlite` (one file, written behind) or `redis` "
        "(shared by every replica).",
        "sqlite (redis when url is set)",
        "redis",
    ),
    "state.path": D(
        "The sqlite file, relative to `--state-dir`.", "llm-sidecar-state.db", "state.db"
    ),
    "state.url": D("The Redis URL (`redis://[:password@]host:port/db`).", example="${REDIS_URL}"),
    "state.on_error": D(
        "The store is down: admit and log (`open`) or answer 503 (`closed`).", "open", "closed"
    ),
    "state.flush_interval": D("sqlite: how often spend is written to the file.", "1s", "1s"),
    # telemetry
    "telemetry": D("What spans and metrics carry.", example={"capture_content": False}),
    "telemetry.capture_content": D(
        "Prompts and answers on spans (off: they may be personal).", "false", True
    ),
    "telemetry.identity_in_spans": D("User and team as span attributes.", "true", False),
    "telemetry.user_attribute": D(
        "The user as a metric attribute, at most `max_users` of them.", "false", True
    ),
    "telemetry.max_users": D(
        "Distinct users per process in metrics; the rest count as `(other)`.", "100", 100
    ),
    # quality
    "quality": D(
        "What quality signals look for, and the app's feedback.",
        example={"feedback": {"ttl": "1h"}},
    ),
    "quality.refusals": D(
        "Regular expressions matched without case in an answer's first 300 characters: a "
        "refusal signal; they replace the built-in English patterns.",
        "built-in English patterns",
        ["^\\W*I (can't|cannot) (help|assist)"],
    ),
    "quality.feedback": D(
        "App feedback (`POST /v1/feedback`) on answers.", "ttl 1h", {"ttl": "1h"}
    ),
    "quality.feedback.ttl": D(
        "How long an answer takes feedback (`0s`: no feedback at all).", "1h", "2h"
    ),
    "quality.feedback.labels": D(
        "Feedback labels kept as a metric attribute; others count as `(other)`.",
        "none",
        ["wrong", "rude"],
    ),
    # jobs
    "jobs": D(
        "Async jobs and batches: the durable queue, its workers and webhooks (`jobs: {}` "
        "takes every default; without the section jobs are off).",
        "off",
        {"workers": 2},
    ),
    "jobs.backend": D(
        "`sqlite` (a file under --state-dir) or `redis` (Streams, for workers in other pods).",
        "sqlite",
        "redis",
    ),
    "jobs.path": D("The sqlite file, relative to `--state-dir`.", "llm-sidecar-jobs.db", "jobs.db"),
    "jobs.url": D("The Redis URL of `backend: redis`.", "state.url", "redis://redis:6379/0"),
    "jobs.workers": D("Jobs run at once in this process (0: accept jobs, run none).", "2", 4),
    "jobs.max_attempts": D("Attempts before a job is dead.", "3", 5),
    "jobs.retry_backoff": D(
        "Pause before the second attempt, doubling up to 5m, with jitter.", "1s", "2s"
    ),
    "jobs.visibility_timeout": D(
        "A claim not renewed this long is taken over by another worker.", "5m", "10m"
    ),
    "jobs.poll_interval": D("How often idle workers look for work.", "250ms", "1s"),
    "jobs.webhook_allow": D(
        "Hosts (patterns, optionally `host:port`) a `callback_url` may name.",
        "none: webhooks refused",
        ["hooks.example.com", "*.internal.example.com"],
    ),
    "jobs.webhook_secret_env": D(
        "The environment variable holding the HMAC key webhooks are signed with (required "
        "with `webhook_allow`).",
        example="JOBS_WEBHOOK_SECRET",
    ),
    "jobs.webhook_attempts": D("Deliveries tried per webhook.", "5", 5),
    "jobs.retention": D("How long finished jobs stay readable (`0s`: kept).", "168h", "72h"),
    "jobs.max_file_bytes": D("The largest upload to `/v1/files`.", "33554432 (32 MiB)", 209715200),
    "jobs.batch_poll": D(
        "Provider batches: the first poll, doubling while nothing changes.", "30s", "1m"
    ),
    "jobs.batch_poll_max": D("... up to this.", "10m", "10m"),
}


def key_doc(path: str) -> KeyDoc | None:
    """The description of `path`: its own, else through `SAME_AS` for a repeated block (an
    alias of an alias too)."""
    while path not in KEYS:
        for alias, original in SAME_AS.items():
            if path == alias or path.startswith((alias + ".", alias + "[]")):
                path = original + path[len(alias) :]
                break
        else:
            return None
    return KEYS[path]
