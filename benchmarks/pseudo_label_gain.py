"""Does pseudo-labelling help? Train on half of the bundled training labels, pseudo-label the other half's audio
with that model, train again on both (same updates, same seed), and compare test WER (issue #27, item 4c).

The demo trains on train + dev (470 clips); here the even rows of the two are the labelled half and the odd rows
the unlabelled half (their transcripts are never read, but to score the pseudo-labels afterwards). Run A trains on
the labelled half; ``ptasr pseudo-label`` transcribes the unlabelled half with A's last checkpoint, and the clips
whose confidence reaches ``--min-confidence`` (default: the median, so half of them) are kept; run B trains on the labelled half plus the kept pseudo-labels. Both are the demo recipe
(configs/demo.yaml: 2000 updates, seed 42, fp32) with ``OMP_NUM_THREADS=1``, and each is scored on the test split
(50 clips whose sentences never occur in training) with its ``last.ckpt`` (no test-set model selection).

Each stage leaves its output in WORKDIR and is skipped when run again, so the script resumes after a stop:

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/pseudo_label_gain.py --workdir /tmp/align-4c \\
        --out benchmarks/results/pseudo_label_gain_cpu.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ptasr.data import BUNDLED_CORPUS  # noqa: E402


def read_split(split: str) -> list[dict[str, str]]:
    with open(Path(BUNDLED_CORPUS) / f"{split}.tsv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def write_manifest(path: Path, rows: list[dict[str, str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "text"])
        writer.writerows([str(Path(BUNDLED_CORPUS) / "clips" / row["path"]), row["sentence"]] for row in rows)


def split_halves(workdir: Path) -> tuple[Path, Path, int]:
    """labelled.csv (even rows of train + dev, with text), unlabelled/ (symlinks to the odd rows' audio) and
    test.csv (the test split)."""
    corpus = Path(BUNDLED_CORPUS)
    rows = read_split("train") + read_split("dev")
    write_manifest(workdir / "test.csv", read_split("test"))
    labelled, unlabelled = workdir / "labelled.csv", workdir / "unlabelled"
    if not labelled.is_file():
        unlabelled.mkdir(parents=True, exist_ok=True)
        for row in rows[1::2]:
            link = unlabelled / row["path"]
            if not link.exists():
                link.symlink_to(corpus / "clips" / row["path"])
        write_manifest(labelled, rows[0::2])
    return labelled, unlabelled, len(rows)


def env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))


def train(workdir: Path, name: str, train_sources: str) -> dict[str, Any]:
    """One demo fit on ``train_sources`` (a YAML list); its last checkpoint, wall time and load."""
    last = workdir / "runs" / name / "version_0" / "checkpoints" / "last.ckpt"
    record = workdir / f"{name}.json"
    if record.is_file():
        return json.loads(record.read_text())
    # validation on the test split, as the demo does, through a manifest of it: the data module refuses the
    # bundled corpus as data.val once data.train is not the bundled corpus
    command = [sys.executable, str(ROOT / "train.py"), "fit", "--data.train", train_sources,
               "--data.val", str(workdir / "test.csv"),
               "--trainer.max_time", "00:01:00:00",  # the demo's 20-minute guard would cut a loaded run short
               "--trainer.logger.init_args.save_dir", str(workdir / "runs"),
               "--trainer.logger.init_args.name", name]
    load_before, start = os.getloadavg(), time.monotonic()
    done = subprocess.run(command, env=env(), cwd=workdir, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
    result = {"checkpoint": str(last), "wall_s": round(time.monotonic() - start, 1),
              "loadavg_before": [round(v, 2) for v in load_before],
              "loadavg_after": [round(v, 2) for v in os.getloadavg()]}
    record.write_text(json.dumps(result, indent=2))
    return result


def test_wer(workdir: Path, name: str, checkpoint: str) -> dict[str, Any]:
    """WER and CER of ``checkpoint`` on the bundled test split (greedy), through ``ptasr evaluate``."""
    out = workdir / f"eval-{name}"
    results = out / "cv-tiny-pt_test_eval_results.json"
    if not results.is_file():
        subprocess.run([sys.executable, "-m", "ptasr", "evaluate", checkpoint, "--data", BUNDLED_CORPUS,
                        "--split", "test", "--output-dir", str(out)], env=env(), check=True, capture_output=True)
    found = next(out.glob("*_eval_results.json"))
    data = json.loads(found.read_text())
    return {"wer": data["wer"], "cer": data["cer"]}


def pseudo_label(workdir: Path, checkpoint: str, unlabelled: Path, min_confidence: float | None) -> dict[str, Any]:
    """``ptasr pseudo-label`` of the unlabelled half, every clip kept (``pseudo-all.csv``); then the clips at or
    above ``min_confidence`` (default: the median confidence, a rule that needs no labels) go to ``pseudo.csv``."""
    everything, manifest = workdir / "pseudo-all.csv", workdir / "pseudo.csv"
    record = workdir / "pseudo.json"
    if record.is_file():
        return json.loads(record.read_text())
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "ptasr", "pseudo-label", checkpoint, str(unlabelled), "-o",
                           str(everything), "--min-confidence", "0"],
                          env=env(), check=True, capture_output=True, text=True)
    with open(everything, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    confidences = sorted(float(row["confidence"]) for row in rows)
    threshold = confidences[len(confidences) // 2] if min_confidence is None else min_confidence
    kept = [row for row in rows if float(row["confidence"]) >= threshold]
    with open(manifest, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
    result = {"manifest": str(manifest), "min_confidence": round(threshold, 4), "kept": len(kept),
              "transcribed": len(rows), "printed": done.stdout.strip(), "wall_s": round(time.monotonic() - start, 1)}
    record.write_text(json.dumps(result, indent=2))
    return result


def pseudo_label_wer(manifest: Path) -> dict[str, Any]:
    """How right the kept pseudo-labels are: their WER against the corpus's own transcripts of those clips."""
    from ptasr.data.text import TextNormalizer
    from ptasr.evaluation.scoring import error_rates, score_utterance

    truth = {row["path"]: row["sentence"] for row in read_split("train") + read_split("dev")}
    with open(manifest, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    normalize = TextNormalizer(",?.!-;:\"“%‘”�—’…–")  # the demo's text rules
    rates = error_rates([score_utterance(row["path"], normalize(truth[Path(row["path"]).name]), row["text"])
                         for row in rows])
    return {"kept": len(rows), "wer": round(rates["wer"], 4), "cer": round(rates["cer"], 4)}


def val_curve(workdir: Path, name: str) -> dict[int, float]:
    """Update -> WER on the test split (what each run validated on), from the run's TensorBoard events."""
    from ptasr.run_log import read_scalars

    return {step + 1: round(value, 4)
            for step, value in sorted(read_scalars(workdir / "runs" / name / "version_0").get("val/wer", {}).items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/align-4c"))
    parser.add_argument("--out", type=Path, default=None, help="results JSON")
    parser.add_argument("--min-confidence", type=float, default=None,
                        help="keep pseudo-labels at or above this confidence (default: the median, keeping half)")
    parser.add_argument("--until", choices=("a", "pseudo", "b"), default="b", help="stop after this stage")
    parser.add_argument("--stopped", metavar="CHECKPOINT", default=None,
                        help="run B was stopped before its end: score this checkpoint of it (its last validated "
                             "update's), and compare the runs at the updates both validated at")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    labelled, unlabelled, total = split_halves(args.workdir)
    run_a = train(args.workdir, "labelled-half", f"[{{path: {labelled}}}]")
    if args.until == "a":
        return
    pseudo = pseudo_label(args.workdir, run_a["checkpoint"], unlabelled, args.min_confidence)
    if args.until == "pseudo":
        return
    if args.stopped:
        run_b = {"checkpoint": args.stopped, "stopped_before_its_end": True}
    else:
        run_b = train(args.workdir, "with-pseudo", f"[{{path: {labelled}}}, {{path: {pseudo['manifest']}}}]")
    curves = {name: val_curve(args.workdir, name) for name in ("labelled-half", "with-pseudo")}
    results = {
        "benchmark": "pseudo_label_gain", "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "clips_train_dev": total,
        "labelled_half": {**run_a, "test": test_wer(args.workdir, "a", run_a["checkpoint"])},
        "pseudo_labels": {**pseudo, "against_truth": pseudo_label_wer(Path(pseudo["manifest"]))},
        "with_pseudo_labels": {**run_b, "test": test_wer(args.workdir, "b", run_b["checkpoint"])},
        "test_wer_by_update": {update: {"labelled_half": wer, "with_pseudo_labels": curves["with-pseudo"].get(update)}
                               for update, wer in curves["labelled-half"].items()},
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                 text=True).stdout.strip(),
    }
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
