"""Compile the sections that configure the stages around routing: state, admission
(limits, budgets), output schemas, caches, jobs and telemetry. A mixin of the policy
compiler, which holds the merged sections and collects problems."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from sidecar.policy.entry import Entry, LeftOut, names, seconds, values
from sidecar.policy.guards import compile_guards
from sidecar.policy.model import (
    DEFAULT_JOBS_PATH,
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_STATE_PATH,
    Admission,
    Budget,
    CachePolicy,
    JobsConfig,
    Limit,
    Model,
    OutputPolicy,
    ProviderConfig,
    StateConfig,
    Target,
    TelemetryConfig,
    Verify,
)
from sidecar.policy.native import NativeSchema, native_schema
from sidecar.policy.problems import Problem
from sidecar.policy.secret import Secret


class StageSections:
    sections: dict[str, dict[str, Entry]]
    problems: list[Problem]
    env: Mapping[str, str]
    left_out: LeftOut

    def missing(self, section: str, name: str) -> bool:
        """`name` is not in `section`, and not because an entry was left out."""
        return name not in self.sections[section] and not self.left_out.excuses(section, name)

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
            flush_interval=seconds(b.get("flush_interval"), 1.0),
        )

    def jobs(self) -> JobsConfig | None:
        entry = self.sections["jobs"].get("jobs")
        if entry is None:
            return None
        b = entry.body
        url = b.get("url") or self._state_url()
        backend = b.get("backend", "sqlite")
        if backend == "redis" and url is None and not self.left_out.excuses("state", "state"):
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
            retry_backoff=seconds(b.get("retry_backoff"), 1.0),
            visibility_timeout=seconds(b.get("visibility_timeout"), 300.0),
            poll_interval=seconds(b.get("poll_interval"), 0.25),
            webhook_allow=allow,
            webhook_secret=Secret(secret),
            webhook_attempts=b.get("webhook_attempts", 5),
            retention=seconds(b.get("retention"), 7 * 24 * 3600.0),
            max_file_bytes=b.get("max_file_bytes", DEFAULT_MAX_FILE_BYTES),
            batch_poll=seconds(b.get("batch_poll"), 30.0),
            batch_poll_max=seconds(b.get("batch_poll_max"), 600.0),
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

    def limit(self, e: Entry) -> Limit:
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
            values=values(b["values"]) if "values" in b else None,
            requests_per_minute=b.get("requests_per_minute"),
            tokens_per_minute=b.get("tokens_per_minute"),
            max_concurrent=b.get("max_concurrent"),
            queue_max_wait=seconds(queue.get("max_wait"), 0.0),
            queue_max_size=queue.get("max_size", 1000 if queue.get("max_wait") else 0),
        )

    def budget(self, e: Entry, models: dict[str, Model]) -> Budget:
        b = e.body
        on_exceed = b.get("on_exceed", "reject")
        downgrade = b.get("downgrade_to")
        if on_exceed == "downgrade" and downgrade is None:
            self.problems.append(
                e.problem(f"budget '{e.name}': on_exceed downgrade needs downgrade_to")
            )
        if downgrade is not None and self.missing("models", downgrade):
            self.problems.append(
                e.problem(
                    f"budget '{e.name}' downgrades to model '{downgrade}', which is not defined "
                    f"(models: {names(models)})",
                    "downgrade_to",
                )
            )
        return Budget(
            name=e.name,
            scope=b["scope"],
            values=values(b["values"]) if "values" in b else None,
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
                chosen = route_names if only is None else values(only)
                for route in sorted(chosen):
                    if route not in applies:
                        if self.left_out.excuses("routes", route) or (
                            self.left_out.excuses("models", route)  # its implicit route
                        ):
                            continue
                        self.problems.append(
                            entry.problem(
                                f"{section[:-1]} '{name}' names route '{route}', which does not "
                                f"exist (routes: {names(applies)})",
                                "routes",
                            )
                        )
                        continue
                    applies[route][0 if section == "limits" else 1].append(item)  # type: ignore[arg-type]
        return {r: Admission(tuple(ls), tuple(bs)) for r, (ls, bs) in applies.items() if ls or bs}

    def schema(self, e: Entry) -> Any:
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

    def output(
        self,
        e: Entry,
        schemas: dict[str, Any],
        targets: list[Target],
        providers: dict[str, ProviderConfig],
    ) -> OutputPolicy | None:
        b = e.body.get("output")
        if b is None:
            return None
        name = b["schema"]
        validator = None
        if name != "from_request":
            if self.missing("schemas", name):
                self.problems.append(
                    e.problem(
                        f"route '{e.name}' validates with schema '{name}', which is not defined "
                        f"(schemas: {names(self.sections['schemas'])}, or from_request)",
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
        schema = self.sections["schemas"][name].body if name in self.sections["schemas"] else None
        native = native_schema(name, schema) if schema is not None else None
        enforce = b.get("enforce", "both")
        enforce = "validate" if enforce == "none" else enforce
        if "enforce" in b and enforce != "validate":
            self._enforceable(e, enforce, native, targets, providers)
        return OutputPolicy(
            schema_name=name,
            schema=schema,
            validator=validator,
            lenient=b.get("extract", "strict") == "lenient",
            retries=invalid.get("retries", 1),
            retry_next=invalid.get("retry_target", "same") == "next",
            then=then,
            default=orjson.dumps(default).decode() if default is not None else None,
            enforce=enforce,
            native=native,
            stream_validate=b.get("stream_mode", "validate") == "validate",
        )

    def _enforceable(
        self,
        e: Entry,
        enforce: str,
        native: NativeSchema | None,
        targets: list[Target],
        providers: dict[str, ProviderConfig],
    ) -> None:
        """An explicit `enforce: native|both` must be kept: every target's provider can
        enforce a schema (for `native`, which has no other safety net), and a provider
        that speaks OpenAI's json_schema gets the schema in strict form."""
        for target in targets:
            provider = providers.get(target.model.provider)
            dialect = provider.structured_output if provider else "none"
            if dialect == "none" and enforce == "native":
                self.problems.append(
                    e.problem(
                        f"route '{e.name}': enforce native, but target '{target.model.name}' "
                        f"(provider '{target.model.provider}') cannot enforce a schema; set the "
                        "provider's structured_output, or use enforce both or validate",
                        "output",
                        "enforce",
                    )
                )
            elif dialect == "json_schema" and native is not None and native.why_not:
                self.problems.append(
                    e.problem(
                        f"route '{e.name}': schema '{native.name}' cannot be sent to "
                        f"'{target.model.provider}' in OpenAI's strict mode ({native.why_not}); "
                        "change the schema, or leave `enforce` out to send it with strict false",
                        "output",
                        "enforce",
                    )
                )
                return

    def cache(self, e: Entry, models: dict[str, Model]) -> CachePolicy | None:
        name = e.body.get("cache")
        if name is None:
            return None
        entry = self.sections["cache"].get(name)
        if entry is None:
            if not self.missing("cache", name):
                return None
            self.problems.append(
                e.problem(
                    f"route '{e.name}' uses cache '{name}', which is not defined "
                    f"(cache: {names(self.sections['cache'])})",
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
            elif self.missing("models", sem["model"]):
                self.problems.append(
                    entry.problem(
                        f"cache '{name}' embeds with model '{sem['model']}', which is not defined",
                        "semantic",
                        "model",
                    )
                )
            else:
                embedding = models.get(sem["model"])
        store = b.get("store", "memory")
        url = b.get("url")
        if store == "redis" and url is None:
            url = self._state_url()
            if url is None and not self.left_out.excuses("state", "state"):
                self.problems.append(
                    entry.problem(f"cache '{name}': store redis needs a url (or state.url)")
                )
        return CachePolicy(
            name=name,
            semantic=semantic,
            ttl=seconds(b.get("ttl"), 3600.0),
            max_entries=b.get("max_entries", 10_000),
            max_bytes=b.get("max_bytes"),
            store=store,
            url=url,
            scope=b.get("scope", "user"),
            any_temperature=b.get("any_temperature", True),
            embedding=embedding,
            similarity=float(sem.get("similarity", 0.95)),
            whole_conversation=sem.get("input", "last_user") == "conversation",
            **_cache_checks(b.get("tools", "text"), sem),
        )

    def _state_url(self) -> str | None:
        entry = self.sections["state"].get("state")
        return entry.body.get("url") if entry else None


def _cache_checks(tools: Any, sem: Mapping[str, Any]) -> dict[str, Any]:
    """CachePolicy's issue 23/24 fields: the tools rule, the guards, verification."""
    out: dict[str, Any] = {}
    if isinstance(tools, list):
        out["replay_tools"] = frozenset(tools)
    else:  # true is the spelling `always` had before it had a name
        out["tools"] = {False: "never", True: "always"}.get(tools, tools)
    if "guards" in sem:
        out["guards"] = compile_guards(sem["guards"])
    if sem.get("verify_sample"):
        out["verify"] = Verify(
            float(sem["verify_sample"]),
            float(sem.get("min_agreement", 0.9)),
            int(sem.get("verify_window", 100)),
            sem.get("on_low_agreement", "tighten") == "tighten",
        )
    return out
