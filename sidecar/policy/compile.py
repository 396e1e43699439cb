"""Cross-check and compile policy documents into one frozen `Policy`.

Parse → validate structure → merge by name → cross-check references → compile. Every
problem found is collected, with its file and line, and raised together: a policy either
compiles whole or not at all, so a bad edit can never half-apply.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from sidecar.policy.durations import parse_duration
from sidecar.policy.model import (
    DEFAULT_JOBS_PATH,
    DEFAULT_STATE_PATH,
    Admission,
    Budget,
    CachePolicy,
    Circuit,
    Condition,
    Hedge,
    JobsConfig,
    Limit,
    MockSettings,
    Model,
    OutputPolicy,
    Policy,
    Price,
    ProviderConfig,
    Retry,
    Route,
    RouteSet,
    StateConfig,
    Target,
    TelemetryConfig,
)
from sidecar.policy.problems import PolicyInvalid, Problem
from sidecar.policy.schema import SECTIONS, SINGLE_SECTIONS, structure_errors
from sidecar.policy.secret import Secret
from sidecar.policy.source import Document, SourceFile, content_hash, parse, read_folder

DEFAULT_BASE_URL = {"openai": "https://api.openai.com/v1", "anthropic": "https://api.anthropic.com"}
DEFAULT_PROVIDER_TIMEOUT = 60.0
DEFAULT_ROUTE_TIMEOUT = 120.0
_ENV_NAME = re.compile(rb"\$\{([A-Za-z_][A-Za-z0-9_]*)")


@dataclass(frozen=True, slots=True)
class _Entry:
    """A named entry of a section, with where it was written."""

    name: str
    body: dict[str, Any]
    doc: Document
    path: tuple[str, str]

    def line(self, *sub: str | int) -> int:
        return self.doc.line_of((*self.path, *sub))

    def problem(self, message: str, *sub: str | int) -> Problem:
        return Problem(self.doc.file, self.line(*sub), message)


def load_folder(folder: Path, env: Mapping[str, str] | None = None) -> Policy:
    if not folder.is_dir():
        raise PolicyInvalid([Problem(str(folder), 0, "policy folder does not exist")])
    return compile_sources(read_folder(folder), os.environ if env is None else env)


def compile_sources(files: list[SourceFile], env: Mapping[str, str]) -> Policy:
    try:
        return _compile_sources(files, env)
    except PolicyInvalid as exc:
        problems = sorted(exc.problems, key=lambda p: (p.file, p.line))  # stable: reading order
        raise PolicyInvalid(_hide_env_values(problems, files, env)) from None


def _hide_env_values(
    problems: list[Problem], files: list[SourceFile], env: Mapping[str, str]
) -> list[Problem]:
    """A problem may quote a value that came from `${NAME}` (a key put in `base_url` by
    mistake): it shows the reference instead, so no environment value reaches a log,
    /status or `check`'s output. Values under 8 characters are left alone: they are
    settings (`MODE=openai`), replacing them would garble messages, and keys are longer."""
    names = {m.group(1).decode() for f in files for m in _ENV_NAME.finditer(f.text)}
    values = sorted(
        ((env[n], n) for n in names if len(env.get(n) or "") >= 8), key=lambda v: -len(v[0])
    )
    if not values:
        return problems
    hidden: list[Problem] = []
    for p in problems:
        message = p.message
        for value, name in values:
            message = message.replace(value, f"${{{name}}}")
        hidden.append(Problem(p.file, p.line, message))
    return hidden


def _compile_sources(files: list[SourceFile], env: Mapping[str, str]) -> Policy:
    problems: list[Problem] = []
    docs = [d for f in files if (d := parse(f, env, problems)) is not None]
    for doc in docs:
        for path, message in structure_errors(doc.data):
            problems.append(Problem(doc.file, doc.line_of(path), message))
    if problems:
        raise PolicyInvalid(problems)
    # A name defined twice keeps its first definition, so the cross-checks below still
    # hold and a run reports them too, not only the duplicate.
    sections = _merge(docs, problems)
    policy = _Compiler(sections, problems, env).policy(
        content_hash(files), tuple(f.name for f in files)
    )
    if problems:
        raise PolicyInvalid(problems)
    return policy


def _merge(docs: list[Document], problems: list[Problem]) -> dict[str, dict[str, _Entry]]:
    sections: dict[str, dict[str, _Entry]] = {s: {} for s in (*SECTIONS, *SINGLE_SECTIONS)}
    for doc in docs:
        for section in SINGLE_SECTIONS:
            if section in doc.data:
                entry = _Entry(section, doc.data[section] or {}, doc, (section,))  # type: ignore[arg-type]
                first = sections[section].get(section)
                if first is not None:
                    problems.append(
                        entry.problem(
                            f"'{section}' is set twice: in {first.doc.file}:{first.line()} "
                            f"and {doc.file}:{entry.line()}"
                        )
                    )
                    continue
                sections[section][section] = entry
        for section in SECTIONS:
            for name, body in (doc.data.get(section) or {}).items():
                entry = _Entry(name, body, doc, (section, name))
                first = sections[section].get(name)
                if first is not None:
                    problems.append(
                        entry.problem(
                            f"{section} '{name}' is defined twice: in "
                            f"{first.doc.file}:{first.line()} and {doc.file}:{entry.line()}"
                        )
                    )
                    continue
                sections[section][name] = entry
    return sections


class _Compiler:
    def __init__(
        self,
        sections: dict[str, dict[str, _Entry]],
        problems: list[Problem],
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.sections = sections
        self.problems = problems
        self.env = env or {}

    def policy(self, version: str, files: tuple[str, ...]) -> Policy:
        providers = {e.name: self.provider(e) for e in self.sections["providers"].values()}
        models: dict[str, Model] = {}
        for e in self.sections["models"].values():
            if e.body["provider"] not in providers:
                self.problems.append(
                    e.problem(
                        f"model '{e.name}' uses provider '{e.body['provider']}', which is not "
                        f"defined (providers: {_names(providers)})",
                        "provider",
                    )
                )
            models[e.name] = self.model(e, providers)
        schemas = {e.name: self.schema(e) for e in self.sections["schemas"].values()}
        routes = {e.name: self.route(e, models, schemas) for e in self.sections["routes"].values()}
        by_model = self.route_sets(routes, models)
        public = tuple(dict.fromkeys([*(r.model for r in routes.values()), *models]))
        limits = {e.name: self.limit(e) for e in self.sections["limits"].values()}
        budgets = {e.name: self.budget(e, models) for e in self.sections["budgets"].values()}
        route_names = {
            r.name for rs in by_model.values() for r in (*rs.conditional, rs.default) if r
        }
        admission = self.admission(route_names, limits, budgets)
        return Policy(
            version,
            files,
            providers,
            models,
            routes,
            by_model,
            public,
            state=self.state(),
            telemetry=self.telemetry(),
            limits=limits,
            budgets=budgets,
            admission=admission,
            jobs=self.jobs(),
        )

    def state(self) -> StateConfig:
        entry = self.sections["state"].get("state")
        b = entry.body if entry else {}
        backend = b.get("backend", "redis" if "url" in b else "sqlite")
        if backend == "redis" and not b.get("url") and entry is not None:
            self.problems.append(entry.problem("state: backend redis needs a url"))
        return StateConfig(
            backend=backend,
            path=b.get("path", DEFAULT_STATE_PATH),
            url=b.get("url"),
            on_error=b.get("on_error", "open"),
            flush_interval=_seconds(b.get("flush_interval"), 1.0),
        )

    def jobs(self) -> JobsConfig | None:
        entry = self.sections["jobs"].get("jobs")
        if entry is None:
            return None
        b = entry.body
        url = b.get("url") or self._state_url()
        backend = b.get("backend", "sqlite")
        if backend == "redis" and url is None:
            self.problems.append(entry.problem("jobs: backend redis needs a url (or state.url)"))
        secret = ""
        name = b.get("webhook_secret_env")
        if name is not None:
            secret = self.env.get(name) or ""
            if not secret:
                self.problems.append(
                    entry.problem(
                        f"jobs.webhook_secret_env: environment variable '{name}' is not set",
                        "webhook_secret_env",
                    )
                )
        allow = tuple(h.lower() for h in b.get("webhook_allow") or ())
        if allow and name is None:
            self.problems.append(
                entry.problem(
                    "jobs.webhook_allow needs webhook_secret_env: webhooks are always signed",
                    "webhook_allow",
                )
            )
        return JobsConfig(
            backend=backend,
            path=b.get("path", DEFAULT_JOBS_PATH),
            url=url if backend == "redis" else None,
            workers=b.get("workers", 2),
            max_attempts=b.get("max_attempts", 3),
            retry_backoff=_seconds(b.get("retry_backoff"), 1.0),
            visibility_timeout=_seconds(b.get("visibility_timeout"), 300.0),
            poll_interval=_seconds(b.get("poll_interval"), 0.25),
            webhook_allow=allow,
            webhook_secret=Secret(secret),
            webhook_attempts=b.get("webhook_attempts", 5),
        )

    def telemetry(self) -> TelemetryConfig:
        entry = self.sections["telemetry"].get("telemetry")
        b = entry.body if entry else {}
        return TelemetryConfig(
            capture_content=b.get("capture_content", False),
            identity_in_spans=b.get("identity_in_spans", True),
            user_attribute=b.get("user_attribute", False),
            max_users=b.get("max_users", 100),
        )

    def limit(self, e: _Entry) -> Limit:
        b = e.body
        if not any(k in b for k in ("requests_per_minute", "tokens_per_minute", "max_concurrent")):
            self.problems.append(
                e.problem(
                    f"limit '{e.name}' sets no limit: give requests_per_minute, "
                    "tokens_per_minute or max_concurrent"
                )
            )
        queue = b.get("queue") or {}
        return Limit(
            name=e.name,
            scope=b["scope"],
            values=_values(b["values"]) if "values" in b else None,
            requests_per_minute=b.get("requests_per_minute"),
            tokens_per_minute=b.get("tokens_per_minute"),
            max_concurrent=b.get("max_concurrent"),
            queue_max_wait=_seconds(queue.get("max_wait"), 0.0),
            queue_max_size=queue.get("max_size", 1000 if queue.get("max_wait") else 0),
        )

    def budget(self, e: _Entry, models: dict[str, Model]) -> Budget:
        b = e.body
        on_exceed = b.get("on_exceed", "reject")
        downgrade = b.get("downgrade_to")
        if on_exceed == "downgrade" and downgrade is None:
            self.problems.append(
                e.problem(f"budget '{e.name}': on_exceed downgrade needs downgrade_to")
            )
        if downgrade is not None and downgrade not in models:
            self.problems.append(
                e.problem(
                    f"budget '{e.name}' downgrades to model '{downgrade}', which is not defined "
                    f"(models: {_names(models)})",
                    "downgrade_to",
                )
            )
        return Budget(
            name=e.name,
            scope=b["scope"],
            values=_values(b["values"]) if "values" in b else None,
            limit_usd=float(b["limit_usd"]),
            window=b["window"],
            on_exceed=on_exceed,
            downgrade_to=models.get(downgrade) if downgrade else None,
            warn_at=b.get("warn_at"),
        )

    def admission(
        self, route_names: set[str], limits: dict[str, Limit], budgets: dict[str, Budget]
    ) -> dict[str, Admission]:
        """Which limits and budgets apply to each route, so a request looks up one entry."""
        applies: dict[str, tuple[list[Limit], list[Budget]]] = {r: ([], []) for r in route_names}
        for section, table in (("limits", limits), ("budgets", budgets)):
            for name, item in table.items():
                entry = self.sections[section][name]
                only = entry.body.get("routes")
                chosen = route_names if only is None else _values(only)
                for route in sorted(chosen):
                    if route not in applies:
                        self.problems.append(
                            entry.problem(
                                f"{section[:-1]} '{name}' names route '{route}', which does not "
                                f"exist (routes: {_names(applies)})",
                                "routes",
                            )
                        )
                        continue
                    applies[route][0 if section == "limits" else 1].append(item)  # type: ignore[arg-type]
        return {r: Admission(tuple(ls), tuple(bs)) for r, (ls, bs) in applies.items() if ls or bs}

    def provider(self, e: _Entry) -> ProviderConfig:
        b = e.body
        kind = b["type"]
        mock = b.get("mock") or {}
        return ProviderConfig(
            name=e.name,
            type=kind,
            base_url=(b.get("base_url") or DEFAULT_BASE_URL.get(kind, f"mock://{e.name}")).rstrip(
                "/"
            ),
            api_key=Secret(b.get("api_key") or ""),
            timeout=_seconds(b.get("timeout"), DEFAULT_PROVIDER_TIMEOUT),
            headers=tuple((k.lower(), v) for k, v in (b.get("headers") or {}).items()),
            max_connections=b.get("max_connections", 256),
            anthropic_version=b.get("anthropic_version", "2023-06-01"),
            max_tokens=b.get("max_tokens", 4096),
            max_concurrency=b.get("max_concurrency"),
            concurrency_wait=_seconds(b.get("concurrency_wait"), 0.1),
            circuit=_circuit(b.get("circuit"), None),
            mock=MockSettings(
                reply=mock.get("reply"),
                latency=_seconds(mock.get("latency"), 0.0),
                chunk_delay=_seconds(mock.get("chunk_delay"), 0.0),
                embedding_dims=mock.get("embedding_dims", 16),
            ),
        )

    def model(self, e: _Entry, providers: dict[str, ProviderConfig]) -> Model:
        price = e.body.get("price") or {}
        provider = providers.get(e.body["provider"])
        return Model(
            name=e.name,
            provider=e.body["provider"],
            upstream=e.body.get("name") or e.name,
            circuit=_circuit(e.body.get("circuit"), provider.circuit if provider else None),
            price=Price(
                input=float(price.get("input", 0.0)),
                output=float(price.get("output", 0.0)),
                cached_input=(float(price["cached_input"]) if "cached_input" in price else None),
            ),
        )

    def schema(self, e: _Entry) -> Any:
        """A compiled validator, or None after reporting where the schema is wrong."""
        from jsonschema import Draft202012Validator  # only policies with schemas load it
        from jsonschema.exceptions import SchemaError

        try:
            Draft202012Validator.check_schema(e.body)
        except SchemaError as exc:
            self.problems.append(
                e.problem(f"schema '{e.name}' is not valid JSON Schema: {exc.message}", *exc.path)
            )
            return None
        return Draft202012Validator(e.body, format_checker=Draft202012Validator.FORMAT_CHECKER)

    def output(self, e: _Entry, schemas: dict[str, Any]) -> OutputPolicy | None:
        b = e.body.get("output")
        if b is None:
            return None
        name = b["schema"]
        validator = None
        if name != "from_request":
            if name not in self.sections["schemas"]:
                self.problems.append(
                    e.problem(
                        f"route '{e.name}' validates with schema '{name}', which is not defined "
                        f"(schemas: {_names(self.sections['schemas'])}, or from_request)",
                        "output",
                        "schema",
                    )
                )
            validator = schemas.get(name)
        invalid = b.get("on_invalid") or {}
        then = invalid.get("then", "error")
        default = b.get("default")
        if then == "default" and default is None:
            self.problems.append(e.problem("output: then default needs a `default`", "output"))
        if default is not None and validator is not None:
            errors = sorted(validator.iter_errors(default), key=lambda x: list(x.path))
            if errors:
                self.problems.append(
                    e.problem(
                        f"output.default does not match schema '{name}': {errors[0].message}",
                        "output",
                        "default",
                    )
                )
        return OutputPolicy(
            schema_name=name,
            schema=self.sections["schemas"][name].body
            if name in self.sections["schemas"]
            else None,
            validator=validator,
            lenient=b.get("extract", "strict") == "lenient",
            retries=invalid.get("retries", 1),
            retry_next=invalid.get("retry_target", "same") == "next",
            then=then,
            default=orjson.dumps(default).decode() if default is not None else None,
            native=b.get("enforce", "none") == "native",
            stream_validate=b.get("stream_mode", "validate") == "validate",
        )

    def cache(self, e: _Entry, models: dict[str, Model]) -> CachePolicy | None:
        name = e.body.get("cache")
        if name is None:
            return None
        entry = self.sections["cache"].get(name)
        if entry is None:
            self.problems.append(
                e.problem(
                    f"route '{e.name}' uses cache '{name}', which is not defined "
                    f"(cache: {_names(self.sections['cache'])})",
                    "cache",
                )
            )
            return None
        b = entry.body
        semantic = b.get("mode", "exact") == "semantic"
        sem = b.get("semantic") or {}
        embedding = None
        if semantic:
            if "model" not in sem:
                self.problems.append(
                    entry.problem(f"cache '{name}': mode semantic needs semantic.model")
                )
            elif sem["model"] not in models:
                self.problems.append(
                    entry.problem(
                        f"cache '{name}' embeds with model '{sem['model']}', which is not defined",
                        "semantic",
                        "model",
                    )
                )
            else:
                embedding = models[sem["model"]]
        store = b.get("store", "memory")
        url = b.get("url")
        if store == "redis" and url is None:
            url = self._state_url()
            if url is None:
                self.problems.append(
                    entry.problem(f"cache '{name}': store redis needs a url (or state.url)")
                )
        return CachePolicy(
            name=name,
            semantic=semantic,
            ttl=_seconds(b.get("ttl"), 3600.0),
            max_entries=b.get("max_entries", 10_000),
            max_bytes=b.get("max_bytes"),
            store=store,
            url=url,
            scope=b.get("scope", "user"),
            any_temperature=b.get("any_temperature", False),
            tools=b.get("tools", False),
            embedding=embedding,
            similarity=float(sem.get("similarity", 0.95)),
            whole_conversation=sem.get("input", "last_user") == "conversation",
        )

    def _state_url(self) -> str | None:
        entry = self.sections["state"].get("state")
        return entry.body.get("url") if entry else None

    def route(self, e: _Entry, models: dict[str, Model], schemas: dict[str, Any]) -> Route:
        b = e.body
        route_retry = _retry(b.get("retry"), Retry())
        targets = []
        for i, item in enumerate(b["targets"]):
            name = item if isinstance(item, str) else item["model"]
            if name in models:
                own = None if isinstance(item, str) else item.get("retry")
                targets.append(Target(models[name], _retry(own, route_retry)))
            else:
                self.problems.append(
                    e.problem(
                        f"route '{e.name}' targets model '{name}', which is not defined "
                        f"(models: {_names(models)})",
                        "targets",
                        i,
                    )
                )
        match = b.get("match") or {}
        conditions = [
            Condition("header", header.lower(), _values(v))
            for header, v in (match.get("headers") or {}).items()
        ]
        conditions += [Condition(k, "", _values(match[k])) for k in ("user", "team") if k in match]
        hedge = b.get("hedge")
        first_token = b.get("first_token_timeout")
        return Route(
            name=e.name,
            model=match.get("model", e.name),
            conditions=tuple(conditions),
            targets=tuple(targets),
            timeout=_seconds(b.get("timeout"), DEFAULT_ROUTE_TIMEOUT),
            first_token_timeout=parse_duration(first_token) if first_token else None,
            hedge=Hedge(parse_duration(hedge["after"]), hedge.get("max", 1)) if hedge else None,
            output=self.output(e, schemas),
            cache=self.cache(e, models),
        )

    def route_sets(self, routes: dict[str, Route], models: dict[str, Model]) -> dict[str, RouteSet]:
        grouped: dict[str, list[Route]] = {}
        for route in routes.values():
            grouped.setdefault(route.model, []).append(route)
        for name, model in models.items():
            if not any(not r.conditions for r in grouped.get(name, ())):
                grouped.setdefault(name, []).append(
                    Route(
                        name,
                        name,
                        (),
                        (Target(model, Retry()),),
                        DEFAULT_ROUTE_TIMEOUT,
                        implicit=True,
                    )
                )
        sets: dict[str, RouteSet] = {}
        for model, group in grouped.items():
            defaults = [r for r in group if not r.conditions]
            conditional = [r for r in group if r.conditions]
            for a, b in itertools.combinations(defaults, 2):
                self._ambiguous(a, b, model, "neither has match conditions")
            for a, b in itertools.combinations(conditional, 2):
                if not _disjoint(a, b):
                    self._ambiguous(a, b, model, "their conditions overlap")
            sets[model] = RouteSet(tuple(conditional), defaults[0] if defaults else None)
        return sets

    def _ambiguous(self, a: Route, b: Route, model: str, why: str) -> None:
        ea, eb = self.sections["routes"][a.name], self.sections["routes"][b.name]
        self.problems.append(
            eb.problem(
                f"routes '{a.name}' ({ea.doc.file}:{ea.line()}) and '{b.name}' both match "
                f"model '{model}' and {why}: give them disjoint conditions on a shared "
                f"header, user or team"
            )
        )


def _disjoint(a: Route, b: Route) -> bool:
    """True when no caller can satisfy both routes: a shared key with no value in common."""
    theirs = {(c.kind, c.key): c.values for c in b.conditions}
    return any(
        (c.kind, c.key) in theirs and not (c.values & theirs[(c.kind, c.key)]) for c in a.conditions
    )


def _retry(raw: dict[str, Any] | None, base: Retry) -> Retry:
    """A retry policy: what `raw` sets, the rest from `base` (the route's, for a target)."""
    if not raw:
        return base
    backoff = raw.get("backoff")
    if isinstance(backoff, str):
        backoff = {"base": backoff}
    backoff = backoff or {}
    return Retry(
        attempts=raw.get("attempts", base.attempts),
        backoff=_seconds(backoff.get("base"), base.backoff),
        backoff_max=_seconds(backoff.get("max"), base.backoff_max),
        jitter=backoff.get("jitter", base.jitter),
        on=frozenset(raw["on"]) if "on" in raw else base.on,
    )


def _circuit(raw: dict[str, Any] | None, base: Circuit | None) -> Circuit | None:
    if not raw:
        return base
    ratio = raw.get("failure_ratio")
    return Circuit(
        consecutive_failures=raw.get("consecutive_failures", None if ratio else 5),
        failure_ratio=ratio,
        min_calls=raw.get("min_calls", 10),
        window=_seconds(raw.get("window"), 30.0),
        cooldown=_seconds(raw.get("cooldown"), 30.0),
    )


def _values(v: str | list[str]) -> frozenset[str]:
    return frozenset([v] if isinstance(v, str) else v)


def _seconds(text: str | None, default: float) -> float:
    return default if text is None else parse_duration(text)


def _names(d: Mapping[str, Any]) -> str:
    return ", ".join(sorted(d)) or "none"
