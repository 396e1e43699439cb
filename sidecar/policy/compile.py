"""Cross-check and compile policy documents into one frozen `Policy`.

Parse → validate structure → merge by name → cross-check references → compile. Every
problem found is collected, with its file and line, and raised together: a policy either
compiles whole or not at all, so a bad edit can never half-apply. One run finds them all:
an entry that fails its structure check is left out of the cross-checks, and a reference
that may point at something left out (or at a file that could not be read) is not
reported, so one mistake gives one problem, not a cascade.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sidecar.policy.compile_batch import batch_policy, batch_prices, micro_batch
from sidecar.policy.compile_prompt import (
    default_cache_key,
    missing_1h_price,
    model_cache,
    prompt_policy,
    route_cache,
    target_cache,
)
from sidecar.policy.compile_quality import QualitySections
from sidecar.policy.compile_select import SelectSections
from sidecar.policy.compile_stages import StageSections
from sidecar.policy.durations import parse_duration
from sidecar.policy.entry import Entry, LeftOut, names, seconds, values
from sidecar.policy.folder import FolderRead, read_folder
from sidecar.policy.model import (
    Circuit,
    Condition,
    Hedge,
    MockSettings,
    Model,
    Policy,
    Price,
    ProviderConfig,
    Retry,
    Route,
    RouteSet,
    Target,
)
from sidecar.policy.problems import PolicyInvalid, Problem
from sidecar.policy.schema import SECTIONS, SINGLE_SECTIONS, structure_errors
from sidecar.policy.secret import Secret
from sidecar.policy.source import Document, SourceFile, content_hash, parse

DEFAULT_BASE_URL = {"openai": "https://api.openai.com/v1", "anthropic": "https://api.anthropic.com"}
DEFAULT_PROVIDER_TIMEOUT = 60.0
# How each wire format is asked for schema-shaped output unless `structured_output` says.
DEFAULT_DIALECT = {"openai": "json_schema", "anthropic": "tool", "mock": "none"}
DEFAULT_ROUTE_TIMEOUT = 120.0
_ENV_NAME = re.compile(rb"\$\{([A-Za-z_][A-Za-z0-9_]*)")


# Sections a reload may not empty by accident (see `Policy.emptied`).
GUARDED = ("providers", "models", "routes")


def load_folder(folder: Path, env: Mapping[str, str] | None = None) -> Policy:
    return compile_folder(folder, read_folder(folder), os.environ if env is None else env)


def compile_folder(folder: Path, read: FolderRead, env: Mapping[str, str]) -> Policy:
    """The policy of what `read` found in `folder`: a folder without policy files is a
    problem, not an empty policy, so a mount that came up empty never reads as ready."""
    found = list(read.problems)
    if not read.files and not found:
        found.append(Problem(str(folder), 0, "no policy files (*.yaml, *.yml) in the folder"))
    return compile_sources(read.files, env, found, read.data)


def refuse_emptying(folder: Path, before: Policy, after: Policy) -> None:
    """Raise when `after` has none of a kind `before` has (routes, models, providers) and no
    file writes that kind as `{}`: an editor saving in place empties a file for a moment,
    and a reload in that moment must not drop every route."""
    gone = [k for k in GUARDED if getattr(before, k) and not getattr(after, k)]
    gone = [k for k in gone if k not in after.emptied]
    if gone:
        message = (
            f"refused: this change leaves no {' or '.join(gone)}, as a half-written file "
            f"would; to mean it, write `{gone[0]}: {{}}` in a policy file"
        )
        raise PolicyInvalid([Problem(str(folder), 0, message)])


def compile_sources(
    files: list[SourceFile],
    env: Mapping[str, str],
    found: list[Problem] | None = None,
    data: list[SourceFile] | None = None,
) -> Policy:
    """`found`: problems already known (reading the folder), reported with the rest;
    `data`: the folder's data files (*.jsonl), which policy entries may name."""
    try:
        return _compile_sources(files, env, found or [], data or [])
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


def _compile_sources(
    files: list[SourceFile], env: Mapping[str, str], problems: list[Problem], data: list[SourceFile]
) -> Policy:
    docs = [d for f in files if (d := parse(f, env, problems)) is not None]
    # Names may live in what could not be read: then no reference is reported as missing.
    left_out = LeftOut(partial=bool(problems))
    emptied = frozenset(s for d in docs for s in GUARDED if d.data.get(s) == {})
    for doc in docs:
        for path, message in structure_errors(doc.data):
            problems.append(Problem(doc.file, doc.line_of(path), message))
            left_out.remove(doc, path)
    # A name defined twice keeps its first definition, so the cross-checks below still
    # hold and a run reports them too, not only the duplicate.
    sections = _merge(docs, problems)
    compiler = _Compiler(sections, problems, env, left_out)
    compiler.data = {f.name: f for f in data}
    policy = compiler.policy(content_hash([*files, *data]), tuple(f.name for f in files), emptied)
    if problems:
        raise PolicyInvalid(problems)
    return policy


