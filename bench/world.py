"""The savings benchmark's world: a shop, its support assistant's tasks, and the one right
answer to each question, which the fake providers give and the oracle checks.

Everything derives from one seed, so bench/savings.py (which builds the requests and
judges the answers) and bench/fake_llm.py (which answers them) agree without sharing
state. A question is a task's phrasing with its slots filled (an order number, a product,
a country, a review); `parse` recovers task and slots from the text alone, as a model
would have to, so a cached answer to another question is judged on what was asked.

The large model answers every task right. The small one answers simple tasks right and
complex ones wrong in a way the oracle sees: a wrong value in the same sentence (so its
answer is about as long as the right one), a bug in the code, JSON that breaks the schema,
and sometimes a hedge ("I am not sure, but ...").
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

TODAY = dt.date(2024, 6, 14)  # what "within 30 days" is counted from
HEDGE = "I am not sure, but "

PRODUCTS = {
    "trail runner shoes": 89.0,
    "rain shell jacket": 149.0,
    "merino base layer": 65.0,
    "down sleeping bag": 229.0,
    "two person tent": 319.0,
    "trekking poles": 54.5,
    "insulated bottle": 24.0,
    "headlamp": 39.9,
    "camp stove": 74.0,
    "daypack": 99.0,
    "hiking socks": 16.5,
    "fleece pullover": 79.0,
    "sun hat": 29.0,
    "water filter": 44.0,
    "camp chair": 59.0,
    "gaiters": 35.0,
}
SHIPS_TO = {
    "Canada": 4, "Mexico": 6, "Germany": 7, "France": 7, "Spain": 8, "Italy": 8,
    "Japan": 9, "Australia": 10, "Ireland": 7, "Sweden": 8,
}  # fmt: skip
NO_SHIPPING = ("Brazil", "India", "Argentina", "Egypt", "Nigeria", "Chile")
CARRIERS = ("UPS", "DHL", "FedEx", "USPS")
STATUSES = ("processing", "shipped", "delivered", "delivered", "cancelled")
SPEEDS = {"standard": 5, "express": 2}
GOOD = (
    "Love the {p}, it exceeded my expectations {u}",
    "The {p} is excellent and well made, I used it {u}",
    "Great {p}, comfortable and sturdy {u}",
)
BAD = (
    "The {p} broke {u}, very disappointed",
    "Terrible {p}, it fell apart {u}",
    "I regret buying the {p}, it leaked {u}",
)
MEH = (
    "The {p} is fine, nothing special, used it {u}",
    "The {p} does the job {u}, average quality",
    "The {p} is okay {u}, but a bit heavy",
)
USES = (
    "on a weekend trip",
    "on my first hike",
    "after two weeks",
    "in the rain",
    "on a family camping trip",
    "in the mountains",
)


@dataclass(frozen=True)
class Order:
    id: str
    customer: str
    product: str
    qty: int
    date: dt.date
    status: str
    carrier: str

    @property
    def total(self) -> float:
        return round(self.qty * PRODUCTS[self.product], 2)


class World:
    def __init__(self, seed: int, customers: int = 400) -> None:
        rng = random.Random(seed)
        self.orders: dict[str, Order] = {}
        self.by_customer: dict[str, list[Order]] = {}
        ids = rng.sample(range(10000, 99999), customers * 4)
        for c in range(customers):
            customer = f"C{1000 + c}"
            for _ in range(rng.choice((3, 3, 4))):
                order = Order(
                    str(ids.pop()),
                    customer,
                    rng.choice(list(PRODUCTS)),
                    rng.randint(1, 4),
                    TODAY - dt.timedelta(days=rng.randint(1, 60)),
                    rng.choice(STATUSES),
                    rng.choice(CARRIERS),
                )
                self.orders[order.id] = order
                self.by_customer.setdefault(customer, []).append(order)
        self.reviews: dict[str, str] = {}
        for product in PRODUCTS:
            for label, texts in (("positive", GOOD), ("negative", BAD), ("neutral", MEH)):
                for text in texts:
                    for use in USES:
                        self.reviews[text.format(p=product, u=use)] = label


# -- tasks ----------------------------------------------------------------------------------

SENTIMENT = {
    "type": "object",
    "required": ["label"],
    "properties": {"label": {"enum": ["positive", "neutral", "negative"]}},
    "additionalProperties": False,
}
EXTRACTION = {
    "type": "object",
    "required": ["order_id", "amount"],
    "properties": {"order_id": {"type": "string"}, "amount": {"type": "number"}},
}
SUMMARY = {
    "type": "object",
    "required": ["order_id", "product", "total", "refundable"],
    "properties": {
        "order_id": {"type": "string"},
        "product": {"type": "string"},
        "total": {"type": "number"},
        "refundable": {"type": "boolean"},
    },
}


@dataclass(frozen=True)
class Task:
    name: str
    complex: bool
    phrasings: tuple[str, ...]  # the first is the one most people use
    right: Callable[[World, dict[str, str]], str]
    wrong: Callable[[World, dict[str, str]], str] | None = None  # the small model's
    schema: dict[str, Any] | None = None  # answers are JSON: asked with response_format


def _status(w: World, s: dict[str, str]) -> str:
    o = w.orders[s["order"]]
    if o.status == "shipped":
        return f"Order {o.id} shipped on {o.date + dt.timedelta(days=1)} with {o.carrier}."
    if o.status == "delivered":
        return f"Order {o.id} was delivered by {o.carrier} on {o.date + dt.timedelta(days=4)}."
    return f"Order {o.id} is {o.status}."


def _ships(w: World, s: dict[str, str]) -> str:
    days = SHIPS_TO.get(s["country"])
    if days is None:
        return f"Sorry, we do not ship to {s['country']} yet."
    return f"Yes, we ship to {s['country']}; delivery takes about {days} business days."


def _refund(w: World, s: dict[str, str], fee_applies: bool = True) -> str:
    o, n, fee = w.orders[s["order"]], int(s["n"]), int(s["fee"])
    unit = PRODUCTS[o.product]
    gross = round(n * unit, 2)
    charge = round(gross * fee / 100, 2) if fee_applies else 0.0
    return (
        f"Order {o.id} has {o.qty} x {o.product} at ${unit:.2f} each. Returning {n} is "
        f"${gross:.2f}; the {fee}% restocking fee is ${charge:.2f}, so your refund is "
        f"${gross - charge:.2f}. It reaches your card 3 to 5 business days after we "
        f"receive the items."
    )


def _arrival(w: World, s: dict[str, str], business: bool = True) -> str:
    start = dt.date.fromisoformat(s["date"])
    need, day = SPEEDS[s["speed"]], start
    while need:
        day += dt.timedelta(days=1)
        if day.weekday() < 5 or not business:
            need -= 1
    return (
        f"Ordered on {start:%A} {start}, {s['speed']} shipping takes {SPEEDS[s['speed']]} "
        f"business days, so the {s['product']} arrives on {day:%A} {day}."
    )


def _compare(w: World, s: dict[str, str], swap: bool = False) -> str:
    orders = sorted((w.orders[s[k]] for k in "abc"), key=lambda o: (o.total, o.id))
    low, high = (orders[-1], orders[0]) if swap else (orders[0], orders[-1])
    return (
        f"Of orders {s['a']}, {s['b']} and {s['c']}, the most expensive is {high.id} "
        f"({high.qty} x {high.product}, ${high.total:.2f}). It cost "
        f"${abs(high.total - low.total):.2f} more than the cheapest, {low.id} "
        f"(${low.total:.2f})."
    )


def _code(w: World, s: dict[str, str], bug: bool = False) -> str:
    customer = s["customer"]
    stop = "<" if bug else "<="
    return f'''```python
import time

import requests

API = "https://api.northwind.example/v2"


def open_orders_{customer.lower()}(token: str, page_size: int = 50) -> list[dict]:
    """Every order of customer {customer} that is not delivered or cancelled yet,
    oldest first, following the API's pagination and backing off on HTTP 429."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {{token}}"
    orders: list[dict] = []
    page, pages = 1, 1
    while page {stop} pages:
        response = session.get(
            f"{{API}}/customers/{customer}/orders",
            params={{"page": page, "page_size": page_size}},
            timeout=10,
        )
        if response.status_code == 429:
            time.sleep(float(response.headers.get("Retry-After", "1")))
            continue
        response.raise_for_status()
        body = response.json()
        pages = body["pagination"]["pages"]
        for order in body["orders"]:
            if order["status"] not in ("delivered", "cancelled"):
                orders.append(order)
        page += 1
    orders.sort(key=lambda order: order["created_at"])
    return orders
