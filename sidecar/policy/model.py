"""The compiled policy: frozen, slotted, fully resolved, safe to share between requests.

Every lookup a request makes is a dict access or a walk over a handful of conditions
prepared here; nothing on the request path parses a duration or scans a list of routes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sidecar.policy.guards import DEFAULT_GUARDS, Guards
from sidecar.policy.native import NativeSchema
from sidecar.policy.secret import Secret


@dataclass(frozen=True, slots=True)
class MockSettings:
    reply: str | None = None
    latency: float = 0.0
    chunk_delay: float = 0.0
    embedding_dims: int = 16


@dataclass(frozen=True, slots=True)
class Circuit:
    """When to stop calling a target for a while. Failures are the failover classes."""

    consecutive_failures: int | None = 5
    failure_ratio: float | None = None
    min_calls: int = 10
    window: float = 30.0
    cooldown: float = 30.0


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    name: str
    type: str
    base_url: str
    api_key: Secret = field(default_factory=lambda: Secret(""))
    timeout: float = 60.0
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # may hold keys
    max_connections: int = 256
    anthropic_version: str = "2023-06-01"
    max_tokens: int = 4096  # Anthropic requires max_tokens: used when the request has none
    max_concurrency: int | None = None  # calls in flight; excess waits `concurrency_wait`
    concurrency_wait: float = 0.1
    circuit: Circuit | None = None  # the default for this provider's models
    structured_output: str = "none"  # how it is asked for schema-shaped output (a dialect)
    mock: MockSettings = field(default_factory=MockSettings)
    prompt_cache_key: bool = False  # OpenAI-compatible: it takes `prompt_cache_key`


@dataclass(frozen=True, slots=True)
class Price:
    """USD per one million tokens. Cached reads and cache writes cost the input price
    unless the policy says otherwise."""

    input: float = 0.0
    output: float = 0.0
    cached_input: float | None = None  # input tokens read from the provider's prompt cache
    cache_write: float | None = None  # input tokens written to it (Anthropic: above input)
    cache_write_1h: float | None = None  # written to Anthropic's hour-long cache (else cache_write)
    batch: float = 1.0  # what a provider batch call costs, as a share of the normal price
    batch_prices: Price | None = None  # or the provider's own batch prices, per token kind

    @property
    def reference(self) -> float:
        """What "the dearest model" compares: input plus output price."""
        return self.input + self.output


@dataclass(frozen=True, slots=True)
class MicroBatch:
    """`embeddings:` on a model: concurrent calls within `window` share one upstream call."""

    window: float = 0.005
    max_inputs: int = 256


@dataclass(frozen=True, slots=True)
class Model:
    name: str  # the policy's name for it
    provider: str
    upstream: str  # the provider's name for it
    price: Price = field(default_factory=Price)
    circuit: Circuit | None = None
    embeddings: MicroBatch | None = None  # micro-batch its embeddings calls
    prompt_cache: bool = True  # `prompt_cache: off` on the model turns it off on every route
    cache_min_tokens: int = 1024  # the shortest prefix the provider caches (Anthropic)


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """`batch:` on a route: which of its deferrable lines (batch lines, jobs) go through
    the provider's batch API, grouped per target model, and what happens to lines a
    provider batch leaves unfinished (expired, failed, cancelled by the provider)."""

    mode: str = "provider"  # every line unless it asks `sync` | allowed: those asking `provider`
    max_lines: int = 1000  # a group is submitted once it holds this many lines
    max_wait: float = 60.0  # ... or once its oldest line waited this long
    unfinished: str = "sync"  # resubmit | sync (run as a call, at full price) | fail


@dataclass(frozen=True, slots=True)
class Condition:
    """One `match` condition: the caller's header/user/team must be one of `values`."""

    kind: str  # "header" | "user" | "team"
    key: str  # header name, lower-cased; "" for user and team
    values: frozenset[str]


RETRY_ON_DEFAULT = frozenset({"connect", "timeout", "5xx", "429", "overloaded"})