def _merge(docs: list[Document], problems: list[Problem]) -> dict[str, dict[str, Entry]]:
    sections: dict[str, dict[str, Entry]] = {s: {} for s in (*SECTIONS, *SINGLE_SECTIONS)}
    for doc in docs:
        for section in SINGLE_SECTIONS:
            if section in doc.data:
                entry = Entry(section, doc.data[section] or {}, doc, (section,))  # type: ignore[arg-type]
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
                entry = Entry(name, body, doc, (section, name))
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


class _Compiler(StageSections, SelectSections, QualitySections):
    def __init__(
        self,
        sections: dict[str, dict[str, Entry]],
        problems: list[Problem],
        env: Mapping[str, str] | None = None,
        left_out: LeftOut | None = None,
    ) -> None:
        self.sections = sections
        self.problems = problems
        self.env = env or {}
        self.left_out = left_out or LeftOut(partial=False)
        self.data: dict[str, SourceFile] = {}  # the folder's data files, by name

    def policy(self, version: str, files: tuple[str, ...], emptied: frozenset[str]) -> Policy:
        providers = {e.name: self.provider(e) for e in self.sections["providers"].values()}
        models: dict[str, Model] = {}
        for e in self.sections["models"].values():
            if self.missing("providers", e.body["provider"]):
                self.problems.append(
                    e.problem(
                        f"model '{e.name}' uses provider '{e.body['provider']}', which is not "
                        f"defined (providers: {names(providers)})",
                        "provider",
                    )
                )
            models[e.name] = self.model(e, providers)
        schemas = {e.name: self.schema(e) for e in self.sections["schemas"].values()}
        routes = {
            e.name: self.route(e, models, schemas, providers)
            for e in self.sections["routes"].values()
        }
        by_model = self.route_sets(routes, models, providers)
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
            quality=self.quality(),
            emptied=emptied,
        )

    def provider(self, e: Entry) -> ProviderConfig:
        b = e.body
        kind = b["type"]
        mock = b.get("mock") or {}
        dialect = b.get("structured_output", DEFAULT_DIALECT[kind])
        if dialect != "none" and (dialect == "tool") != (kind == "anthropic"):
            self.problems.append(
                e.problem(
                    f"provider '{e.name}': structured_output {dialect} does not fit type {kind} "
                    "(anthropic: tool or none; openai: json_schema, json_object, guided_json, "
                    "structured_outputs or none)",
                    "structured_output",
                )
            )
        base_url = b.get("base_url") or DEFAULT_BASE_URL.get(kind, f"mock://{e.name}")
        return ProviderConfig(
            name=e.name,
            type=kind,
            base_url=base_url.rstrip("/"),
            api_key=Secret(b.get("api_key") or ""),
            timeout=seconds(b.get("timeout"), DEFAULT_PROVIDER_TIMEOUT),
            headers=tuple((k.lower(), v) for k, v in (b.get("headers") or {}).items()),
            max_connections=b.get("max_connections", 256),
            anthropic_version=b.get("anthropic_version", "2023-06-01"),
            max_tokens=b.get("max_tokens", 4096),
            max_concurrency=b.get("max_concurrency"),
            concurrency_wait=seconds(b.get("concurrency_wait"), 0.1),
            circuit=_circuit(b.get("circuit"), None),
            structured_output=dialect,
            prompt_cache_key=b.get("prompt_cache_key", default_cache_key(kind, base_url)),
            mock=MockSettings(
                reply=mock.get("reply"),
                latency=seconds(mock.get("latency"), 0.0),
                chunk_delay=seconds(mock.get("chunk_delay"), 0.0),
                embedding_dims=mock.get("embedding_dims", 16),
            ),
        )

    def model(self, e: Entry, providers: dict[str, ProviderConfig]) -> Model:
        price = e.body.get("price") or {}
        provider = providers.get(e.body["provider"])
        upstream = e.body.get("name") or e.name
        cacheable, min_tokens = model_cache(e.body, upstream)
        return Model(
            name=e.name,
            provider=e.body["provider"],
            upstream=upstream,
            circuit=_circuit(e.body.get("circuit"), provider.circuit if provider else None),
            embeddings=micro_batch(e.body.get("embeddings")),
            prompt_cache=cacheable,
            cache_min_tokens=min_tokens,
            price=Price(
                input=float(price.get("input", 0.0)),
                output=float(price.get("output", 0.0)),
                cached_input=(float(price["cached_input"]) if "cached_input" in price else None),
                cache_write=(float(price["cache_write"]) if "cache_write" in price else None),
                **batch_prices(price.get("batch")),
                cache_write_1h=(
                    float(price["cache_write_1h"]) if "cache_write_1h" in price else None
                ),
            ),
        )

    def route(
        self,
        e: Entry,
        models: dict[str, Model],
        schemas: dict[str, Any],
        providers: dict[str, ProviderConfig],
    ) -> Route:
        b = e.body
        route_retry = _retry(b.get("retry"), Retry())
        caching = route_cache(b)

        def targets_of(raw: list[Any], path: str) -> list[Target]:
            targets = []
            for i, item in enumerate(raw):
                name = item if isinstance(item, str) else item["model"]
                if name in models:
                    own = None if isinstance(item, str) else item.get("retry")
                    model = models[name]
                    provider = providers.get(model.provider)
                    cache = target_cache(e.name, caching, model, provider)
                    targets.append(Target(model, _retry(own, route_retry), cache))
                    kind = provider.type if provider else ""
                    unpriced = missing_1h_price(caching, model, kind)
                    if unpriced is not None:
                        self.problems.append(
                            e.problem(f"route '{e.name}': {unpriced}", *path.split("."), i)
                        )
                elif self.missing("models", name):
                    self.problems.append(
                        e.problem(
                            f"route '{e.name}' targets model '{name}', which is not defined "
                            f"(models: {names(models)})",
                            *path.split("."),
                            i,
                        )
                    )
            return targets

        select, targets = self.selection(e, targets_of, models, providers)
        match = b.get("match") or {}
        conditions = [
            Condition("header", header.lower(), values(v))
            for header, v in (match.get("headers") or {}).items()
        ]
        conditions += [Condition(k, "", values(match[k])) for k in ("user", "team") if k in match]
        hedge = b.get("hedge")
        first_token = b.get("first_token_timeout")
        timeout = seconds(b.get("timeout"), DEFAULT_ROUTE_TIMEOUT)
        return Route(
            name=e.name,
            model=match.get("model", e.name),
            conditions=tuple(conditions),
            targets=tuple(targets),
            timeout=timeout,
            first_token_timeout=parse_duration(first_token) if first_token else None,
            hedge=Hedge(parse_duration(hedge["after"]), hedge.get("max", 1)) if hedge else None,
            output=self.output(e, schemas, targets, providers),
            cache=self.cache(e, models),
            baseline=self._baseline(e, models, targets),
            batch=batch_policy(b.get("batch")),
            prompt=prompt_policy(b),
            select=select,
            # with tiers, any tier's model may be a candidate (for the requests it did not answer)
            shadow=self.shadow(e, models, [] if select else targets, timeout),
        )

    def _baseline(self, e: Entry, models: dict[str, Model], targets: list[Target]) -> Model | None:
        """The model the savings ledger prices this route's requests at: the one named,
        else the dearest target (input plus output price; the first of equals)."""
        name = e.body.get("baseline")
        if name is None:
            dearest = max(targets, key=lambda t: t.model.price.reference, default=None)
            return dearest.model if dearest else None
        if name not in models:
            self.problems.append(
                e.problem(
                    f"route '{e.name}' has baseline '{name}', which is not a defined model "
                    f"(models: {names(models)})",
                    "baseline",
                )
            )
            return None
        return models[name]

    def route_sets(
        self,
        routes: dict[str, Route],
        models: dict[str, Model],
        providers: dict[str, ProviderConfig],
    ) -> dict[str, RouteSet]:
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
                        (
                            Target(
                                model,
                                Retry(),
                                target_cache(
                                    name, (True, None), model, providers.get(model.provider)
                                ),
                            ),
                        ),
                        DEFAULT_ROUTE_TIMEOUT,
                        implicit=True,
                        baseline=model,
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
        backoff=seconds(backoff.get("base"), base.backoff),
        backoff_max=seconds(backoff.get("max"), base.backoff_max),
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
        window=seconds(raw.get("window"), 30.0),
        cooldown=seconds(raw.get("cooldown"), 30.0),
    )
