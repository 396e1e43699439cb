"""Mutable runtime state, behind small interfaces, keyed by stable names so it survives
reloads. The request path touches state only through these and the policy snapshot."""

from __future__ import annotations

from dataclasses import dataclass, field

from sidecar.stores.breakers import Breakers


@dataclass(slots=True)
class Stores:
    """Everything mutable that outlives one request; one instance per process."""

    breakers: Breakers = field(default_factory=Breakers)
