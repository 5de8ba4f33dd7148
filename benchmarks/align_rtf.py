"""Speed and memory of ``ptasr align`` on a long recording with an XLS-R 300m-shaped model (issue #27, item 5).

The model has the real XLS-R 300m shape (tests/fixtures/hf_configs/wav2vec2-xls-r-300m.json, 315M parameters) with random
weights: speed and memory do not depend on the weights. It is saved as a model folder with the bundled corpus's
vocabulary. The recording is the bundled corpus's clips, resampled to 16 kHz and repeated with pauses of 0.15-1.5 s
until it lasts ``--minutes``, written as a 16 kHz FLAC; the transcript is their sentences, one per line. The
command runs as a user runs it, in a subprocess (``python -m ptasr align ... --batch-size 1``, 20 s chunks), and
its wall time and peak resident memory (the child's ``ru_maxrss``) are recorded. ``--min-score`` is set so low that
the random model's alignments are all accepted, so every clip is cut and written as well.

    nice -n 10 python benchmarks/align_rtf.py --minutes 60 --out benchmarks/results/align_rtf_cpu.json
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_recording(folder: Path, minutes: float, rng: random.Random) -> tuple[Path, Path, float, list[str]]:
    import numpy as np
    import soundfile as sf
    import torch

    from ptasr.data import BUNDLED_CORPUS
    from ptasr.data.audio import SAMPLE_RATE, read_audio, resample

    rows = []
    for split in ("test", "dev", "train"):
        with open(Path(BUNDLED_CORPUS) / f"{split}.tsv", encoding="utf-8", newline="") as f:
            rows += list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    clips = []
    for row in rows:
        samples, rate = read_audio(Path(BUNDLED_CORPUS) / "clips" / row["path"])
        clips.append((row["sentence"], resample(torch.from_numpy(samples), rate).numpy()))
    parts, sentences, total = [], [], 0
    noise = np.random.default_rng(0)
    while total < minutes * 60 * SAMPLE_RATE:
        sentence, samples = clips[rng.randrange(len(clips))]
        pause = noise.normal(0, 1e-3, int(rng.uniform(0.15, 1.5) * SAMPLE_RATE)).astype(np.float32)
        parts += [pause, samples]
        sentences.append(sentence)
        total += len(pause) + len(samples)
    audio, text = folder / "long.flac", folder / "long.txt"
    sf.write(audio, np.concatenate(parts), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    text.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    return audio, text, total / SAMPLE_RATE, sentences


def write_model(folder: Path, sentences: list[str]) -> Path:
    import torch

    from ptasr.data.text import TextNormalizer, Vocabulary
    from ptasr.model.config import Wav2Vec2Config
    from ptasr.model.wav2vec2 import Wav2Vec2CTC

    vocab = Vocabulary.build(TextNormalizer()(s) for s in sentences)
    torch.manual_seed(0)
    config = Wav2Vec2Config.from_json(ROOT / "tests/fixtures/hf_configs/wav2vec2-xls-r-300m.json").replace(
        vocab_size=len(vocab), pad_token_id=vocab.pad_id)
    model = Wav2Vec2CTC(config)
    model.save_pretrained(folder)
    vocab.save(folder)
    TextNormalizer().save(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/align-rtf"))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--prepare", action="store_true", help="only write the recording and the model")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.prepare:
        audio, text, seconds, sentences = write_recording(args.workdir, args.minutes, random.Random(0))
        write_model(args.workdir / "model", sentences)
        (args.workdir / "recording.json").write_text(json.dumps({"audio_s": seconds, "sentences": len(sentences)}))
        return
    # This process stays small (no torch): a child's peak RSS counts what it inherits at fork, until its exec.
    subprocess.run([sys.executable, __file__, "--prepare", "--minutes", str(args.minutes), "--workdir",
                    str(args.workdir)], check=True)
    recording = json.loads((args.workdir / "recording.json").read_text())
    seconds, sentences = recording["audio_s"], recording["sentences"]
    audio, text, model = args.workdir / "long.flac", args.workdir / "long.txt", args.workdir / "model"
    out = args.workdir / f"out-{time.time_ns()}"
    command = [sys.executable, "-m", "ptasr", "align", str(model), "--audio", str(audio), "--text", str(text),
               "-o", str(out), "--batch-size", "1", "--device", "cpu", "--min-score=-1e9"]
    load_before, started = os.getloadavg(), time.monotonic()
    # wait4 gives this one child's own usage: its peak RSS and CPU time, not the preparing child's.
    with open(args.workdir / "stdout.txt", "w+") as stdout, open(args.workdir / "stderr.txt", "w+") as stderr:
        child = subprocess.Popen(command, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=stdout, stderr=stderr,
                                 text=True)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - started
        stdout.seek(0), stderr.seek(0)
        done = subprocess.CompletedProcess(command, child.returncode, stdout.read(), stderr.read())
    peak_kib = usage.ru_maxrss
    results = {
        "benchmark": "align_rtf", "model": "XLS-R 300m shape, random weights", "machine": platform.processor()
        or platform.machine(), "cpu_count": os.cpu_count(), "audio_s": round(seconds, 1), "sentences": sentences,
        "command": " ".join(command[1:]), "returncode": done.returncode, "wall_s": round(wall, 1),
        "real_time_factor": round(wall / seconds, 4), "peak_rss_gib": round(peak_kib / 2**20, 3),
        "cpu_time_s": round(usage.ru_utime + usage.ru_stime, 1),
        "cpu_s_per_audio_s": round((usage.ru_utime + usage.ru_stime) / seconds, 3),
        "printed": done.stdout.strip().splitlines(), "stderr_tail": done.stderr[-1500:] if done.returncode else "",
        "loadavg_before": [round(v, 2) for v in load_before], "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=False, cwd=ROOT, capture_output=True,
                                 text=True).stdout.strip(),
    }
    print(json.dumps(results, indent=2, ensure_ascii=False))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
