"""Waiting lines for requests over a limit: FIFO within a priority, lower number first.

Only the head of a line tries the limit again, so later arrivals never overtake it; it is
woken when this process frees capacity (a slot released, the head leaving) or when the
store says a rate allows one more. Lines are per process; the limit itself is enforced by
the store, so across replicas the order is per replica.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools


class Ticket:
    __slots__ = ("event", "order")

    def __init__(self, order: tuple[int, int]) -> None:
        self.order = order
        self.event = asyncio.Event()

    def __lt__(self, other: Ticket) -> bool:
        return self.order < other.order


class Line:
    __slots__ = ("_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[Ticket] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def join(self, priority: int) -> Ticket:
        ticket = Ticket((priority, next(self._seq)))
        heapq.heappush(self._heap, ticket)
        if self._heap[0] is ticket:
            ticket.event.set()
        return ticket

    def is_head(self, ticket: Ticket) -> bool:
        return bool(self._heap) and self._heap[0] is ticket

    def leave(self, ticket: Ticket) -> None:
        try:
            self._heap.remove(ticket)
        except ValueError:
            return
        heapq.heapify(self._heap)
        self.wake()

    def wake(self) -> None:
        if self._heap:
            self._heap[0].event.set()


class Lines:
    def __init__(self) -> None:
        self._lines: dict[str, Line] = {}

    def get(self, key: str) -> Line:
        line = self._lines.get(key)
        if line is None:
            line = self._lines[key] = Line()
        return line

    def wake(self, key: str) -> None:
        line = self._lines.get(key)
        if line is not None:
            line.wake()

    def waiting(self) -> dict[str, int]:
        return {k: len(v) for k, v in self._lines.items() if len(v)}
