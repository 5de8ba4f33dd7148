"""What verifying a checkpoint costs: ``ptasr.recognition.trained_model.checkpoint_damage`` (every record's CRC-32, read back
with ``zipfile``) in milliseconds per MB, beside ``torch.load`` of the same file and a sha256 of its bytes (the
sidecar digest not chosen); and what holding CRC-32 on costs ``torch.save`` (on against off).

The checkpoint is a dict of random float32 tensors of ``--mb`` MB in all (a model, and Adam's two moments, of
layers of 1 M values), written through ``AtomicCheckpointIO``. Every read is from the page cache (the file was
just written): a cold read from disk adds the disk's own time to every column alike. Best of ``--repeats``.

    python benchmarks/checkpoint_verify.py --mb 512 --out benchmarks/results/checkpoint_verify_cpu.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch
from train_throughput import cpu_name  # the script beside this one

from ptasr.recognition.trained_model import _damage
from ptasr.train.checkpoint_io import AtomicCheckpointIO


def _best_seconds(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def _save(checkpoint: dict, path: Path, crc32: bool) -> None:
    before = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(crc32)
    try:
        with open(path, "wb") as file:
            torch.save(checkpoint, file)
    finally:
        torch.serialization.set_crc32_options(before)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    layers = max(1, args.mb * 2**20 // (4 * 2**20))
    checkpoint = {"state_dict": {f"layer{i}": torch.randn(2**20) for i in range(layers)}}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "last.ckpt"
        AtomicCheckpointIO().save_checkpoint(checkpoint, path)
        mb = path.stat().st_size / 2**20
        stat = path.stat()
        read = {
            "verify (CRC-32 of every record)": lambda: _damage.__wrapped__(str(path), stat.st_size, stat.st_mtime_ns),
            "torch.load": lambda: torch.load(path, map_location="cpu", weights_only=True),
            "sha256 of the file": lambda: hashlib.sha256(path.read_bytes()).hexdigest(),
        }
        assert read["verify (CRC-32 of every record)"]() is None
        results = {name: round(_best_seconds(run, args.repeats) * 1000 / mb, 3) for name, run in read.items()}
        scratch = Path(folder) / "scratch.ckpt"
        for crc32 in (True, False):
            seconds = _best_seconds(lambda: _save(checkpoint, scratch, crc32), args.repeats)
            results[f"torch.save, CRC-32 {'on' if crc32 else 'off'}"] = round(seconds * 1000 / mb, 3)
    report = {"info": {"checkpoint_mb": round(mb, 1), "repeats": args.repeats, "cpu": cpu_name(),
                       "cpu_count": os.cpu_count(), "date": str(date.today()),
                       "loadavg": [round(x, 2) for x in os.getloadavg()],
                       "note": "ms per MB, best of repeats, file in the page cache; shared machine, other jobs running"},
              "results_ms_per_mb": results}
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
