"""How long and how much memory a run on several corpora needs before its first batch: 5M rows in three sources.

Goal (issue 12 item 3): three training sources with 5M rows in all -- a manifest with durations, a manifest
without, a Common Voice release TSV -- reach a ready training loader in < 60 s and < 4 GiB.

Builds, in a temporary folder (not timed):

- a release (``benchmarks/data_manifest_scale.py``'s synthetic one): train.tsv with 2/5 of the rows,
  dev.tsv and test.tsv with 1 % as many each, clip_durations.tsv, one empty file per clip;
- ``a/train.csv``: 2/5 of the rows, with a ``duration`` column, clips in folders of 10 000;
- ``b/train.jsonl``: 1/5 of the rows, without durations. Their durations come from the audio headers, read
  once and cached per manifest: here the generator writes that cache (``ManifestFile.save_durations``, as a
  first start does), so what is timed is every start after the first. The first start's header reads are
  measured apart, on real WAV files (``--headers``): reading a million headers takes minutes whatever the
  code around it.

Then, in a fresh process, times what a run does before its first training batch, as the data module does it:
``dm.vocab`` (read and normalise every source and the evaluation splits, build the vocabulary),
``dm.setup("fit")`` (durations, filters and report per source, leakage check, alphabet table), and
``dm.train_dataloader()`` with its first epoch's batch order (weights applied); and reports wall time and the
peak resident memory of that process (``ru_maxrss``, torch and Lightning included). The results also give the
machine's load averages just before the timed process starts and after the last timing (``os.getloadavg``:
runnable processes over 1, 5 and 15 minutes, this benchmark's own included), so that they say how busy the
machine was rather than assume it.

Usage::

    python benchmarks/data_sources_scale.py                     # 5M rows
    python benchmarks/data_sources_scale.py --rows 500000       # quicker
    python benchmarks/data_sources_scale.py --json benchmarks/results/data_sources_scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_manifest_scale import write_release  # noqa: E402
from train_throughput import cpu_name  # noqa: E402

from ptasr.data import BUNDLED_CORPUS  # noqa: E402
from ptasr.data.commonvoice import read_tsv  # noqa: E402

FOLDER_SIZE = 10_000


def write_manifests(root: Path, rows_a: int, rows_b: int, seed: int = 1) -> None:
    """``a/train.csv`` (with durations) and ``b/train.jsonl`` (without; its duration cache as a first start
    leaves it)."""
    from ptasr.data.manifests import ManifestFile

    rng = random.Random(seed)
    sentences = read_tsv(Path(BUNDLED_CORPUS) / "train.tsv")["sentence"]
    speakers = [f"spk{i}" for i in range(2000)]
    for name, rows in (("a", rows_a), ("b", rows_b)):
        folder = root / name
        folder.mkdir(parents=True)
        seconds = []
        path = folder / ("train.csv" if name == "a" else "train.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            if name == "a":
                f.write("path,text,duration,speaker\n")
            for i in range(rows):
                clip = f"clips/{i // FOLDER_SIZE:04d}/{name}{i}.flac"
                if i % FOLDER_SIZE == 0:
                    (folder / clip).parent.mkdir(parents=True)
                os.close(os.open(folder / clip, os.O_CREAT | os.O_WRONLY, 0o644))
                text = f"{rng.choice(sentences)} {rng.choice(sentences)}"
                seconds.append(rng.randint(1000, 10000) / 1000)
                if name == "a":
                    f.write(f'{clip},"{text.replace(chr(34), chr(34) * 2)}",{seconds[-1]},{rng.choice(speakers)}\n')
                else:
                    f.write(json.dumps({"audio": clip, "sentence": text, "speaker": rng.choice(speakers)},
                                       ensure_ascii=False) + "\n")
        if name == "b":
            # what the first start writes after reading every header (ManifestFile.durations)
            source = ManifestFile(path, cache_dir=root / "cache")
            source.save_durations(source.read_split("", str).keys, np.array(seconds))


def measure(root: str) -> dict:
    """Runs in a fresh process so that ru_maxrss is this work's peak, not the generator's."""
    start = time.perf_counter()
    from ptasr.data import SpeechDataModule
    from ptasr.data.settings import BatchSettings, LoadingSettings
    from ptasr.data.sources import DataSource

    imported = time.perf_counter()
    base = Path(root)
    release = str(base / "release")
    sources = [DataSource(release, splits=["train"]), DataSource(str(base / "a" / "train.csv")),
               DataSource(str(base / "b" / "train.jsonl"), weight=2.0)]
    dm = SpeechDataModule(sources, [DataSource(release, splits=["dev"])],
                          batching=BatchSettings(batch_size=None, max_batch_seconds=320.0, num_buckets=20),
                          loading=LoadingSettings(num_workers=0, cache_dir=str(base / "cache")))
    vocab = dm.vocab
    vocab_done = time.perf_counter()
    dm.setup("fit")
    setup_done = time.perf_counter()
    loader = dm.train_dataloader()
    first = next(iter(loader.sampler))
    ready = time.perf_counter()
    result = {
        "train_clips": len(dm._manifests["train"]), "val_clips": len(dm._manifests["val"]),
        "vocabulary_tokens": len(vocab), "train_batches": len(loader), "first_batch_clips": len(first),
        "import_s": round(imported - start, 2), "vocab_s": round(vocab_done - imported, 2),
        "setup_s": round(setup_done - vocab_done, 2), "loader_and_first_epoch_order_s": round(ready - setup_done, 2),
        "total_s": round(ready - imported, 2),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),  # Linux: KiB
    }
    print(json.dumps(result))
    return result


def measure_headers(count: int) -> dict:
    """First start vs later starts of a manifest without durations, on ``count`` real 1 s WAV files."""
    import numpy as np
    import soundfile as sf

    from ptasr.data.filters import FilterSettings, filter_manifest
    from ptasr.data.manifests import ManifestFile
    from ptasr.data.text import TextNormalizer

    folder = Path(tempfile.mkdtemp(prefix="headers-"))
    try:
        (folder / "clips").mkdir()
        audio = np.zeros(16000, dtype=np.int16)
        with open(folder / "m.csv", "w") as f:
            f.write("path,text\n")
            for i in range(count):
                sf.write(folder / "clips" / f"{i}.wav", audio, 16000)
                f.write(f"clips/{i}.wav,uma frase\n")
        timings = []
        for _ in range(2):
            source = ManifestFile(folder / "m.csv", cache_dir=folder / "cache")
            t = time.perf_counter()
            filter_manifest(source, source.read_split("", TextNormalizer()), FilterSettings(), "m")
            timings.append(time.perf_counter() - t)
        return {"clips": count, "first_start_s": round(timings[0], 3), "later_starts_s": round(timings[1], 3),
                "first_start_ms_per_clip": round(1000 * timings[0] / count, 3),
                "later_starts_ms_per_clip": round(1000 * timings[1] / count, 4)}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def load_average() -> list[float]:
    """Runnable processes on average over the last 1, 5 and 15 minutes (``os.getloadavg``)."""
    return [round(load, 2) for load in os.getloadavg()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=5_000_000, help="training rows over the three sources")
    parser.add_argument("--headers", type=int, default=5000, help="real WAV files for the header-path measurement")
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--keep", help="build the corpora in this folder and keep them (reused when present)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: the fresh measuring process
    args = parser.parse_args()
    if args.measure:
        measure(args.measure)
        return
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="sources-scale-"))
    rows_release, rows_a = 2 * args.rows // 5, 2 * args.rows // 5
    rows_b = args.rows - rows_release - rows_a
    try:
        if not (root / "b" / "train.jsonl").is_file():
            t = time.perf_counter()
            root.mkdir(parents=True, exist_ok=True)
            write_release(root / "release", rows_release)
            write_manifests(root, rows_a, rows_b)
            print(f"wrote {args.rows} rows (release {rows_release}, csv with durations {rows_a}, jsonl without "
                  f"{rows_b}) in {time.perf_counter() - t:.0f} s: {root}", flush=True)
        load_before = load_average()
        out = subprocess.run([sys.executable, __file__, "--measure", str(root)], check=True, capture_output=True,
                             text=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    headers = measure_headers(args.headers)
    load_after = load_average()
    report = {
        "benchmark": "data_sources_scale", "rows": args.rows,
        "sources": {"release_tsv_with_clip_durations": rows_release, "csv_with_durations": rows_a,
                    "jsonl_without_durations_cache_warm": rows_b},
        "goal": "ready training loader < 60 s and < 4 GiB",
        # measured, not assumed: a busy machine (load above its CPU count) slows every figure here
        "machine": {"cpu": cpu_name(), "cpus": os.cpu_count(), "load_average_before": load_before,
                    "load_average_after": load_after,
                    "load_average_note": "1, 5 and 15 minutes; before: as the timed process starts, after: once "
                                         "the header timing ends; this benchmark's own process counts"},
        "result": result, "header_path": headers,
        "header_path_note": "the jsonl source's durations come from its per-manifest cache (every start after "
                            "the first); a first start reads each header: first_start_ms_per_clip x its clips more",
    }
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