```'''


def _summary(w: World, s: dict[str, str], broken: bool = False) -> str:
    o = w.orders[s["order"]]
    refundable = o.status == "delivered" and (TODAY - o.date).days <= 30
    total: Any = f"${o.total:.2f}" if broken else o.total
    body = {"order_id": o.id, "product": o.product, "total": total, "refundable": refundable}
    return json.dumps(body)


def _faq(text: str) -> Callable[[World, dict[str, str]], str]:
    return lambda w, s: text


TASKS = (
    Task(
        "order_status",
        False,
        (
            "Where is my order #{order}?",
            "What is the status of my order #{order}?",
            "Where is order #{order} right now?",
        ),
        _status,
    ),
    Task(
        "price",
        False,
        (
            "How much does the {product} cost?",
            "What is the price of the {product}?",
            "What do you charge for the {product}?",
        ),
        lambda w, s: f"The {s['product']} costs ${PRODUCTS[s['product']]:.2f}.",
    ),
    Task(
        "ships_to",
        False,
        (
            "Do you ship to {country}?",
            "Can you deliver to {country}?",
            "Is shipping to {country} possible?",
        ),
        _ships,
    ),
    Task(
        "returns",
        False,
        (
            "What is your return policy?",
            "How do returns work?",
            "Can I return something I bought?",
        ),
        _faq(
            "You can return unused items within 30 days of delivery for a full refund. "
            "Start a return from your order page, print the prepaid label and drop the "
            "parcel at any carrier point. Opened items may carry a restocking fee of up to "
            "15%. Refunds go back to the original payment method within 5 business days."
        ),
    ),
    Task(
        "warranty",
        False,
        (
            "What does your warranty cover?",
            "How does the warranty work?",
            "Is my gear covered by a warranty?",
        ),
        _faq(
            "Every product has a two-year warranty against defects in materials and "
            "workmanship. Normal wear, accidents and alterations are not covered. Send us a "
            "photo of the defect and your order number and we repair, replace or refund it."
        ),
    ),
    Task(
        "payment",
        False,
        (
            "Which payment methods do you accept?",
            "How can I pay for my purchase?",
            "What are the ways to pay?",
        ),
        _faq(
            "We accept Visa, Mastercard, American Express, PayPal and Apple Pay. Gift cards "
            "can be combined with any of them. We charge your card when the order ships."
        ),
    ),
    Task(
        "sentiment",
        False,
        (
            'Classify the sentiment of this review: "{review}"',
            'What is the sentiment of this customer review: "{review}"',
            'Is this review positive, neutral or negative: "{review}"',
        ),
        lambda w, s: json.dumps({"label": w.reviews[s["review"]]}),
        schema=SENTIMENT,
    ),
    Task(
        "extract",
        False,
        (
            'Extract the order number and the amount from: "Please refund ${amount} for '
            'order {order}, thanks."',
            'From this message, get the order id and the amount: "Please refund ${amount} '
            'for order {order}, thanks."',
        ),
        lambda w, s: json.dumps({"order_id": s["order"], "amount": float(s["amount"])}),
        schema=EXTRACTION,
    ),
    Task(
        "refund",
        True,
        (
            "I am returning {n} of the items from order #{order}. How much will I get back "
            "after the {fee}% restocking fee?",
            "If I send back {n} items from order #{order}, what is my refund once the "
            "{fee}% restocking fee is taken off?",
            "What refund do I get for returning {n} items of order #{order} with a {fee}% "
            "restocking fee?",
        ),
        _refund,
        lambda w, s: _refund(w, s, fee_applies=False),
    ),
    Task(
        "arrival",
        True,
        (
            "If I buy the {product} on {date} with {speed} shipping, when will it arrive? "
            "Count business days only.",
            "When does the {product} arrive if I buy it on {date} with {speed} shipping? "
            "Only business days count.",
            "Buying the {product} on {date} with {speed} shipping, what is the delivery "
            "date in business days?",
        ),
        _arrival,
        lambda w, s: _arrival(w, s, business=False),
    ),
    Task(
        "compare",
        True,
        (
            "Of my orders {a}, {b} and {c}, which one was the most expensive, and how much "
            "more was it than the cheapest?",
            "Compare my orders {a}, {b} and {c}: which was the most expensive and by how "
            "much did it exceed the cheapest?",
            "Which of my orders {a}, {b} or {c} was the priciest, and what is the difference "
            "to the cheapest one?",
        ),
        _compare,
        lambda w, s: _compare(w, s, swap=True),
    ),
    Task(
        "code",
        True,
        (
            "Write a Python function that lists the open orders of customer {customer} from "
            "your orders API, following pagination and retrying on rate limits.",
            "Give me Python code that fetches every open order of customer {customer} from "
            "the orders API, handling pagination and rate limiting.",
        ),
        _code,
        lambda w, s: _code(w, s, bug=True),
    ),
    Task(
        "summary",
        True,
        (
            "Summarise order #{order} as JSON: the product, the total and whether it can "
            "still be refunded.",
            "Give me order #{order} as JSON with its product, its total and whether it is "
            "still refundable.",
            "Turn order #{order} into a JSON object: product, total, and can it still be refunded?",
        ),
        _summary,
        lambda w, s: _summary(w, s, broken=True),
        schema=SUMMARY,
    ),
)
BY_NAME = {t.name: t for t in TASKS}

_SLOTS = {
    "order": r"\d{5}",
    "amount": r"\d+\.\d\d",
    "n": r"\d+",
    "fee": r"\d+",
    "a": r"\d{5}",
    "b": r"\d{5}",
    "c": r"\d{5}",
    "customer": r"C\d{4}",
    "date": r"\d{4}-\d\d-\d\d",
    "speed": r"standard|express",
    "product": r"[a-z ]+?",
    "country": r"[A-Z][a-z]+",
    "review": r"[^\"]+",
}


def _pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w+)\}", template)
    regex = "".join(
        re.escape(p) if i % 2 == 0 else f"(?P<{p}>{_SLOTS[p]})" for i, p in enumerate(parts)
    )
    return re.compile(f"^{regex}$")


_PATTERNS = [(task, _pattern(p)) for task in TASKS for p in task.phrasings]


def parse(question: str) -> tuple[Task, dict[str, str]] | None:
    """Which task a question is, and its slots; None for anything else."""
    for task, pattern in _PATTERNS:
        found = pattern.match(question.strip())
        if found:
            return task, found.groupdict()
    return None


def answer(world: World, question: str, small: bool) -> str:
    """What a model says: the large one always right, the small one wrong on complex tasks
    (hedging on one in four of them)."""
    parsed = parse(question)
    if parsed is None:
        return "I can help with orders, shipping, returns, products and our API."
    task, slots = parsed
    try:
        if not small or task.wrong is None:
            return task.right(world, slots)
        text = task.wrong(world, slots)
    except (KeyError, ValueError):
        return "I could not find that. Could you check the details?"
    if task.schema is None and hashlib.sha256(question.encode()).digest()[0] < 64:
        return HEDGE + text[0].lower() + text[1:]
    return text


def accepted(expected: str, got: str | None, schema: dict[str, Any] | None) -> bool:
    """The oracle: the right answer, or for JSON tasks the same JSON value."""
    if got is None:
        return False
    if schema is None:
        return got.strip() == expected.strip()
    try:
        return bool(json.loads(got) == json.loads(expected))
    except ValueError:
        return False
