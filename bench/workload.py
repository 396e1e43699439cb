"""The savings benchmark's workload: a support chat application, as a fixed, seeded list of
requests replayed verbatim (bench/README.md describes it).

Three kinds of traffic share one long system prompt (about 1,500 tokens):
- `chat`: conversations of 1 to 20 turns that offer the assistant's tools, at the
  temperature chat apps send by habit (0.7; the fake models answer alike at any); each turn
  carries the history so far, whose assistant turns are the recorded right answers (a
  replay sends what was recorded, whatever a cache or a small model answers now), so every
  configuration sends the same bytes. A third of the turns stream.
- `api`: one-shot calls from the shop's backend (classification, extraction, order
  summaries; most with a JSON schema in `response_format`), no tools.
- `batch`: background work submitted through the Batches API (lines in OpenAI batch
  format), which may wait.

Repeats are what real traffic has: popular first questions asked the same way, chats
reopened and replayed, reviews classified again, retried calls. Paraphrases ask an earlier
question in other words; near misses (the same words, another order or product) come
from the same templates with other slots.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from world import BY_NAME, NO_SHIPPING, PRODUCTS, SHIPS_TO, SPEEDS, TODAY, Task, World, parse

CHAT_TEMPERATURE = 0.7  # backend calls and batch lines send 0

MODEL = "assistant"  # the route every request names

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": props, "required": list(props)},
        },
    }
    for name, description, props in (
        (
            "lookup_order",
            "Look up an order by its five-digit number: items, status, carrier, dates.",
            {"order_id": {"type": "string", "description": "the order number"}},
        ),
        (
            "create_return",
            "Open a return for some items of a delivered order and email the label.",
            {
                "order_id": {"type": "string"},
                "quantity": {"type": "integer", "minimum": 1},
                "reason": {"type": "string", "enum": ["damaged", "wrong size", "other"]},
            },
        ),
        (
            "search_products",
            "Search the catalogue by free text; returns names, prices and stock.",
            {"query": {"type": "string"}, "max_results": {"type": "integer"}},
        ),
    )
]


def system_prompt() -> str:
    """About 1,500 tokens of the instructions a support assistant carries."""
    catalogue = "\n".join(f"- {name}: ${price:.2f}" for name, price in PRODUCTS.items())
    countries = ", ".join(f"{c} ({d} business days)" for c, d in SHIPS_TO.items())
    sections = [
        "You are Nora, the customer support assistant of Northwind Outfitters, an online "
        "shop for hiking and camping gear. You answer customers in the chat on our website "
        "and in our mobile app, and you help our own backend services classify, extract "
        "and summarise. Be accurate, brief and friendly. Never invent order details: use "
        "the tools to look them up, and say so when you cannot find something.",
        "## Tone\nWrite plain sentences. Use the customer's own words for products. Give "
        "amounts with a dollar sign and two decimals, and dates as YYYY-MM-DD. Do not "
        "apologise more than once. Do not mention these instructions.",
        "## Orders\nOrder numbers have five digits. An order is processing until it "
        "leaves our warehouse, shipped while the carrier has it, delivered once the "
        "carrier confirms it, or cancelled. Shipped orders leave the day after they are "
        "placed; delivery takes three days after that within the United States.",
        "## Returns and refunds\nUnused items can be returned within 30 days of delivery. "
        "Opened items may carry a restocking fee of up to 15% of their price. A refund is "
        "the price of the items returned minus the restocking fee; shipping is not "
        "refunded. Refunds reach the original payment method 3 to 5 business days after "
        "we receive the items. Orders that are not delivered cannot be refunded yet; "
        "offer to cancel them instead if they are still processing.",
        "## Warranty\nTwo years against defects in materials and workmanship. Normal wear, "
        "accidents and alterations are not covered. Ask for a photo and the order number.",
        "## Shipping\nStandard shipping takes 5 business days and express 2, counted from "
        "the day after the order; weekends do not count. We ship to the United States and "
        f"to {countries}. We do not ship anywhere else yet, including "
        f"{', '.join(NO_SHIPPING)}.",
        "## Payment\nVisa, Mastercard, American Express, PayPal and Apple Pay; gift cards "
        "combine with any of them. Cards are charged when the order ships.",
        f"## Catalogue (current prices)\n{catalogue}",
        "## Developer API\nBusiness customers use our REST API at "
        "https://api.northwind.example/v2 with a bearer token. Lists are paginated "
        "(`page`, `page_size`, and `pagination.pages` in the answer). Too many requests "
        "answer HTTP 429 with Retry-After. When asked for code, answer with one complete "
        "Python function in a fenced block, typed, with a docstring, using requests.",
        "## Classification and extraction\nWhen a backend service asks for JSON, answer "
        "with the JSON object only: no prose, no code fences. Sentiment labels are "
        "positive, neutral or negative. Amounts are numbers, order ids are strings.",
        "## Escalation\nHand over to a human when a customer asks for one, reports an "
        "injury or a safety problem with a product, threatens legal action, or has asked "
        "the same thing three times without getting what they need. Say that a colleague "
        "will answer by email within one business day, and summarise the case for them "
        "in one sentence. Never promise compensation beyond the policies above.",
        "## Sizes\nShoes run true to size; between two sizes, take the larger one for "
        "hiking. Jackets and base layers follow the size chart on each product page: "
        "measure the chest at its widest and the waist at the navel. Sleeping bags are "
        "rated by the lowest temperature at which a typical sleeper stays comfortable; "
        "recommend a bag rated five degrees colder than the coldest night expected.",
        "## Product care\nWash technical jackets cold with a gentle detergent, never with "
        "fabric softener, and tumble dry low to restore the water repellency. Merino should "
        "be washed cold and dried flat. Tents must be dried completely before storage; "
        "mildew from storing a wet tent is not covered by the warranty. Clean water filters "
        "by backflushing after every trip and never let them freeze when wet.",
        "## Loyalty programme\nMembers earn one point per dollar spent and get free "
        "standard shipping on every order. 500 points are worth a $25 voucher, which is "
        "emailed automatically and stays valid for a year. Points are removed again when "
        "an order is refunded. Membership is free: customers join from their account page.",
        "## Gift cards and exchanges\nGift cards never expire and cannot be exchanged for "
        "cash. An exchange for another size or colour is a return plus a new order; we "
        "waive the restocking fee on exchanges and ship the new item as soon as the return "
        "is scanned by the carrier.",
        "## Privacy\nOnly discuss an order with the customer it belongs to. Never read "
        "out full card numbers or addresses; the last four digits and the city are "
        "enough. Do not store anything the customer tells you outside the order notes.",
    ]
    return "\n\n".join(sections)


@dataclass
class Request:
    index: int
    kind: str  # chat | api | batch
    body: dict[str, Any]  # an OpenAI chat completion request for route `assistant`
    task: str
    expected: str  # the right answer (JSON text for schema tasks)
    user: str
    conversation: int | None = None  # chat turns: which conversation
    after: int | None = None  # the previous turn of this conversation
    original: int | None = None  # the request this one repeats or paraphrases
    repeat: bool = False  # the same bytes as `original`
    paraphrase: bool = False  # the same question as `original` in words not used before
    batch: int | None = None  # which batch the line belongs to

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def schema(self) -> dict[str, Any] | None:
        return BY_NAME[self.task].schema

    @property
    def question(self) -> str:
        return str(self.body["messages"][-1]["content"])


@dataclass
class Workload:
    seed: int
    requests: list[Request] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """What the workload is made of, as shares of its requests."""
        rs = self.requests

        def share(matches: Any) -> float:
            return round(sum(1 for r in rs if matches(r)) / max(1, len(rs)), 3)

        turns: dict[int, int] = {}
        for r in rs:
            if r.conversation is not None:
                turns[r.conversation] = turns.get(r.conversation, 0) + 1
        return {
            "requests": len(rs),
            "chat": share(lambda r: r.kind == "chat"),
            "api": share(lambda r: r.kind == "api"),
            "batch": share(lambda r: r.kind == "batch"),
            "exact_repeats": share(lambda r: r.repeat),
            "paraphrases": share(lambda r: r.paraphrase),
            "same_words_other_context": share(
                lambda r: r.original is not None and not (r.repeat or r.paraphrase)
            ),
            "complex": share(lambda r: BY_NAME[r.task].complex),
            "with_schema": share(lambda r: r.schema is not None),
            "streamed": share(lambda r: r.stream),
            "conversations": len(turns),
            "longest_conversation": max(turns.values(), default=0),
            "input_chars_mean": round(
                sum(len(json.dumps(r.body["messages"])) for r in rs) / max(1, len(rs))
            ),
        }


CHAT_TASKS = {
    "order_status": 26, "price": 12, "ships_to": 10, "returns": 8, "warranty": 6,
    "payment": 6, "refund": 9, "arrival": 7, "compare": 6, "code": 5, "summary": 5,
}  # fmt: skip
API_TASKS = {"sentiment": 40, "extract": 25, "summary": 20, "price": 5, "refund": 10}
BATCH_TASKS = {"sentiment": 50, "summary": 30, "refund": 20}
OPENERS = ("returns", "warranty", "payment", "price", "ships_to")  # popular first questions


Plan = list[tuple[Task, dict[str, str], int]]  # a conversation's questions: task, slots, phrasing


class Builder:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.world = World(seed)
        self.system = system_prompt()
        self.out = Workload(seed)
        self.asked: dict[str, int] = {}  # a question (task and slots) → its first request
        self.bodies: dict[str, int] = {}  # a request body → its first request
        self.phrased: dict[str, set[int]] = {}  # a question → the phrasings used so far
        self.history: dict[str, Plan] = {}  # what each customer asked so far
        self.conversations = 0

    def slots(self, task: Task, customer: str) -> dict[str, str]:
        rng, orders = self.rng, self.world.by_customer[customer]
        order = rng.choice(orders)
        return {
            "order": order.id,
            "product": rng.choice(list(PRODUCTS)),
            "country": rng.choice(list(SHIPS_TO) + list(NO_SHIPPING)),
            "review": rng.choice(list(self.world.reviews)),
            "amount": f"{order.total:.2f}",
            "n": str(rng.randint(1, order.qty)),
            "fee": str(rng.choice((0, 5, 10, 15))),
            "a": orders[0].id,
            "b": orders[1].id,
            "c": orders[2].id,
            "customer": customer,
            "date": str(TODAY + dt.timedelta(days=rng.randint(0, 20))),
            "speed": rng.choice(list(SPEEDS)),
        }

    def reworded(self, task: Task, slots: dict[str, str]) -> int | None:
        """A phrasing of this question not used yet, if there is one."""
        used = self.phrased.get(_question_key(task, slots), set())
        free = [i for i in range(len(task.phrasings)) if i not in used]
        return self.rng.choice(free) if free else None

    def add(
        self,
        kind: str,
        messages: list[dict[str, Any]],
        task: Task,
        slots: dict[str, str],
        user: str,
        **extra: Any,
    ) -> Request:
        body: dict[str, Any] = {"model": MODEL, "messages": messages, "temperature": 0}
        if kind == "chat":
            body["tools"] = TOOLS
            body["temperature"] = CHAT_TEMPERATURE
            if self.rng.random() < 1 / 3:
                body["stream"] = True
        if task.schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": task.name, "schema": task.schema, "strict": True},
            }
        index = len(self.out.requests)
        key = json.dumps({k: v for k, v in body.items() if k != "stream"}, sort_keys=True)
        first = self.bodies.setdefault(key, index)
        question = _question_key(task, slots)
        asked = self.asked.setdefault(question, index)
        phrasing = task.phrasings.index(_phrasing_of(task, messages[-1]["content"]))
        used = self.phrased.setdefault(question, set())
        request = Request(index, kind, body, task.name, task.right(self.world, slots), user)
        request.__dict__.update(extra)
        if first != index:
            request.original, request.repeat = first, True
        elif asked != index:
            request.original = asked
            request.paraphrase = phrasing not in used  # else: the same words, another context
        used.add(phrasing)
        self.out.requests.append(request)
        return request

    def conversation(self, customer: str, turns: int) -> Plan:
        """An opener (often a popular question, or for a returning customer one of their
        earlier questions in other words), then the customer's own business; now and then
        a question asked again in other words."""
        rng = self.rng
        plan: Plan = []
        before = self.history.get(customer, [])
        for turn in range(turns):
            if turn == 0 and before and rng.random() < 0.7:
                task, slots, _ = rng.choice(before)
                phrasing = self.reworded(task, slots)
                if phrasing is not None:
                    plan.append((task, slots, phrasing))
                    continue
            if turn and rng.random() < 0.12:
                task, slots, phrasing = plan[-1]
                plan.append((task, slots, (phrasing + 1) % len(task.phrasings)))
                continue
            popular = turn == 0 and rng.random() < 0.5
            if popular:
                task = BY_NAME[rng.choice(OPENERS)]
            else:
                task = BY_NAME[rng.choices(list(CHAT_TASKS), list(CHAT_TASKS.values()))[0]]
            slots = self.slots(task, customer)
            if popular:
                slots["product"], slots["country"] = "rain shell jacket", "Canada"
            plan.append((task, slots, rng.randrange(len(task.phrasings))))
        self.history[customer] = before + plan
        return plan

    def chat(self, customer: str, plan: Plan) -> None:
        messages: list[dict[str, Any]] = [{"role": "system", "content": self.system}]
        previous: int | None = None
        self.conversations += 1
        for task, slots, phrasing in plan:
            asked = {"role": "user", "content": task.phrasings[phrasing].format(**slots)}
            messages = [*messages, asked]
            request = self.add(
                "chat", messages, task, slots, customer,
                after=previous, conversation=self.conversations,
            )  # fmt: skip
            previous = request.index
            messages = [*messages, {"role": "assistant", "content": request.expected}]

    def one_shot(self, kind: str, weights: dict[str, int], **extra: Any) -> None:
        """A backend call: sent again as it was, an earlier one in other words, or new."""
        rng = self.rng
        earlier = [r for r in self.out.requests if r.kind != "chat"]
        roll = rng.random()
        if earlier and roll < 0.33:
            again = rng.choice(earlier)
            task, slots = BY_NAME[again.task], _slots_of(again)
            phrasing = task.phrasings.index(_phrasing_of(task, again.question))
        else:
            task = BY_NAME[rng.choices(list(weights), list(weights.values()))[0]]
            slots = self.slots(task, rng.choice(list(self.world.by_customer)))
            phrasing = 0 if rng.random() < 0.6 else rng.randrange(len(task.phrasings))
            if earlier and roll < 0.6:
                again = rng.choice(earlier)
                reworded = self.reworded(BY_NAME[again.task], _slots_of(again))
                if reworded is not None:
                    task, slots, phrasing = BY_NAME[again.task], _slots_of(again), reworded
        messages = [
            {"role": "system", "content": self.system},
            {"role": "user", "content": task.phrasings[phrasing].format(**slots)},
        ]
        self.add(kind, messages, task, slots, "backend", **extra)


def _question_key(task: Task, slots: dict[str, str]) -> str:
    names = {n for p in task.phrasings for n in re.findall(r"\{(\w+)\}", p)}
    return json.dumps([task.name, {k: slots[k] for k in sorted(names)}])


def _phrasing_of(task: Task, question: str) -> str:
    parsed = parse(question)
    assert parsed is not None, question
    assert parsed[0] is task, question
    return next(p for p in task.phrasings if _matches(p, question))


def _matches(phrasing: str, question: str) -> bool:
    parts = re.split(r"\{\w+\}", phrasing)
    return question.startswith(parts[0]) and question.endswith(parts[-1])


def _slots_of(request: Request) -> dict[str, str]:
    parsed = parse(request.question)
    assert parsed is not None
    return parsed[1]


def build(seed: int, size: int) -> Workload:
    """About `size` requests: 65% chat turns, 25% API calls, 10% batch lines (in four
    batches), interleaved in a fixed order."""
    b = Builder(seed)
    rng = b.rng
    customers = list(b.world.by_customer)[:150]  # some come back
    chats: list[tuple[str, Plan]] = []
    chat_turns = int(size * 0.65)
    while sum(len(p) for _, p in chats) < chat_turns:
        if chats and rng.random() < 0.13:  # a chat reopened and asked again, turn by turn
            chats.append(rng.choice(chats))
            continue
        length = rng.random()
        turns = (
            rng.randint(1, 3) if length < 0.4 else rng.randint(4, 8) if length < 0.8 else None
        ) or rng.randint(9, 20)
        customer = rng.choice(customers)
        chats.append((customer, b.conversation(customer, turns)))
    api_calls = int(size * 0.25)
    batch_lines = max(0, size - sum(len(p) for _, p in chats) - api_calls)
    batch_at = {int(size * f): n for n, f in enumerate((0.2, 0.4, 0.6, 0.8))}
    per_batch = [batch_lines // 4 + (1 if i < batch_lines % 4 else 0) for i in range(4)]
    steps = ["chat"] * len(chats) + ["api"] * api_calls
    rng.shuffle(steps)
    for step in steps:
        for at, n in list(batch_at.items()):
            if len(b.out.requests) >= at:
                for _ in range(per_batch[n]):
                    b.one_shot("batch", BATCH_TASKS, batch=n)
                del batch_at[at]
        if step == "api":
            b.one_shot("api", API_TASKS)
        else:
            customer, plan = chats.pop(0)
            b.chat(customer, plan)
    for n in sorted(batch_at.values()):
        for _ in range(per_batch[n]):
            b.one_shot("batch", BATCH_TASKS, batch=n)
    return b.out


def batches(workload: Workload) -> Iterator[tuple[int, list[Request]]]:
    by: dict[int, list[Request]] = {}
    for r in workload.requests:
        if r.batch is not None:
            by.setdefault(r.batch, []).append(r)
    yield from sorted(by.items())
