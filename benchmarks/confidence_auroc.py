"""Which word confidence finds wrong words best: AUROC of wrong-word detection for several measures, on a trained
checkpoint and the bundled corpus (issue #27, item 2).

The network runs once per split (greedy decoding, or beam search with ``--lm``); every measure of
``ptasr.decoding.confidence`` in the grid below then scores the same predicted words, and
``ptasr.evaluation.evaluate.confidence_auroc`` (what ``ptasr evaluate`` reports) says how well low confidence
finds the wrong ones (substitutions and insertions of the alignment with the reference; 1 finds them all, 0.5 is
chance). The measure is chosen on ``--choose-on`` (dev) and reported on ``--split`` (test), so the test figure
is not the one the choice was fitted to.

    python benchmarks/confidence_auroc.py /tmp/matrix/runs/s42/version_0/checkpoints/last.ckpt \\
        --out benchmarks/results/confidence_auroc_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from ptasr.data import BUNDLED_CORPUS
from ptasr.decoding.confidence import BASELINE_MEASURE, DEFAULT_MEASURE, ConfidenceMeasure
from ptasr.evaluation.evaluate import confidence_auroc, evaluate, load_eval_set
from ptasr.evaluation.scoring import error_rates, wrong_words
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


def score_split(recognizer: Recognizer, data: str, split: str, decoder: Any, grid: list[ConfidenceMeasure]
                ) -> dict[str, Any]:
    evaluation = evaluate(recognizer, load_eval_set(data, split, recognizer.normalizer).take(None),
                          decoder=decoder, measures=grid)
    wrong = [flag for s in evaluation.scored for flag in wrong_words(s.reference, s.prediction)]
    return {"split": split, **error_rates(evaluation.scored), "predicted_words": len(wrong),
            "wrong_words": sum(wrong), "seconds": round(evaluation.elapsed, 1),
            "auroc": {m.name: confidence_auroc(evaluation.scored, m.name) for m in grid}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a trained model (train.py checkpoint or exported folder)")
    parser.add_argument("--data", default=str(BUNDLED_CORPUS))
    parser.add_argument("--split", default="test", help="the split reported")
    parser.add_argument("--choose-on", default="dev", help="the split the best measure is chosen on")
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
    chosen_on, reported = (score_split(recognizer, args.data, split, decoder, grid)
                           for split in (args.choose_on, args.split))
    best = max(grid, key=lambda m: chosen_on["auroc"][m.name] or 0.0)
    result = {
        "benchmark": "confidence_auroc", "checkpoint": args.checkpoint, "data": args.data,
        "decoder": "greedy" if decoder is None else f"beam+lm {args.lm}", "dtype": "float32",
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
        "default_measure": DEFAULT_MEASURE.name, "baseline_measure": BASELINE_MEASURE.name,
        "best_on_choice_split": best.name, "choice": chosen_on, "report": reported,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    width = max(len(m.name) for m in grid)
    print(f"{'measure':<{width}}  {args.choose_on:>6}  {args.split:>6}")
    for m in grid:
        mark = " <- default" if m == DEFAULT_MEASURE else " <- baseline" if m == BASELINE_MEASURE else ""
        print(f"{m.name:<{width}}  {chosen_on['auroc'][m.name] or float('nan'):6.4f}  "
              f"{reported['auroc'][m.name] or float('nan'):6.4f}{mark}")
    for part in (chosen_on, reported):
        print(f"{part['split']}: WER {part['wer']:.4f}, {part['wrong_words']} wrong of {part['predicted_words']} "
              f"predicted words; best on {args.choose_on}: {best.name}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
