"""Trimming a conversation to a route's input budget (`prompt.max_input_tokens`).

A conversation is cut into turns: a turn starts at a user message and holds everything up
to the next one (the assistant's answer, its tool calls and their results), so dropping
whole turns never separates a tool call from its result. System (and developer) messages
are kept where they are, and so is the newest turn, which holds the last user message.
The oldest turns go first until the estimate fits; with `keep_first`, the first turn (often
the task itself) goes last. Counts are the estimator's (sidecar/tokens.py: 4 characters a
token plus each message's framing): what is dropped is also measured in characters, so the
ledger can price it at the request's own tokens per character once the provider has
counted what was sent (`pipeline/prepare.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sidecar.tokens import estimate_message

SYSTEM_ROLES = frozenset({"system", "developer"})


@dataclass(frozen=True, slots=True)
class Trimmed:
    messages: list[Any]  # what is sent
    dropped: int  # messages removed
    tokens: int  # estimated tokens removed
    chars: int  # characters removed
    kept_chars: int  # characters of the messages sent


class TooLong(Exception):
    """Even the system prompt and the newest turn exceed the budget."""

    def __init__(self, needed: int) -> None:
        super().__init__(needed)
        self.needed = needed  # estimated tokens of what cannot be dropped


def trim(messages: Sequence[Any], budget: int, overhead: int, keep_first: bool) -> Trimmed | None:
    """`messages` within `budget` estimated tokens (`overhead`: the request's tokens outside
    its messages), or None when they fit already. Raises TooLong."""
    sizes = [estimate_message(m) for m in messages]
    total = overhead + sum(sizes)
    if total <= budget:
        return None
    turns = _turns(messages)
    droppable = turns[:-1]
    if keep_first and droppable and _role(messages[droppable[0][0]]) == "user":
        droppable = [*droppable[1:], droppable[0]]
    dropped: set[int] = set()
    for turn in droppable:
        if total <= budget:
            break
        dropped.update(turn)
        total -= sum(sizes[i] for i in turn)
    if total > budget:
        raise TooLong(total)
    kept = [m for i, m in enumerate(messages) if i not in dropped]
    return Trimmed(
        kept,
        len(dropped),
        sum(sizes[i] for i in dropped),
        sum(message_chars(messages[i]) for i in dropped),
        sum(message_chars(m) for m in kept),
    )


def _turns(messages: Sequence[Any]) -> list[list[int]]:
    """The indices of each turn's messages, oldest first (system messages in none). Messages
    before the first user message (an assistant's greeting) are a turn of their own."""
    turns: list[list[int]] = []
    for i, m in enumerate(messages):
        role = _role(m)
        if role in SYSTEM_ROLES:
            continue
        if role == "user" or not turns:
            turns.append([i])
        else:
            turns[-1].append(i)
    return turns


def _role(m: Any) -> str:
    return str(m.get("role")) if isinstance(m, dict) else ""


def message_chars(m: Any) -> int:
    """The characters of a message's text and tool calls (its images count as none)."""
    if not isinstance(m, dict):
        return 0
    content = m.get("content")
    chars = 0
    if isinstance(content, str):
        chars = len(content)
    elif isinstance(content, list):
        chars = sum(len(str(p.get("text", ""))) for p in content if isinstance(p, dict))
    for call in m.get("tool_calls") or ():
        chars += len(str(call))
    return chars
