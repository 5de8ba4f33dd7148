"""Which word confidence finds wrong words best: AUROC of wrong-word detection for several measures, on a trained
checkpoint and the bundled corpus's test split (issue #27, item 2).

The network runs once (greedy decoding, or beam search with ``--lm``); every measure of
``ptasr.decoding.confidence`` in the grid below then scores the same predicted words, and
``ptasr.evaluation.scoring.confidence_auroc`` (what ``ptasr evaluate`` reports) says how well low confidence
finds the wrong ones (substitutions and insertions of the alignment with the reference; 1 finds them all, 0.5 is
chance). The demo trains on train + dev, so only test is unseen: a choice is made on one half of its utterances
(even rows) and judged on the other (odd rows), and the other way round. With a few hundred words the AUROC
moves by a few hundredths from one resample to the next: the paired bootstrap over utterances gives a 95 %
interval for each measure's gain over the max-probability baseline.

    python benchmarks/confidence_auroc.py /tmp/matrix/runs/s42/version_0/checkpoints/last.ckpt \\
        --out benchmarks/results/confidence_auroc_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from pathlib import Path
from typing import Any

import torch

from ptasr.data import BUNDLED_CORPUS
from ptasr.decoding.confidence import BASELINE_MEASURE, DEFAULT_MEASURE, ConfidenceMeasure
from ptasr.evaluation.evaluate import evaluate, load_eval_set
from ptasr.evaluation.scoring import Scored, auroc, confidence_auroc, error_rates, wrong_words
from ptasr.recognition.recognizer import Recognizer

ALPHAS = (1.0, 0.5, 0.33, 0.25)


def measures() -> list[ConfidenceMeasure]:
    """max-prob (the baseline), Gibbs and Tsallis entropies at a few alphas, normalised both ways, min and mean."""
    grid = [ConfidenceMeasure("max_prob", aggregate=a) for a in ("min", "mean")]
    for kind in ("gibbs", "tsallis"):
        for alpha in ALPHAS:
            if kind == "tsallis" and alpha == 1.0:
                continue  # Tsallis at alpha 1 is Gibbs
            grid += [ConfidenceMeasure(kind, alpha, norm, aggregate)
                     for norm in ("lin", "exp") for aggregate in ("min", "mean")]
    return grid


def aurocs(scored: list[Scored], grid: list[ConfidenceMeasure]) -> dict[str, float | None]:
    return {m.name: confidence_auroc(scored, m.name) for m in grid}


def two_fold(scored: list[Scored], grid: list[ConfidenceMeasure]) -> list[dict[str, Any]]:
    """Choose the best measure on one half of the utterances, judge it (and the default, and the baseline) on the
    other half; both ways."""
    halves = [scored[0::2], scored[1::2]]
    folds = []
    for choose, judge in ((0, 1), (1, 0)):
        chosen = aurocs(halves[choose], grid)
        best = max(grid, key=lambda m: chosen[m.name] or 0.0)
        judged = aurocs(halves[judge], [best, DEFAULT_MEASURE, BASELINE_MEASURE])
        folds.append({"chosen_on": ("even", "odd")[choose], "best": best.name, **judged})
    return folds


def bootstrap_gain(scored: list[Scored], measure: str, resamples: int, seed: int = 0) -> list[float]:
    """95 % interval of AUROC(measure) - AUROC(baseline), resampling utterances with replacement (paired)."""
    rng = random.Random(seed)
    # each utterance's (wrong flags, measure's confidences, baseline's), aligned once
    rows = [(wrong_words(s.reference, s.prediction), s.confidences[measure], s.confidences[BASELINE_MEASURE.name])
            for s in scored if measure in s.confidences]
    gains = []
    for _ in range(resamples):
        sample = [rng.choice(rows) for _ in rows]
        wrong = [flag for flags, _, _ in sample for flag in flags]
        ours = auroc([c for _, values, _ in sample for c in values], wrong)
        theirs = auroc([c for _, _, values in sample for c in values], wrong)
        if ours is not None and theirs is not None:
            gains.append(ours - theirs)
    gains.sort()
    return [round(gains[int(0.025 * len(gains))], 4), round(gains[int(0.975 * len(gains)) - 1], 4)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a trained model (train.py checkpoint or exported folder)")
    parser.add_argument("--data", default=str(BUNDLED_CORPUS))
    parser.add_argument("--split", default="test", help="the split scored (unseen in training)")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--lm", default=None, help="an ARPA LM: beam search with it instead of greedy decoding")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the machine is shared; the figures are AUROCs, not times
    recognizer = Recognizer.load(args.checkpoint, device="cpu", dtype="float32")
    decoder = None
    if args.lm:
        from ptasr.decoding.lm import BeamSearchDecoder, resolve_weights

        lm_weight, word_score, _ = resolve_weights(args.lm)  # tuned beside the LM, else the defaults
        decoder = BeamSearchDecoder(recognizer.vocab, args.lm, lm_weight=lm_weight, word_score=word_score)
    grid = measures()
    started = time.perf_counter()
    evaluation = evaluate(recognizer, load_eval_set(args.data, args.split, recognizer.normalizer).take(None),
                          decoder=decoder, measures=grid)
    scored = evaluation.scored
    wrong = [flag for s in scored for flag in wrong_words(s.reference, s.prediction)]
    everything = aurocs(scored, grid)
    best = max(grid, key=lambda m: everything[m.name] or 0.0)
    result = {
        "benchmark": "confidence_auroc", "checkpoint": args.checkpoint, "data": args.data, "split": args.split,
        "decoder": "greedy" if decoder is None else f"beam+lm {args.lm}", "dtype": "float32",
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
        **error_rates(scored), "predicted_words": len(wrong), "wrong_words": sum(wrong),
        "default_measure": DEFAULT_MEASURE.name, "baseline_measure": BASELINE_MEASURE.name, "auroc": everything,
        "two_fold": two_fold(scored, grid),
        "gain_over_baseline_95": {m.name: bootstrap_gain(scored, m.name, args.resamples)
                                  for m in dict.fromkeys([DEFAULT_MEASURE, best])},
        "wall_s": round(time.perf_counter() - started, 1), "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    width = max(len(m.name) for m in grid)
    for m in grid:
        mark = " <- default" if m == DEFAULT_MEASURE else " <- baseline" if m == BASELINE_MEASURE else ""
        print(f"{m.name:<{width}}  {everything[m.name] or float('nan'):6.4f}{mark}")
    print(f"{args.split}: WER {result['wer']:.4f}, {result['wrong_words']} wrong of {result['predicted_words']} "
          f"predicted words")
    for fold in result["two_fold"]:
        print(f"chosen on the {fold['chosen_on']} rows: {fold['best']}; on the others: "
              + ", ".join(f"{name} {value}" for name, value in fold.items() if name not in ("chosen_on", "best")))
    for name, (low, high) in result["gain_over_baseline_95"].items():
        print(f"AUROC gain of {name} over {BASELINE_MEASURE.name}, 95 % bootstrap interval: [{low}, {high}]")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
