"""Mutable runtime state, behind small interfaces, keyed by stable names so it survives
reloads. The request path touches state only through these and the policy snapshot."""

from __future__ import annotations

from dataclasses import dataclass, field

from sidecar.stores.answer_sizes import AnswerSizes
from sidecar.stores.breakers import Breakers
from sidecar.stores.caches import Caches
from sidecar.stores.classifiers import Classifiers
from sidecar.stores.lines import Lines
from sidecar.stores.micro_batches import MicroBatches
from sidecar.stores.settlements import Settlements
from sidecar.stores.shadows import Shadows
from sidecar.stores.validators import Validators


@dataclass(slots=True)
class Stores:
    """Process-local runtime state that outlives one request; one instance per process.
    Shared state (spend, rates) lives in the snapshot's `State` backend instead."""

    breakers: Breakers = field(default_factory=Breakers)
    validators: Validators = field(default_factory=Validators)
    caches: Caches = field(default_factory=Caches)
    lines: Lines = field(default_factory=Lines)
    settlements: Settlements = field(default_factory=Settlements)
    answer_sizes: AnswerSizes = field(default_factory=AnswerSizes)
    micro_batches: MicroBatches = field(default_factory=MicroBatches)  # embeddings calls
    classifiers: Classifiers = field(default_factory=Classifiers)
    shadows: Shadows = field(default_factory=Shadows)
