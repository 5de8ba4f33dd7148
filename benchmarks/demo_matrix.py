"""The demo recipe across seeds, precisions and CPU kernel paths: does ``python train.py fit`` learn everywhere?

Each cell is one full demo (configs/demo.yaml, 2000 updates) in a subprocess with ``OMP_NUM_THREADS=1``, its own
seed (``--seed_everything``), precision (``--trainer.precision``) and ATen kernel path (``ATEN_CPU_CAPABILITY``
unset for the machine's own, or ``default``/``avx2``). ``--trainer.max_time`` is raised to ``--max-time`` so
that a loaded machine slows a cell but does not cut it short (the recipe's 9 min 15 s guard is for a user's
first run, not for a measurement). At most ``--parallel`` cells run at once, in the order given (the first
cells are the most important). Per cell: the validation WER/CER at every validation (from its TensorBoard
events), the last and the best, wall time, updates per second and the load average before and after.

The JSON is rewritten after every cell, so a matrix cut short keeps what it measured; a rerun skips the cells
already in it.

    python benchmarks/demo_matrix.py --out benchmarks/results/demo_matrix_cpu.json \\
        --cells 42:32-true:native 43:32-true:native 44:32-true:native 42:bf16-mixed:native ...
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch
from train_throughput import cpu_name  # the script beside this one

from ptasr.run_log import read_scalars

ROOT = Path(__file__).resolve().parent.parent
WRITE_LOCK = threading.Lock()


def run_cell(seed: int, precision: str, kernels: str, max_time: str, workdir: Path,
             extra: list[str]) -> dict[str, Any]:
    """One demo fit; its validation curve and timings."""
    name = f"s{seed}-{precision}-{kernels}"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("ATEN_CPU_CAPABILITY", None)
    if kernels != "native":
        env["ATEN_CPU_CAPABILITY"] = kernels
    command = [sys.executable, str(ROOT / "train.py"), "fit", "-c", str(ROOT / "configs/demo.yaml"),
               "--seed_everything", str(seed), "--trainer.precision", precision, "--trainer.max_time", max_time,
               "--trainer.logger.init_args.save_dir", str(workdir), "--trainer.logger.init_args.name", name, *extra]
    load_before = os.getloadavg()
    start = time.monotonic()
    done = subprocess.run(command, env=env, cwd=workdir, capture_output=True, text=True)
    wall = time.monotonic() - start
    log_dirs = sorted((workdir / name).glob("version_*"))
    scalars = read_scalars(log_dirs[-1]) if log_dirs else {}
    wer = {step + 1: value for step, value in sorted(scalars.get("val/wer", {}).items())}
    cer = {step + 1: value for step, value in sorted(scalars.get("val/cer", {}).items())}
    updates = max(wer) if wer else 0
    return {"seed": seed, "precision": precision, "kernels": kernels, "returncode": done.returncode,
            "wall_s": round(wall, 1), "updates_at_last_validation": updates,
            "updates_per_s_incl_validation": round(updates / wall, 2) if updates else None,
            "val_wer": wer, "val_cer": cer,
            "last_wer": wer[updates] if wer else None, "best_wer": min(wer.values()) if wer else None,
            "last_cer": cer[updates] if cer else None,
            "loadavg_before": [round(v, 2) for v in load_before],
            "loadavg_after": [round(v, 2) for v in os.getloadavg()],
            "log_dir": str(log_dirs[-1]) if log_dirs else None,
            "stderr_tail": done.stderr[-1500:] if done.returncode else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", required=True, help="seed:precision:kernels, most important first")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/demo_matrix_cpu.json")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--max-time", default="00:02:00:00", help="the cells' --trainer.max_time (DD:HH:MM:SS)")
    parser.add_argument("--fit-arg", dest="fit_args", action="append", default=[],
                        help="one more train.py argument, e.g. --fit-arg=--trainer.max_steps=20 (a smoke test)")
    parser.add_argument("--workdir", type=Path, default=None, help="run folders (default: a temporary folder)")
    args = parser.parse_args()

    report: dict[str, Any] = {"benchmark": "demo_matrix", "date": str(date.today()), "cpu": cpu_name(),
                              "cores": os.cpu_count(), "torch": torch.__version__, "threads_per_cell": 1,
                              "parallel_cells": args.parallel, "max_time": args.max_time,
                              "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                                       capture_output=True, text=True).stdout.strip(), "cells": []}
    if args.out.is_file():
        report["cells"] = json.loads(args.out.read_text())["cells"]
    done = {(c["seed"], c["precision"], c["kernels"]) for c in report["cells"] if c["returncode"] == 0}
    todo = []
    for cell in args.cells:
        seed, precision, kernels = cell.split(":")
        if (int(seed), precision, kernels) not in done:
            todo.append((int(seed), precision, kernels))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="demo_matrix_"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"{len(todo)} cells, run folders in {workdir}", flush=True)

    def one(cell: tuple[int, str, str]) -> None:
        result = run_cell(*cell, args.max_time, workdir, args.fit_args)
        with WRITE_LOCK:
            report["cells"] = [c for c in report["cells"] if (c["seed"], c["precision"], c["kernels"]) != cell]
            report["cells"].append(result)
            args.out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"{cell}: rc {result['returncode']}, last WER {result['last_wer']} at "
              f"{result['updates_at_last_validation']}, best {result['best_wer']}, {result['wall_s']} s, "
              f"load {result['loadavg_after']}", flush=True)

    with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
        list(pool.map(one, todo))


if __name__ == "__main__":
    main()