@dataclass(frozen=True, slots=True)
class Retry:
    attempts: int = 1  # per target, the first try included
    backoff: float = 0.25  # before the second try; doubles each time, up to `backoff_max`
    backoff_max: float = 5.0
    jitter: bool = True  # wait between half and all of the backoff, so retries spread out
    on: frozenset[str] = RETRY_ON_DEFAULT  # failure classes retried on the same target

    def pause(self, retry: int, draw: float) -> float:
        """Seconds before retry number `retry` (1-based); `draw` is uniform in [0, 1)."""
        pause = min(self.backoff_max, self.backoff * 2 ** (retry - 1))
        return pause * (0.5 + draw / 2) if self.jitter else pause


@dataclass(frozen=True, slots=True)
class PromptCache:
    """How one route's requests ask one target's provider to cache their prompt prefix
    (providers/prompt_cache.py). A target without one asks nothing."""

    route: str  # part of an OpenAI `prompt_cache_key`
    min_tokens: int = 1024  # Anthropic: a breakpoint on a shorter prefix is not placed
    ttl: str | None = None  # Anthropic: "1h" for the hour-long cache; None: 5 minutes
    key: bool = False  # OpenAI-compatible: send a stable `prompt_cache_key`


@dataclass(frozen=True, slots=True)
class PromptPolicy:
    """A route's prompt economy (pipeline/prepare.py): what the providers are sent."""

    max_input_tokens: int | None = None  # trim the oldest turns to fit (estimated tokens)
    keep_first: bool = False  # strategy keep_first: the first turn goes last
    whitespace: bool = False  # collapse runs of whitespace outside code blocks
    duplicate_system: bool = False  # drop a system message equal to the one before it
    max_output_tokens: int | None = None
    output_mode: str = "cap"  # cap: also lower what the app asks above; default: fill in only


@dataclass(frozen=True, slots=True)
class Target:
    model: Model
    retry: Retry
    prompt_cache: PromptCache | None = None


@dataclass(frozen=True, slots=True)
class OutputPolicy:
    """How a route's answers are checked. `validator` is compiled at reload; None means
    `from_request` (the client's own schema, compiled per schema text and cached)."""

    schema_name: str
    schema: Mapping[str, Any] | None = field(repr=False)
    validator: Any = field(repr=False, compare=False)
    lenient: bool = False  # find the JSON inside fences or prose
    retries: int = 1
    retry_next: bool = False  # refined retries go to the next target instead of the same
    then: str = "error"  # fallback | default | error
    default: str | None = None  # the default object, as JSON text
    enforce: str = "both"  # native (the provider's decoding only) | validate | both
    native: NativeSchema | None = field(default=None, repr=False)  # None: from_request
    stream_validate: bool = True  # buffer streams and validate before release


@dataclass(frozen=True, slots=True)
class CachePolicy:
    name: str
    semantic: bool = False
    ttl: float = 3600.0
    max_entries: int = 10_000
    max_bytes: int | None = None
    store: str = "memory"
    url: str | None = None
    scope: str = "user"  # never one tenant's answer to another unless the policy says global
    any_temperature: bool = True
    embedding: Model | None = None
    similarity: float = 0.95
    whole_conversation: bool = False
    # Issues 23 and 24: which answers to tools are kept, what a semantic hit must share.
    tools: str = "text"  # never | text (answers without tool calls) | always
    replay_tools: frozenset[str] = frozenset()  # tool calls safe to replay, with `text`
    guards: Guards = DEFAULT_GUARDS
    verify: Verify | None = None


@dataclass(frozen=True, slots=True)
class Verify:
    """Sampled semantic hits are asked upstream too, after the answer went out."""

    sample: float  # share of semantic hits checked
    min_agreement: float = 0.9  # below this over `window` checks: warn (and tighten)
    window: int = 100
    tighten: bool = True  # raise the effective similarity above the disagreements


@dataclass(frozen=True, slots=True)
class Hedge:
    after: float  # start the next target if no first token by then
    max: int = 1  # extra targets raced at most


# -- model selection (issue 18): tiers chosen before the call, cascades verified after --


@dataclass(frozen=True, slots=True)
class Acceptance:
    """What a cascade step's answer must pass to be shown (pipeline/accept.py)."""

    schema: bool = True  # the route's output schema, when it has one
    finish: bool = True  # a finish reason other than `length`
    empty: bool = True  # some content or a tool call
    refusal: Any = field(default=None, repr=False, compare=False)  # compiled pattern or None
    refusal_patterns: tuple[str, ...] = ()  # as written, for diff and /status
    min_logprob: float | None = None  # mean token log-probability; asks for logprobs
    stream: str = "buffer"  # buffer (check, then relay) | passthrough (no escalation)


