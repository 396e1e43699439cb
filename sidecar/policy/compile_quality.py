"""Compile what quality needs: the `quality:` section (refusal patterns, app feedback) and
a route's `shadow:` trial. A mixin of the policy compiler, like `compile_stages`."""

from __future__ import annotations

import re
from collections.abc import Callable

from sidecar.policy.entry import Entry, LeftOut, names, seconds
from sidecar.policy.model import (
    DEFAULT_REFUSALS,
    Model,
    QualityConfig,
    ShadowPolicy,
    Target,
    refusal_pattern,
)
from sidecar.policy.problems import Problem


class QualitySections:
    sections: dict[str, dict[str, Entry]]
    problems: list[Problem]
    left_out: LeftOut
    missing: Callable[[str, str], bool]  # StageSections'

    def quality(self) -> QualityConfig:
        entry = self.sections["quality"].get("quality")
        if entry is None:
            return QualityConfig()
        b = entry.body
        patterns = tuple(b.get("refusals", DEFAULT_REFUSALS))
        for i, pattern in enumerate(patterns):
            try:
                re.compile(f"(?:{pattern})")  # as `refusal_pattern` joins them
            except re.error as exc:
                self.problems.append(
                    entry.problem(
                        f"quality.refusals[{i}] is not a regular expression: {exc}", "refusals", i
                    )
                )
                patterns = ()
        feedback = b.get("feedback") or {}
        return QualityConfig(
            refusal=refusal_pattern(patterns),
            feedback_ttl=seconds(feedback.get("ttl"), 3600.0),
            labels=frozenset(feedback.get("labels") or ()),
        )

    def shadow(
        self, e: Entry, models: dict[str, Model], targets: list[Target], timeout: float
    ) -> ShadowPolicy | None:
        b = e.body.get("shadow")
        if b is None:
            return None
        candidates: list[Model] = []
        for i, name in enumerate(b["candidates"]):
            if name in models:
                if targets and targets[0].model.name == name:
                    self.problems.append(
                        e.problem(
                            f"route '{e.name}': shadow candidate '{name}' is the route's first "
                            "target, which answers already; a trial compares another model",
                            "shadow",
                            "candidates",
                            i,
                        )
                    )
                elif name not in (c.name for c in candidates):
                    candidates.append(models[name])
            elif self.missing("models", name):
                self.problems.append(
                    e.problem(
                        f"route '{e.name}' shadows model '{name}', which is not defined "
                        f"(models: {names(models)})",
                        "shadow",
                        "candidates",
                        i,
                    )
                )
        compare = b.get("compare") or {}
        embedding = compare.get("embedding")
        if embedding is not None and self.missing("models", embedding):
            self.problems.append(
                e.problem(
                    f"route '{e.name}': shadow compares with embedding model '{embedding}', "
                    f"which is not defined (models: {names(models)})",
                    "shadow",
                    "compare",
                    "embedding",
                )
            )
        return ShadowPolicy(
            candidates=tuple(candidates),
            max_usd_per_day=float(b["max_usd_per_day"]),
            sample=float(b.get("sample", 0.05)),
            max_concurrent=b.get("max_concurrent", 4),
            timeout=seconds(b.get("timeout"), timeout),
            embedding=models.get(embedding) if embedding else None,
            similarity=float(compare.get("similarity", 0.9)),
        )
