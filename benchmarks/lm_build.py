"""Time `ptasr lm build`'s estimator on a million words of synthetic text, on one core.

The text: sentences of 4-20 words drawn from a Zipf-distributed vocabulary (s = 1.1, 50,000 forms), so the
n-gram counts grow as in real transcripts (most 4-grams seen once). Writes benchmarks/results/lm_build_cpu.json.

    OMP_NUM_THREADS=1 python benchmarks/lm_build.py [--words 1000000] [--order 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from ptasr.decoding.ngram import build


def synthetic_sentences(words: int, vocabulary: int = 50_000, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, vocabulary + 1)
    weights = ranks ** -1.1
    ids = rng.choice(vocabulary, size=words, p=weights / weights.sum())
    forms = [f"w{i}" for i in range(vocabulary)]
    sentences, start = [], 0
    while start < words:
        length = int(rng.integers(4, 21))
        sentences.append(" ".join(forms[i] for i in ids[start:start + length]))
        start += length
    return sentences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", type=int, default=1_000_000)
    parser.add_argument("--order", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "lm_build_cpu.json"))
    args = parser.parse_args()
    sentences = synthetic_sentences(args.words)
    runs = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        model = build(sentences, args.order)
        estimated = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            size = model.write_arpa(Path(tmp) / "lm.arpa").stat().st_size
        runs.append({"estimate_s": round(estimated - started, 2), "write_arpa_s": round(time.perf_counter() - estimated, 2)})
    totals = [run["estimate_s"] + run["write_arpa_s"] for run in runs]
    result = {
        "benchmark": "lm_build", "words": args.words, "sentences": len(sentences), "order": args.order,
        "ngrams": [len(level) for level in model.orders], "arpa_mb": round(size / 1e6, 1),
        "total_s": {"min": round(min(totals), 2), "max": round(max(totals), 2)}, "runs": runs,
        "machine": {"processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                    "load_average_1min": round(os.getloadavg()[0], 1), "date": time.strftime("%Y-%m-%d"),
                    "note": "the build runs in one process; the load average, taken at the end, counts it"},
    }
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