@dataclass(frozen=True, slots=True)
class Tier:
    name: str
    rank: int  # 0 = the cheapest; a higher tier is further up the ladder
    targets: tuple[Target, ...]
    accept: Acceptance | None = None  # checked before the next tier is spared


@dataclass(frozen=True, slots=True)
class TierRule:
    """Features of a request that pick a tier; every condition given must hold."""

    rank: int  # the tier it picks
    min_input_tokens: int | None = None
    max_input_tokens: int | None = None
    min_turns: int | None = None
    max_turns: int | None = None
    tools: bool | None = None
    images: bool | None = None
    response_format: bool | None = None
    # keywords and regex, compiled; each must be found in the last user message
    patterns: tuple[Any, ...] = field(default=(), repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class ClassifierSpec:
    """Labelled examples, embedded at reload (stores/classifiers.py). `key` names what the
    embeddings depend on (model, texts): the same key reuses vectors already computed."""

    route: str
    model: Model
    file: str  # in the policy folder
    texts: tuple[str, ...] = field(repr=False)
    labels: tuple[int, ...] = field(repr=False)  # tier ranks
    k: int = 5
    margin: float = 0.2  # the winner's share of the vote must beat the runner-up's by this
    key: str = ""


@dataclass(frozen=True, slots=True)
class Selection:
    tiers: tuple[Tier, ...]  # cheapest first
    default: int  # the rank of the tier an unsure request gets
    rules: tuple[TierRule, ...] = ()
    classifier: ClassifierSpec | None = None
    sticky: float | None = None  # seconds a conversation stays on the highest tier it reached
    by_name: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ShadowPolicy:
    """A route's shadow trial (sidecar/shadow): which candidates get a sampled copy of its
    requests once the app's answer is out, how many, and what they may spend."""

    candidates: tuple[Model, ...]
    max_usd_per_day: float  # shadow spend of this route per UTC day, across replicas
    sample: float = 0.05  # share of answered requests copied to every candidate
    max_concurrent: int = 4  # shadow calls of this route in flight per process; more: skipped
    timeout: float = 120.0  # per candidate call (default: the route's timeout)
    embedding: Model | None = None  # semantic agreement: the two answers' cosine similarity
    similarity: float = 0.9  # ...counts as agreement from here


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    model: str  # what the app puts in `model`
    conditions: tuple[Condition, ...]
    targets: tuple[Target, ...]
    timeout: float
    first_token_timeout: float | None = None  # streams: the wait for the first event
    hedge: Hedge | None = None
    output: OutputPolicy | None = None
    cache: CachePolicy | None = None
    implicit: bool = False  # a model addressed directly, with no route of its own
    # What the savings ledger compares with: `baseline:`, else the dearest target.
    baseline: Model | None = None
    batch: BatchPolicy | None = None  # deferrable lines may wait for a provider batch
    prompt: PromptPolicy | None = None  # None: sent as the app wrote it
    # Tiers, cheapest first (a `cascade` without `select`: one tier per target); `targets`
    # is then every tier's, in that order.
    select: Selection | None = None
    shadow: ShadowPolicy | None = None


@dataclass(frozen=True, slots=True)
class RouteSet:
    """The routes for one `model` value: conditional ones are disjoint, at most one default."""

    conditional: tuple[Route, ...]
    default: Route | None


DEFAULT_STATE_PATH = "llm-sidecar-state.db"


@dataclass(frozen=True, slots=True)
class StateConfig:
    backend: str = "sqlite"
    path: str = DEFAULT_STATE_PATH  # relative: under the sidecar's --state-dir
    url: str | None = None
    on_error: str = "open"  # a store that is down: admit anyway (open) or refuse (closed)
    flush_interval: float = 1.0


@dataclass(frozen=True, slots=True)
class Limit:
    name: str
    scope: str
    values: frozenset[str] | None
    requests_per_minute: float | None
    tokens_per_minute: float | None
    max_concurrent: int | None
    queue_max_wait: float
    queue_max_size: int


@dataclass(frozen=True, slots=True)
class Budget:
    name: str
    scope: str
    values: frozenset[str] | None
    limit_usd: float
    window: str
    on_exceed: str  # reject | downgrade | alert
    downgrade_to: Model | None
    warn_at: float | None


@dataclass(frozen=True, slots=True)
class Admission:
    """What applies to one route, resolved at compile time."""

    limits: tuple[Limit, ...] = ()
    budgets: tuple[Budget, ...] = ()


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    capture_content: bool = False  # prompts and answers on spans: off, they may be personal
    identity_in_spans: bool = True  # user and team as span attributes
    user_attribute: bool = False  # user as a metric attribute (bounded by max_users)
    max_users: int = 100


# Answers that decline the task, as models word it in English (case-insensitive, searched
# in an answer's first `REFUSAL_SPAN` characters); `quality.refusals` replaces them.
_A = "['\u2019]"  # either apostrophe
_NOT = rf"( can{_A}?t| cannot| won{_A}t| am unable| am not able|{_A}m unable|{_A}m not able)"
DEFAULT_REFUSALS = (
    rf"^\W*(I{_A}m|I am) (sorry|afraid),? (but )?I{_NOT}",
    rf"^\W*(sorry|I apologi[sz]e),? (but )?I{_NOT}",
    rf"^\W*I{_NOT}( to)? (help|assist|comply|provide|do that|fulfil)",
    rf"^\W*As an AI( language model)?,? I( can{_A}?t| cannot| don{_A}t| do not)",
)
REFUSAL_SPAN = 300


def refusal_pattern(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    """One alternation of `patterns`, compiled once at reload; None when there are none."""
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)


DEFAULT_REFUSAL = refusal_pattern(DEFAULT_REFUSALS)


@dataclass(frozen=True, slots=True)
class QualityConfig:
    """The `quality:` section: what counts as a refusal, and how app feedback is taken."""

    refusal: re.Pattern[str] | None = DEFAULT_REFUSAL
    feedback_ttl: float = 3600.0  # an answer takes feedback this long; 0: no feedback at all
    labels: frozenset[str] = frozenset()  # feedback labels kept as a metric attribute


DEFAULT_JOBS_PATH = "llm-sidecar-jobs.db"
DEFAULT_MAX_FILE_BYTES = 32 * 1024 * 1024  # as a request body: a sidecar's memory is small


@dataclass(frozen=True, slots=True)
class JobsConfig:
    """The `jobs:` section: where the queue lives and how its workers behave."""

    backend: str = "sqlite"
    path: str = DEFAULT_JOBS_PATH  # relative: under the sidecar's --state-dir
    url: str | None = None
    workers: int = 2
    max_attempts: int = 3
    retry_backoff: float = 1.0  # before the second attempt; doubles each time, up to 5m
    visibility_timeout: float = 300.0  # a claim not renewed for this long is taken back
    poll_interval: float = 0.25
    webhook_allow: tuple[str, ...] = ()  # host patterns (fnmatch), optionally host:port
    webhook_secret: Secret = field(default_factory=lambda: Secret(""), repr=False)
    webhook_attempts: int = 5
    retention: float = 7 * 24 * 3600.0  # finished stand-alone jobs are deleted after; 0: kept
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES  # largest upload to /v1/files
    batch_poll: float = 30.0  # a provider batch's first poll; doubles while nothing changes
    batch_poll_max: float = 600.0

    @property
    def queue_key(self) -> tuple[str, str, str | None]:
        """What identifies the queue itself: a change of anything else keeps it open."""
        return (self.backend, self.path, self.url)


@dataclass(frozen=True, slots=True)
class Policy:
    version: str
    files: tuple[str, ...]
    providers: Mapping[str, ProviderConfig]
    models: Mapping[str, Model]
    routes: Mapping[str, Route]
    by_model: Mapping[str, RouteSet]
    public_models: tuple[str, ...]  # what GET /v1/models lists, in policy order
    state: StateConfig = field(default_factory=StateConfig)
    limits: Mapping[str, Limit] = field(default_factory=dict)
    budgets: Mapping[str, Budget] = field(default_factory=dict)
    admission: Mapping[str, Admission] = field(default_factory=dict)  # by route name
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    jobs: JobsConfig | None = None  # None: no `jobs:` section, the jobs API is off
    quality: QualityConfig = field(default_factory=QualityConfig)
    # Of providers/models/routes, those a file writes as `{}`: meant to be empty, so a
    # reload that leaves none of them is taken (else it is refused as a half-written file).
    emptied: frozenset[str] = frozenset()
