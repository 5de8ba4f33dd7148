"""How long and how much memory the data module needs for a million-clip Common Voice release.

Goal (issue 3): manifest and vocabulary of a 1M-row release TSV with clip_durations.tsv in < 30 s and < 2 GiB.

Builds a synthetic release in a temporary folder (not timed): train.tsv with ``--rows`` rows of the pre-v17
schema (128-hex client ids, sentences of about ten words made from the bundled corpus's sentences, with its
accents, punctuation and quotes), dev.tsv and test.tsv with 1 % each, clip_durations.tsv for every clip, and
one empty file per clip in clips/ (the missing-file filter lists that folder). Then, in a fresh process,
times the two things a run does at start-up, exactly as the data module does them:

1. ``dm.vocab``: read and normalise the train/val/test TSVs, build the vocabulary;
2. ``dm.setup("fit")``: durations from clip_durations.tsv, the filters (missing file, empty text, duration
   bounds, CTC feasibility), the leakage check;

and reports wall time and peak resident memory (``ru_maxrss`` of that process, torch and Lightning included).

Usage::

    python benchmarks/data_manifest_scale.py                # 1M rows
    python benchmarks/data_manifest_scale.py --rows 100000  # quicker
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ptasr.data import BUNDLED_CORPUS
from ptasr.data.commonvoice import read_tsv

HEADER = ["client_id", "path", "sentence", "up_votes", "down_votes", "age", "gender", "accent", "locale", "segment"]


def write_release(root: Path, rows: int, seed: int = 0) -> None:
    """A synthetic release with ``rows`` train clips and 1 % as many dev and test clips each."""
    rng = random.Random(seed)
    sentences = read_tsv(Path(BUNDLED_CORPUS) / "train.tsv")["sentence"]
    speakers = [hashlib.sha512(str(i).encode()).hexdigest() for i in range(max(rows // 50, 1))]
    (root / "clips").mkdir(parents=True)
    sizes = {"train": rows, "dev": max(rows // 100, 1), "test": max(rows // 100, 1)}
    clip = 0
    with open(root / "clip_durations.tsv", "w", encoding="utf-8") as durations:
        durations.write("clip\tduration[ms]\n")
        for split, count in sizes.items():
            with open(root / f"{split}.tsv", "w", encoding="utf-8") as f:
                f.write("\t".join(HEADER) + "\n")
                for _ in range(count):
                    name = f"common_voice_pt_{clip}.mp3"
                    sentence = f"{rng.choice(sentences)} {rng.choice(sentences)}"
                    f.write(f"{rng.choice(speakers)}\t{name}\t{sentence}\t2\t0\ttwenties\tfemale\tbrasil\tpt\t\n")
                    durations.write(f"{name}\t{rng.randint(1000, 10000)}\n")
                    os.close(os.open(root / "clips" / name, os.O_CREAT | os.O_WRONLY, 0o644))
                    clip += 1


def measure(root: str) -> None:
    """Runs in a fresh process so that ru_maxrss is this work's peak, not the generator's."""
    start = time.perf_counter()
    from ptasr.data import SpeechDataModule
    from ptasr.data.settings import LoadingSettings

    imported = time.perf_counter()
    # the release trains on its train + dev splits and validates on test
    dm = SpeechDataModule(root, root, loading=LoadingSettings(num_workers=0, cache_dir=tempfile.mkdtemp()))
    vocab = dm.vocab
    vocab_done = time.perf_counter()
    dm.setup("fit")
    setup_done = time.perf_counter()
    train_batches = len(dm.train_dataloader())
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB
    print(f"import ptasr.data + lightning: {imported - start:6.2f} s")
    print(f"dm.vocab (read + normalise TSVs, vocabulary of {len(vocab)} tokens): {vocab_done - imported:6.2f} s")
    print(f"dm.setup('fit') (durations, filters, leakage check; {len(dm._manifests['train'])} train clips, "
          f"{train_batches} batches): {setup_done - vocab_done:6.2f} s")
    print(f"manifest + vocabulary total: {setup_done - imported:6.2f} s (goal < 30 s)")
    print(f"peak RSS of the process: {peak_gib:6.2f} GiB (goal < 2 GiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="train.tsv rows")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: the fresh measuring process
    args = parser.parse_args()
    if args.measure:
        measure(args.measure)
        return
    root = Path(tempfile.mkdtemp(prefix="cv-scale-"))
    try:
        t = time.perf_counter()
        write_release(root, args.rows)
        print(f"wrote a synthetic release of {args.rows} train rows in {time.perf_counter() - t:.0f} s: {root}")
        subprocess.run([sys.executable, __file__, "--measure", str(root)], check=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
