"""Write the labelled examples of the savings workload's tier classifier, and a held-out set:

    .venv/bin/python bench/tier_examples.py      # → bench/tiers/examples.jsonl, held_out.jsonl

A task's tier is `large` when the small model gets it wrong (world.py's complex tasks) and
`small` otherwise. Examples use every phrasing of a task but its last, with slots from
another seed than the workload's (other orders, products, dates); the held-out set asks
every task in its last phrasing only, words the classifier never saw labelled. The files
are committed: `check` validates the examples, tests and bench/classifier.py read both.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from workload import Builder  # noqa: E402
from world import TASKS, Task  # noqa: E402

OUT = BENCH / "tiers"
SEED = 99  # not the workload's 17
PER_PHRASING = 4


def tier(task: Task) -> str:
    return "large" if task.complex else "small"


def lines(builder: Builder, task: Task, phrasings: tuple[str, ...]) -> list[str]:
    customers = list(builder.world.by_customer)
    out = []
    for phrasing in phrasings:
        for _ in range(PER_PHRASING):
            slots = builder.slots(task, builder.rng.choice(customers))
            text = phrasing.format(**slots)
            out.append(json.dumps({"text": text, "tier": tier(task)}))
    return out


def main() -> None:
    builder = Builder(SEED)
    examples, held_out = [], []
    for task in TASKS:
        examples += lines(builder, task, task.phrasings[:-1])
        held_out += lines(builder, task, task.phrasings[-1:])
    examples, held_out = list(dict.fromkeys(examples)), list(dict.fromkeys(held_out))
    OUT.mkdir(exist_ok=True)
    (OUT / "examples.jsonl").write_text("\n".join(examples) + "\n")
    (OUT / "held_out.jsonl").write_text("\n".join(held_out) + "\n")
    print(f"{len(examples)} examples, {len(held_out)} held out, in {OUT}")


if __name__ == "__main__":
    main()
