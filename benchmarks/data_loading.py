"""Loader throughput on the bundled corpus: audio seconds delivered per second per worker core.

Goal (issue 3): >= 1000 audio-s/s per worker core for decode (48 kHz MP3) + resample (16 kHz) + normalise.

Rows, each over every clip of train + dev (about 860 audio seconds), best of ``--repeats`` passes after one
warm-up pass, with ``torch.set_num_threads(1)`` as in a DataLoader worker:

- ``ptasr ClipDataset + collate, in-process``: exactly what one worker does per batch (decode, downmix,
  resample, normalise, encode labels, pad) on one core: the per-core number.
- ``peer: soundfile + torchaudio.functional.resample + numpy normalise``: the usual hand-written pipeline
  (HF's examples cast the audio column and resample with torchaudio per clip), for comparison in the same run.
- ``ptasr ClipLoader, N workers``: the real DataLoader with N worker processes; total audio-s/s and per worker.
  On a machine with fewer free cores than workers, per-worker numbers drop: they share cores.

Usage::

    python benchmarks/data_loading.py [--workers 1 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import soundfile as sf
import torch
import torchaudio

from ptasr.data import BUNDLED_CORPUS, TextNormalizer, Vocabulary
from ptasr.data.commonvoice import CommonVoiceRelease
from ptasr.data.dataset import ClipDataset, ClipLoader, collate_clips
from ptasr.data.filters import FilterSettings, build_manifest
from ptasr.data.sampler import BucketBatchSampler
from ptasr.data.table import Manifest


def in_process(dataset: ClipDataset, batches: list[list[int]]) -> float:
    """Seconds to decode and collate every batch in this process; returns the elapsed time."""
    start = time.perf_counter()
    for batch in batches:
        collate_clips(dataset[batch])
    return time.perf_counter() - start


def peer(manifest: Manifest) -> float:
    start = time.perf_counter()
    for key in manifest.keys:
        samples, rate = sf.read(manifest.reader(key), dtype="float32")
        waveform = torchaudio.functional.resample(torch.from_numpy(samples), rate, 16_000).numpy()
        (waveform - waveform.mean()) / np.sqrt(waveform.var() + 1e-7)
    return time.perf_counter() - start


def with_workers(dataset: ClipDataset, workers: int) -> float:
    sampler = BucketBatchSampler(dataset.manifest.durations, batch_size=16, seed=0)
    loader = ClipLoader(dataset, sampler, num_workers=workers, persistent_workers=True)
    for _ in loader:  # warm-up epoch: starts the workers and builds their resampling kernels
        pass
    start = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - start


def best(function, repeats: int) -> float:
    function()  # warm-up: page cache, resampling kernels
    return min(function() for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="DataLoader worker counts to time")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    normalizer = TextNormalizer()
    manifest, _ = build_manifest(CommonVoiceRelease(BUNDLED_CORPUS), ["train", "dev"], normalizer, FilterSettings())
    dataset = ClipDataset(manifest, Vocabulary.build(manifest.texts))
    audio = manifest.total_seconds
    batches = list(BucketBatchSampler(manifest.durations, batch_size=16, seed=0))
    print(f"{len(manifest)} clips, {audio:.0f} audio seconds, 48 kHz MP3 -> 16 kHz; {os.cpu_count()} CPUs visible")
    rows = [("ptasr ClipDataset + collate, in-process", best(lambda: in_process(dataset, batches), args.repeats), 1),
            ("peer: soundfile + torchaudio.functional.resample + numpy normalise",
             best(lambda: peer(manifest), args.repeats), 1)]
    rows += [(f"ptasr ClipLoader, {n} worker{'s' * (n > 1)}", with_workers(dataset, n), n) for n in args.workers]
    print(f"{'pipeline':<70} {'audio-s/s':>10} {'per core':>10}")
    for name, seconds, cores in rows:
        print(f"{name:<70} {audio / seconds:>10.0f} {audio / seconds / cores:>10.0f}")


if __name__ == "__main__":
    main()
