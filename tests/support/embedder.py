"""A deterministic embedder for tests and the guards benchmark: bags of concepts, no model.

Words fold into concepts through a small table of synonyms (so the paraphrases of the
labelled set, tests/data/semantic_pairs.jsonl, land close together) and stop words drop
out. What makes a question specific weighs little, as in real embedders, which barely move
for a changed number: numbers, identifiers, amounts, e-mail addresses, URLs and the words
inside quotes weigh 0.15, capitalised names 0.4, other concepts 1. So near misses (another
order number, date, quoted string) land at ~0.99, closer than any useful threshold: only
the guards can tell them apart. `FakeOpenAI.embedder = concepts` answers with it.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

DIMS = 256
SPECIFIC = 0.15
NAME = 0.4

_FOLD = {
    "status": "where", "track": "where", "follow": "where", "parcel": "package",
    "price": "cost", "charge": "cost", "much": "cost", "costs": "cost",
    "back": "return", "bought": "buy", "purchased": "buy",
    "deliver": "ship", "shipping": "ship", "delivery": "ship", "many": "",
    "refunds": "refund", "work": "policy", "end": "cancel", "please": "",
    "email": "send", "summary": "summarise", "give": "", "in": "",
    "say": "translate", "reserve": "book", "people": "", "power": "electricity",
    "move": "transfer", "into": "", "delayed": "on_time", "time": "on_time",
    "hours": "open", "opening": "open", "holiday": "vacation", "days": "vacation",
    "remaining": "left", "mean": "explain", "euros": "eur", "forecast": "weather",
    "rain": "weather", "assigned": "tickets", "remind": "reminder", "set": "reminder",
    "long": "warranty", "update": "change", "need": "", "address": "address",
    "city": "capital", "code": "function", "reverses": "reverse", "shop": "store",
    "successful": "go_through", "go": "go_through", "through": "go_through",
    "date": "", "find": "show", "generate": "write", "query": "sql", "counts": "count",
    "counting": "count", "printed": "printed", "came": "arrived", "broken": "damaged",
    "now": "", "should": "", "get": "arrive", "accept": "pay", "payment": "pay",
    "unsubscribe": "remove", "list": "newsletter", "current": "", "calories": "calories",
}  # fmt: skip
_STOP_WORDS = (
    "a an the is are my me i of to for do does you your can what which how this that it and "
    "or with from on in at be by was were will when any all as am has have had what's it's "
    "there their them they we us our its possible s t d ll re ve m"
)
_STOP = frozenset(_STOP_WORDS.split())
_SPANS = re.compile(
    r"(?P<quoted>\"[^\"]*\"|'[^']*'|`[^`]*`)"
    r"|(?P<address>\S+@\S+|https?://\S+|www\.\S+)"
    r"|(?P<specific>[$€£#]?\w*\d[\w,.-]*)"
    r"|(?P<word>[A-Za-z]+)"
)


def _vector(concept: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(concept.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(DIMS)


def concepts(text: str) -> list[float]:
    """A unit vector for `text`."""
    weights: dict[str, float] = {}
    sentence_start = True
    for match in _SPANS.finditer(text):
        kind, token = match.lastgroup, match.group()
        if kind == "quoted":
            for word in re.findall(r"\w+", token.lower()):
                weights[word] = max(weights.get(word, 0.0), SPECIFIC)
        elif kind in ("address", "specific"):
            weights[token.lower().rstrip(".,?")] = SPECIFIC
        else:
            word = token.lower()
            name = token[0].isupper() and not sentence_start
            concept = _FOLD.get(word, word)
            if concept and word not in _STOP:
                weights[concept] = max(weights.get(concept, 0.0), NAME if name else 1.0)
        sentence_start = text[match.end() : match.end() + 1] in (".", "?", "!")
    vector = np.zeros(DIMS)
    for concept, weight in weights.items():
        vector += weight * _vector(concept)
    norm = float(np.linalg.norm(vector)) or 1.0
    return [round(float(v), 6) for v in vector / norm]
