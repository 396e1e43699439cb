"""Compile a route's model selection: `select:` (tiers, the rules and the classifier that
choose one before the call, sticky conversations) and `cascade:` (what an answer must pass
before the next tier is spared). A mixin of the policy compiler, like compile_stages.

A route with `cascade:` and plain `targets` gets one tier per target, cheapest first as
written: the cascade is then a ladder of models. Everything here is resolved at reload:
regular expressions compiled, tiers ranked, examples read and checked line by line.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from typing import Any

from sidecar.policy.entry import Entry, LeftOut, names, seconds
from sidecar.policy.examples import read_examples
from sidecar.policy.model import (
    Acceptance,
    ClassifierSpec,
    Model,
    ProviderConfig,
    Selection,
    Target,
    Tier,
    TierRule,
)
from sidecar.policy.problems import Problem
from sidecar.policy.source import SourceFile

# What an answer that declines or hedges looks like, when `refusal: true` (the default).
REFUSALS = (
    r"^\s*(?:I'?m|I am) (?:sorry|afraid)\b",
    r"^\s*I (?:can(?:no|')t|cannot|am (?:not able|unable)|won'?t) (?:help|assist|answer|"
    r"provide|do|comply|fulfil)",
    r"^\s*(?:I'?m|I am) not (?:sure|certain)\b",
    r"^\s*As an AI\b",
)
_CONDITIONS = (
    "min_input_tokens",
    "max_input_tokens",
    "min_turns",
    "max_turns",
    "tools",
    "images",
    "response_format",
    "keywords",
    "regex",
)

TargetsOf = Callable[[list[Any], str], list[Target]]  # raw target list, path → targets


class SelectSections:
    problems: list[Problem]
    left_out: LeftOut
    data: Mapping[str, SourceFile]

    def selection(
        self,
        e: Entry,
        targets_of: TargetsOf,
        models: dict[str, Model],
        providers: dict[str, ProviderConfig],
    ) -> tuple[Selection | None, list[Target]]:
        """The route's selection and its targets, every tier's, cheapest first."""
        b = e.body
        raw, cascade = b.get("select"), b.get("cascade")
        if raw is None:  # the structure check made sure of one of the two
            targets = targets_of(b["targets"], "targets")
            if cascade is None:
                return None, targets
            route_wide = self._acceptance(e, cascade, ("cascade",))
            tiers = tuple(
                Tier(t.model.name, i, (t,), route_wide if i < len(targets) - 1 else None)
                for i, t in enumerate(targets)
            )
            self._logprobs(e, tiers, providers)
            by_name = {t.name: t.rank for t in tiers}
            return Selection(tiers, 0, by_name=by_name), targets
        route_wide = self._acceptance(e, cascade, ("cascade",)) if cascade is not None else None
        tiers_raw: dict[str, Any] = raw["tiers"]
        tiers: list[Tier] = []
        for rank, (name, tier) in enumerate(tiers_raw.items()):
            top = rank == len(tiers_raw) - 1
            own = tier.get("cascade")
            if own is not None and own is not False and top:
                self.problems.append(
                    e.problem(
                        f"route '{e.name}': tier '{name}' is the top tier; its answers have "
                        "no tier to escalate to, so a cascade there checks nothing",
                        "select",
                        "tiers",
                        name,
                        "cascade",
                    )
                )
            accept = None
            if own is not None and own is not False:
                accept = self._acceptance(e, own, ("select", "tiers", name, "cascade"))
            elif own is None and not top:
                accept = route_wide
            found = targets_of(tier["targets"], f"select.tiers.{name}.targets")
            tiers.append(Tier(name, rank, tuple(found), accept))
        by_name = {t.name: t.rank for t in tiers}
        default = len(tiers) - 1
        if "default" in raw:
            default = self._tier(e, by_name, raw["default"], ("select", "default"), default)
        rules = tuple(
            self._rule(e, by_name, rule, i) for i, rule in enumerate(raw.get("rules") or ())
        )
        classifier = None
        if "classifier" in raw:
            classifier = self._classifier(e, raw["classifier"], by_name, models, providers)
        sticky = seconds(raw.get("sticky"), 0.0) or None
        self._logprobs(e, tiers, providers)
        selection = Selection(tuple(tiers), default, rules, classifier, sticky, by_name)
        every = list({t.model.name: t for tier in tiers for t in tier.targets}.values())
        return selection, every

    def _tier(
        self, e: Entry, by_name: Mapping[str, int], name: str, path: tuple[Any, ...], fallback: int
    ) -> int:
        if name in by_name:
            return by_name[name]
        self.problems.append(
            e.problem(f"route '{e.name}': no tier '{name}' (tiers: {', '.join(by_name)})", *path)
        )
        return fallback

    def _rule(self, e: Entry, by_name: Mapping[str, int], raw: dict[str, Any], i: int) -> TierRule:
        path = ("select", "rules", i)
        rank = self._tier(e, by_name, raw["tier"], (*path, "tier"), 0)
        if not any(k in raw for k in _CONDITIONS):
            self.problems.append(
                e.problem(
                    f"route '{e.name}': rule {i + 1} has no condition (give one of "
                    f"{', '.join(_CONDITIONS)}); the default tier is `select.default`",
                    *path,
                )
            )
        patterns = []
        if "keywords" in raw:
            words = "|".join(re.escape(w) for w in raw["keywords"])
            patterns.append(re.compile(rf"(?<!\w)(?:{words})(?!\w)", re.IGNORECASE))
        if "regex" in raw:
            try:
                patterns.append(re.compile(raw["regex"]))
            except re.error as exc:
                self.problems.append(
                    e.problem(f"route '{e.name}': rule {i + 1}: bad regex ({exc})", *path, "regex")
                )
        return TierRule(
            rank=rank,
            min_input_tokens=raw.get("min_input_tokens"),
            max_input_tokens=raw.get("max_input_tokens"),
            min_turns=raw.get("min_turns"),
            max_turns=raw.get("max_turns"),
            tools=raw.get("tools"),
            images=raw.get("images"),
            response_format=raw.get("response_format"),
            patterns=tuple(patterns),
        )

    def _acceptance(self, e: Entry, raw: dict[str, Any], path: tuple[Any, ...]) -> Acceptance:
        refusal = raw.get("refusal", True)
        written = tuple(REFUSALS) if refusal is True else tuple(refusal or ())
        compiled = None
        if written:
            try:
                compiled = re.compile("|".join(f"(?:{p})" for p in written), re.IGNORECASE)
            except re.error as exc:
                self.problems.append(
                    e.problem(f"route '{e.name}': a refusal pattern is not valid ({exc})", *path)
                )
        return Acceptance(
            schema=raw.get("schema", True),
            finish=raw.get("finish", True),
            empty=raw.get("empty", True),
            refusal=compiled,
            refusal_patterns=written,
            min_logprob=raw.get("min_logprob"),
            stream=raw.get("stream", "buffer"),
        )

    def _logprobs(
        self, e: Entry, tiers: tuple[Tier, ...] | list[Tier], providers: dict[str, ProviderConfig]
    ) -> None:
        """`min_logprob` asks for logprobs, which only OpenAI-compatible servers return."""
        for tier in tiers:
            if tier.accept is None or tier.accept.min_logprob is None:
                continue
            for target in tier.targets:
                provider = providers.get(target.model.provider)
                if provider is not None and provider.type == "anthropic":
                    self.problems.append(
                        e.problem(
                            f"route '{e.name}': tier '{tier.name}' checks min_logprob, but "
                            f"'{target.model.name}' is an Anthropic model, which returns no "
                            "logprobs; drop min_logprob for this tier (cascade: {...} on it)",
                            "select" if "select" in e.body else "cascade",
                        )
                    )

    def _classifier(
        self,
        e: Entry,
        raw: dict[str, Any],
        by_name: Mapping[str, int],
        models: dict[str, Model],
        providers: dict[str, ProviderConfig],
    ) -> ClassifierSpec | None:
        path = ("select", "classifier")
        model = models.get(raw["model"])
        if model is None:
            if self.left_out.excuses("models", raw["model"]):
                return None
            self.problems.append(
                e.problem(
                    f"route '{e.name}': the classifier embeds with model '{raw['model']}', "
                    f"which is not defined (models: {names(models)})",
                    *path,
                    "model",
                )
            )
            return None
        provider = providers.get(model.provider)
        if provider is not None and provider.type == "anthropic":
            self.problems.append(
                e.problem(
                    f"route '{e.name}': the classifier needs an embeddings model; "
                    f"'{model.name}' is an Anthropic model, which serves none",
                    *path,
                    "model",
                )
            )
            return None
        file = raw["examples"].removeprefix("./")
        source = self.data.get(file)
        if source is None:
            if self.left_out.partial:
                return None  # the folder could not be read whole: it may be what is missing
            self.problems.append(
                e.problem(
                    f"route '{e.name}': examples file '{file}' is not in the policy folder "
                    f"(data files: {', '.join(sorted(self.data)) or 'none'})",
                    *path,
                    "examples",
                )
            )
            return None
        examples = read_examples(source, by_name, self.problems)
        if examples is None:
            return None
        identity = f"{provider.base_url if provider else ''}\0{model.upstream}"
        digest = hashlib.sha256(identity.encode())
        for text in examples.texts:
            digest.update(b"\0" + text.encode())
        return ClassifierSpec(
            route=e.name,
            model=model,
            file=file,
            texts=examples.texts,
            labels=examples.labels,
            k=raw.get("k", 5),
            margin=float(raw.get("margin", 0.2)),
            key=digest.hexdigest()[:16],
        )
