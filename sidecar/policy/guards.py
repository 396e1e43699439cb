"""Semantic cache guards: the tokens that make an answer specific to its question.

Embeddings place "Where is order 12345?" and "Where is order 12346?" almost on top of each
other (a real embedder barely moves for a changed number), yet each needs its own answer.
So a semantic hit also needs the same specific tokens in both prompts, compared exactly:
numbers, amounts, dates, identifiers, quoted strings, e-mail addresses, URLs and, when the
policy asks, capitalised names. The tokens are read from the text that was embedded, once
per request: the signature is stored beside the entry's vector and compared with the
lookup's own.

One regular expression per guard set, compiled at reload: alternatives in priority order
(a quoted string swallows the number inside it, a date its digits, an amount its number),
so each span of text counts once. Tokens are normalised where two spellings surely mean
the same (case; `two` = `2`; `1,200` = `1200`; `$1,200.50` = `1200.50 dollars`; `March 5,
2024` = `2024-03-05`) and kept in order of first appearance per kind, so "from A to B" and
"from B to A" differ. What is not normalised (`12/05/2024`, which may be either day
first) must match as written: a paraphrase that writes a token another way is a miss.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# In the order a mismatch is reported (the first kind that differs names the reason).
KINDS = ("numbers", "amounts", "dates", "ids", "quoted", "emails", "urls", "names")
# Names are off by default: a capitalised word is often nothing specific ("Python").
DEFAULT_KINDS = KINDS[:-1]

Signature = tuple[tuple[str, tuple[str, ...]], ...]  # (kind, tokens), kinds that have any

_MONTHS = (
    r"jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
    r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?"
)
_DAY = r"\d{1,2}(?:st|nd|rd|th)?"
_NUMBER = r"\d+(?:[.,]\d+)*"
_CURRENCY_WORDS = r"usd|eur|gbp|chf|jpy|inr|dollars?|euros?|pounds?|cents?|bucks"
_CURRENCIES = {"$": "usd", "€": "eur", "£": "gbp", "¥": "jpy", "₹": "inr", "dollar": "usd"}
_CURRENCIES |= {"dollars": "usd", "bucks": "usd", "euro": "eur", "euros": "eur"}
_CURRENCIES |= {"pound": "gbp", "pounds": "gbp"}
_WORDS = (
    "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
    "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty",
)  # fmt: skip
_TENS = ("thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_AS_DIGITS = {w: str(n) for n, w in enumerate(_WORDS, 2)} | {"dozen": "12"}
_AS_DIGITS |= {w: str(30 + 10 * n) for n, w in enumerate(_TENS)}
_NUMBER_WORDS = "|".join([*_AS_DIGITS, "hundred", "thousand", "million", "billion", "half"])

# Alternatives in priority order; each a named group whose name is its kind.
_PARTS = {
    "quoted": r'"[^"\n]{1,300}"|“[^”\n]{1,300}”|«[^»\n]{1,300}»|`[^`\n]{1,300}`'
    r"|(?<!\w)'[^'\n]{1,300}'(?!\w)",
    "urls": r"\b(?:https?|ftp)://[^\s<>\"'`)\]]+|\bwww\.[^\s<>\"'`)\]]+",
    "emails": r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+",
    "dates": rf"\b\d{{4}}-\d{{1,2}}-\d{{1,2}}\b|\b\d{{1,2}}[/.]\d{{1,2}}[/.]\d{{2,4}}\b"
    rf"|(?i:\b(?:{_MONTHS})\.?\s+{_DAY}(?:,?\s+\d{{4}})?\b)"
    rf"|(?i:\b{_DAY}\s+(?:of\s+)?(?:{_MONTHS})\b(?:,?\s+\d{{4}})?)"
    # Bare month and day names, capitalised; not "May", which begins questions ("May I").
    r"|\b(?:January|February|March|April|June|July|August|September|October|November"
    r"|December|Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)\b"
    r"|(?i:\b(?:today|tomorrow|yesterday|tonight)\b)",
    "amounts": rf"[$€£¥₹]\s?{_NUMBER}(?:\s?(?i:k|m|bn)\b)?"
    rf"|\b{_NUMBER}\s?(?i:{_CURRENCY_WORDS})\b",
    # Letters and digits mixed (C1234, LH400, AC-9921, b7f3e21), not a number and its unit
    # (30-year: the number 30, as "30 year" is).
    "ids": r"\b(?!\d+-[A-Za-z]+\b)(?=[A-Za-z0-9_-]*\d)(?=[A-Za-z0-9_-]*[A-Za-z])"
    r"[A-Za-z0-9]+(?:[-_][A-Za-z0-9]+)*\b",
    "numbers": rf"(?<![\w.]){_NUMBER}%?|(?i:\b(?:{_NUMBER_WORDS})\b)",
    "names": r"\b[A-Z][a-z]+(?:[ -][A-Z][a-z]+)*\b|\b[A-Z]{2,}\b",
}
_PRIORITY = ("quoted", "urls", "emails", "dates", "amounts", "ids", "numbers", "names")
_DIGITS = re.compile(_NUMBER)
_AMOUNT = re.compile(rf"([$€£¥₹])?\s?({_NUMBER})\s?(k|m|bn|[a-z]+)?")
_ISO = re.compile(r"(\d{4})-(\d{1,2})-(\d{1,2})$")
_NAMED = re.compile(
    rf"(?:({_MONTHS})\.?\s+({_DAY})|({_DAY})\s+(?:of\s+)?({_MONTHS}))(?:,?\s+(\d{{4}}))?$"
)
_MONTHS3 = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_MONTH = {m: i for i, m in enumerate(_MONTHS3, 1)}
_SENTENCE_END = frozenset(".!?:;\n")


@dataclass(frozen=True, slots=True)
class Guards:
    """The guard kinds a semantic cache compares, with their expression compiled."""

    kinds: tuple[str, ...]  # in KINDS order
    pattern: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    def signature(self, text: str) -> Signature:
        """The specific tokens of `text`, per kind."""
        if self.pattern is None:
            return ()
        found: dict[str, dict[str, None]] = {}
        for match in self.pattern.finditer(text):
            kind = match.lastgroup
            assert kind is not None
            if kind == "names" and _starts_sentence(text, match.start()):
                continue
            found.setdefault(kind, {})[_normal(kind, match.group())] = None
        return tuple((kind, tuple(found[kind])) for kind in KINDS if kind in found)


def compile_guards(kinds: tuple[str, ...] | list[str]) -> Guards:
    wanted = tuple(k for k in KINDS if k in kinds)
    if not wanted:
        return Guards(())
    body = "|".join(f"(?P<{k}>{_PARTS[k]})" for k in _PRIORITY if k in wanted)
    return Guards(wanted, re.compile(body))


DEFAULT_GUARDS = compile_guards(DEFAULT_KINDS)


def mismatch(mine: Signature, theirs: Signature) -> str | None:
    """The first kind whose tokens differ between two signatures, or None when they agree."""
    if mine == theirs:
        return None
    a, b = dict(mine), dict(theirs)
    return next(k for k in KINDS if a.get(k) != b.get(k))


def _normal(kind: str, token: str) -> str:
    token = token.lower()
    if kind == "numbers":  # two = 2, 1,200 = 1200
        return _AS_DIGITS.get(token) or _DIGITS.sub(_number, token)
    if kind == "amounts":  # $12.50 = $ 12.5 = 12.50 dollars = 12.5usd
        return _amount(token)
    if kind == "dates":  # March 5, 2024 = 5 march 2024 = 2024-3-5 = 2024-03-05
        return _date(token)
    return token


def _amount(token: str) -> str:
    found = _AMOUNT.fullmatch(token)
    if found is None:
        return token.replace(" ", "")
    symbol, number, word = found.groups()
    scale = word if word in ("k", "m", "bn") else ""
    currency = _CURRENCIES.get(symbol or "") or _CURRENCIES.get(word or "") or word or ""
    return _cents(_DIGITS.sub(_number, number)) + scale + (currency if currency != scale else "")


def _date(token: str) -> str:
    iso = _ISO.match(token)
    if iso is not None:
        year, month, day = iso.groups()
        return f"{year}-{int(month):02d}-{int(day):02d}"
    named = _NAMED.match(token)
    if named is None:
        return token
    month_a, day_a, day_b, month_b, year = named.groups()
    month = _MONTH[(month_a or month_b)[:3]]
    day = int((day_a or day_b).rstrip("stndrh"))
    return f"{year + '-' if year else ''}{month:02d}-{day:02d}"


def _number(match: re.Match[str]) -> str:
    """1,200 = 1200; a lone comma with one or two digits after it is a decimal comma.
    Digits are kept otherwise: 3.10 and 3.1 may be versions, 007 a code."""
    raw = match.group()
    head, sep, tail = raw.rpartition(",")
    if sep and "." not in raw and len(tail) <= 2:
        return head.replace(",", "") + "." + tail
    return raw.replace(",", "")


def _cents(number: str) -> str:
    return number.rstrip("0").rstrip(".") if "." in number else number


def _starts_sentence(text: str, at: int) -> bool:
    before = text[:at].rstrip(" \t\"'“(«")
    return not before or before[-1] in _SENTENCE_END
