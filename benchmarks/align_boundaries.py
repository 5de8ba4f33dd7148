"""How exactly ``ptasr align`` finds sentence boundaries, and whether it flags what is missing (issue #27, item 4a).

The bundled corpus's clips (all 520: test, dev and train; the demo trained on train + dev, so the 50 test clips
are also reported alone) are concatenated in a shuffled order, with pauses of 0.15 to 1.5 s of faint noise
between them, into recordings of about five minutes. In each recording the audio of one sentence is deleted
(its text stays in the transcript: it must be rejected) and one clip is spoken whose text is not in the
transcript (it must be reported as uncovered audio, and no sentence may claim it). Each recording is aligned with
the demo model through :func:`ptasr.labelling.align.align_recording` (the code path of ``ptasr align``).

The truth of a sentence's boundaries is where its clip's speech starts and ends in the recording: the clip's
offset plus its first and last 10 ms window whose energy is within 35 dB of the clip's loudest. An aligned
sentence's boundaries are its first token's first frame and its last token's last frame. The figure is the share
of boundaries (two per sentence, accepted sentences) within 0.1 s of the truth.

    nice -n 10 python benchmarks/align_boundaries.py /tmp/align-demo/runs/demo/version_0/checkpoints/last.ckpt \\
        --out benchmarks/results/align_boundaries_cpu.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ptasr.data import BUNDLED_CORPUS  # noqa: E402
from ptasr.data.audio import SAMPLE_RATE, read_audio, resample  # noqa: E402
from ptasr.labelling.align import AlignSettings, align_recording  # noqa: E402
from ptasr.recognition.recognizer import Recognizer  # noqa: E402

TOLERANCE_S = 0.1


def clips() -> list[dict[str, Any]]:
    """Every clip of the bundled corpus: split, sentence, 16 kHz samples and its speech span (samples)."""
    found = []
    for split in ("test", "dev", "train"):
        with open(Path(BUNDLED_CORPUS) / f"{split}.tsv", encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
                samples, rate = read_audio(Path(BUNDLED_CORPUS) / "clips" / row["path"])
                waveform = resample(torch.from_numpy(samples), rate).numpy()
                found.append({"split": split, "text": row["sentence"], "samples": waveform,
                              "speech": speech_span(waveform)})
    return found


def speech_span(samples: np.ndarray, window: int = 160, below_peak_db: float = 35.0) -> tuple[int, int]:
    """First and last sample of the 10 ms windows within ``below_peak_db`` of the loudest window."""
    frames = samples[: len(samples) // window * window].reshape(-1, window)
    energy = 10 * np.log10((frames ** 2).mean(axis=1) + 1e-12)
    loud = np.flatnonzero(energy > energy.max() - below_peak_db)
    return int(loud[0] * window), int((loud[-1] + 1) * window)


def build(pieces: list[dict[str, Any]], rng: random.Random) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The pieces one after another with pauses of faint noise; each piece's speech span in the recording."""
    noise = np.random.default_rng(rng.randrange(2**32))
    parts, spans, offset = [], [], 0
    for piece in pieces:
        pause = noise.normal(0, 1e-3, int(rng.uniform(0.15, 1.5) * SAMPLE_RATE)).astype(np.float32)
        parts += [pause, piece["samples"]]
        offset += len(pause)
        spans.append((offset + piece["speech"][0], offset + piece["speech"][1]))
        offset += len(piece["samples"])
    parts.append(noise.normal(0, 1e-3, SAMPLE_RATE).astype(np.float32))
    return np.concatenate(parts), spans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--recordings", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    every = clips()
    rng.shuffle(every)
    recognizer = Recognizer.load(args.checkpoint, dtype="float32")
    settings = AlignSettings()
    per_recording = len(every) // args.recordings
    errors: dict[str, list[float]] = {"all": [], "test": [], "start": [], "end": []}
    scores_true, scores_deleted, outcomes = [], [], []
    load_before, started, audio_s = os.getloadavg(), time.monotonic(), 0.0
    for r in range(args.recordings):
        group = every[r * per_recording:(r + 1) * per_recording]
        deleted, extra = rng.randrange(1, len(group) - 1), len(group) - 1  # the last clip: spoken, not in the text
        spoken = [c for n, c in enumerate(group) if n != deleted]  # the audio lacks the deleted one
        text = [c["text"] for n, c in enumerate(group) if n != extra]
        extra_text = group[extra]["text"]
        # the extra clip goes in the middle of the recording, not at its end
        middle = len(spoken) // 2
        order = [*range(middle), len(spoken) - 1, *range(middle, len(spoken) - 1)]
        audio, spans = build([spoken[i] for i in order], random.Random(args.seed + r))
        audio_s += len(audio) / SAMPLE_RATE
        truth_spans = {i: spans[k] for k, i in enumerate(order)}  # spoken index -> speech span (samples)
        wav = Path(f"/tmp/align-4a/rec{r}.flac")
        wav.parent.mkdir(parents=True, exist_ok=True)
        sf.write(wav, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_24")
        aligned = align_recording(recognizer, wav, text, settings)
        # text index -> spoken index: text drops the extra (last) clip, spoken drops the deleted one
        group_index = [n for n in range(len(group)) if n != extra]
        for a in aligned.alignments:
            n = group_index[a.index]
            if n == deleted:
                scores_deleted.append(a.score)
                outcomes.append({"recording": r, "deleted_sentence": text[a.index], "score": round(a.score, 3),
                                 "rejected": not a.accepted})
                continue
            scores_true.append(a.score)
            if not a.accepted:
                outcomes.append({"recording": r, "true_sentence_rejected": text[a.index], "score": round(a.score, 3)})
                continue
            start, end = truth_spans[n if n < deleted else n - 1]
            spf = aligned.seconds_per_frame
            for kind, error in (("start", a.first * spf - start / SAMPLE_RATE), ("end", a.end * spf - end / SAMPLE_RATE)):
                errors["all"].append(error)
                errors[kind].append(error)
                if group[n]["split"] == "test":
                    errors["test"].append(error)
        extra_start, extra_end = (s / SAMPLE_RATE for s in truth_spans[len(spoken) - 1])
        found = [u for u in aligned.uncovered
                 if u[0] * aligned.seconds_per_frame < extra_end and u[1] * aligned.seconds_per_frame > extra_start]
        outcomes.append({"recording": r, "extra_passage": extra_text, "reported": bool(found),
                         "reported_as": [u[2] for u in found],
                         "uncovered_stretches": len(aligned.uncovered)})
    wall = time.monotonic() - started

    def share(values: list[float]) -> dict[str, Any]:
        a = np.abs(np.array(values))
        return {"boundaries": len(a), "within_0.1s": round(float((a <= TOLERANCE_S).mean()), 4),
                "median_abs_s": round(float(np.median(a)), 3), "p95_abs_s": round(float(np.percentile(a, 95)), 3),
                "mean_signed_s": round(float(np.mean(values)), 3)}

    results = {
        "benchmark": "align_boundaries", "checkpoint": args.checkpoint, "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "recordings": args.recordings, "audio_s": round(audio_s, 1), "wall_s": round(wall, 1),
        "settings": vars(settings),
        "boundaries": {"all": share(errors["all"]), "test_split_only": share(errors["test"]),
                       "starts": share(errors["start"]), "ends": share(errors["end"])},
        "errors_s": {kind: np.round(np.percentile(errors[kind], [1, 5, 25, 50, 75, 95, 99]), 3).tolist()
                     for kind in ("start", "end")},
        "true_sentences": len(scores_true),
        "true_rejected": sum(1 for o in outcomes if "true_sentence_rejected" in o),
        "score_true": {"min": round(min(scores_true), 3), "p01": round(float(np.percentile(scores_true, 1)), 3),
                       "median": round(float(np.median(scores_true)), 3)},
        "score_deleted": [round(s, 3) for s in scores_deleted],
        "deleted_flagged": sum(1 for o in outcomes if o.get("rejected")), "deleted": args.recordings,
        "extra_reported": sum(1 for o in outcomes if o.get("reported")), "extra": args.recordings,
        "outcomes": outcomes,
        "loadavg_before": [round(v, 2) for v in load_before], "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                 text=True).stdout.strip(),
    }
    print(json.dumps(results, indent=2, ensure_ascii=False))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
