"""The demo's training speed on a busy CPU: torch's default threads against ptasr's thread policy.

Each measurement is a short fit of the demo config (``python train.py fit``'s recipe: its model, data, callbacks
and precision; no validation, a temporary run folder) in a fresh process, so that the OpenMP settings a policy
makes before torch loads take effect. Beside it run 0, 1 or 2 competing CPU-bound processes (a Python busy
loop each); the two policies alternate under each load, in one run of this script:

- ``torch``: what ptasr did before ``ptasr/threads.py``: torch's defaults (one intra-op thread per core, the
  OpenMP runtime's default wait policy) and the demo's one DataLoader worker;
- ``ptasr``: the policy of ``ptasr/threads.py``, applied as ``train.py`` applies it: it looks at the other
  processes' CPU use when the fit starts (the competing processes are running by then) and keeps torch's
  spinning threads on free CPUs, sleeping ones on busy CPUs; each result records which it chose.

Updates per second are counted between update ``--warmup`` and the last, from a callback's stamps; a fit ends
after ``--updates`` or once its timed updates took ``--seconds`` (at least 10 timed: torch's defaults under load
run several times slower). Setup, the first updates (kernel selection, worker start) and the final checkpoint are
outside. The JSON is rewritten after every measurement, so a run cut short keeps what it measured. The JSON
records the machine, the versions, and the 1-minute load average before each measurement and at the end (other
people's processes on a shared machine count as load too). Ratios printed: each rate over the same policy's
rate with no competing process, and ptasr's over torch's under the same load.

    python benchmarks/cpu_under_load.py                   # 0, 1, 2 competing processes: about 8 min on 2 cores
    python benchmarks/cpu_under_load.py --loads 1 --seconds 20   # a quick look
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "cpu_under_load_cpu.json"
POLICIES = ("torch", "ptasr")
BUSY_LOOP = "while True: pass"
RESULT_PREFIX = "cpu_under_load result: "
MIN_TIMED = 10  # updates timed at least, however slow


# --- the measured process ------------------------------------------------------------------------------------

STAMPS: list[float] = []  # perf_counter at the end of each update, appended by UpdateClock


@functools.cache
def _update_clock_class() -> type:
    import lightning as L

    class UpdateClock(L.Callback):
        """Stamps the end of every training batch (one per update: the demo does not accumulate) and ends the
        fit after ``updates``, or once ``seconds`` have passed since update ``warmup`` and at least
        ``MIN_TIMED`` updates were timed (a slow configuration need not run them all). The demo's schedule, and
        so its learning rates, stay those of its 2000 updates."""

        def __init__(self, updates: int, warmup: int, seconds: float) -> None:
            self.updates, self.warmup, self.seconds = updates, warmup, seconds

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            STAMPS.append(time.perf_counter())
            timed = len(STAMPS) - 1 - self.warmup
            out_of_time = timed >= MIN_TIMED and STAMPS[-1] - STAMPS[self.warmup] > self.seconds
            trainer.should_stop = len(STAMPS) >= self.updates or out_of_time

    return UpdateClock


def __getattr__(name: str):
    # Lightning (and so torch) loads only when the CLI asks for the class: the policy must come first.
    if name == "UpdateClock":
        return _update_clock_class()
    raise AttributeError(name)


def child(policy: str, updates: int, warmup: int, seconds: float, run_dir: str) -> None:
    """One short demo fit under ``policy``; prints its update stamps as one JSON line."""
    if policy == "ptasr":
        from ptasr import threads

        threads.apply_before_torch()  # what train.py does first
    import torch

    from ptasr.train.cli import cli_main

    sys.argv = ["train.py"]  # the CLI reads its arguments from args below, not this script's
    sys.path.insert(0, str(REPO / "benchmarks"))
    import cpu_under_load  # this file as a module, so that the CLI finds UpdateClock by its class path

    args = ["fit", "--trainer.limit_val_batches=0", "--trainer.max_time=null",
            f"--trainer.logger.init_args.save_dir={run_dir}", "--trainer.callbacks+=cpu_under_load.UpdateClock",
            f"--trainer.callbacks.updates={updates}", f"--trainer.callbacks.warmup={warmup}",
            f"--trainer.callbacks.seconds={seconds}"]
    if policy == "torch":
        args.append("--data.num_workers=1")  # the demo's value before the policy chose it
    cli = cli_main(args)
    stamps = cpu_under_load.STAMPS
    timed = stamps[warmup:]
    rate = (len(timed) - 1) / (timed[-1] - timed[0])
    print(RESULT_PREFIX + json.dumps(dict(updates_per_second=rate, timed_updates=len(timed) - 1,
                                          intra_op_threads=torch.get_num_threads(),
                                          inter_op_threads=torch.get_num_interop_threads(),
                                          num_workers=cli.trainer.train_dataloader.num_workers,
                                          omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"))), flush=True)


# --- the harness -------------------------------------------------------------------------------------------


def measure(policy: str, args: argparse.Namespace) -> dict:
    """Run one child fit; its result with the load average seen just before it started."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("OMP_", "GOMP_", "KMP_", "MKL_", "PTASR_THREADS"))}  # no user settings
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    load = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory() as run_dir:
        done = subprocess.run([sys.executable, __file__, "--child", policy, "--updates", str(args.updates),
                               "--warmup", str(args.warmup), "--seconds", str(args.seconds), "--run-dir", run_dir],
                              capture_output=True, text=True, env=env, cwd=REPO)
    if done.returncode != 0:
        sys.exit(f"cpu_under_load.py: the {policy} fit failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    line = next(line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX))
    result = json.loads(line[len(RESULT_PREFIX):])
    return dict(policy=policy, load_average_before=load, **result)


def start_competitors(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(count)]


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.kill()
        process.wait()


def machine() -> dict:
    import lightning
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    from train_throughput import cpu_name

    return dict(cpu=cpu_name(), cpus=os.cpu_count(), python=platform.python_version(), torch=torch.__version__,
                lightning=lightning.__version__, torch_parallel=torch.__config__.parallel_info().splitlines()[:6],
                date=time.strftime("%Y-%m-%d %H:%M"), commit=_commit())


def _commit() -> str | None:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    return done.stdout.strip() or None


def summarise(runs: list[dict], loads: list[int]) -> dict:
    """Best rate per (policy, load) over the repeats, and its ratios to idle and to the other policy."""
    best = {(run["policy"], run["competitors"]): 0.0 for run in runs}
    for run in runs:
        key = (run["policy"], run["competitors"])
        best[key] = max(best[key], run["updates_per_second"])
    table = {}
    for policy in POLICIES:
        for load in loads:
            rate = best.get((policy, load))
            if rate is None:
                continue
            idle = best.get((policy, 0))
            other = best.get(("torch", load))
            table[f"{policy}/{load}"] = dict(updates_per_second=round(rate, 3),
                                             of_idle=round(rate / idle, 3) if idle else None,
                                             of_torch=round(rate / other, 3) if other else None)
    return table


def save(report: dict, args: argparse.Namespace) -> None:
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["summary"] = summarise(report["runs"], args.loads)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loads", type=int, nargs="+", default=[0, 1, 2], help="competing processes per row")
    parser.add_argument("--updates", type=int, default=80, help="updates per fit (default: 80)")
    parser.add_argument("--warmup", type=int, default=3, help="updates not timed at the start (default: 3)")
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="end a fit once its timed updates took this long (at least 10 timed; default: 60)")
    parser.add_argument("--repeats", type=int, default=1, help="fits per policy and load; the best counts")
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument("--note", default="", help="recorded in the JSON (e.g. what else ran on the machine)")
    parser.add_argument("--child", choices=POLICIES, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.updates, args.warmup, args.seconds, args.run_dir)

    # A TERM (a timeout, a kill) ends the competing processes too, through the finally below.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    report = dict(machine=machine(), note=args.note, updates=args.updates, warmup=args.warmup, seconds=args.seconds,
                  load_average_at_start=[round(x, 2) for x in os.getloadavg()], runs=[])
    for load in args.loads:
        competitors = start_competitors(load)
        try:
            time.sleep(1.0)  # the busy loops are running before the fit starts
            for _ in range(args.repeats):
                for policy in POLICIES:
                    run = dict(competitors=load, **measure(policy, args))
                    report["runs"].append(run)
                    save(report, args)
                    print(f"{load} competing, {policy:5}: {run['updates_per_second']:.2f} updates/s "
                          f"(threads {run['intra_op_threads']}/{run['inter_op_threads']}, workers "
                          f"{run['num_workers']}, load average {run['load_average_before']})", flush=True)
        finally:
            stop(competitors)
    save(report, args)
    for key, row in report["summary"].items():
        print(f"{key:8} {row['updates_per_second']:6.2f} updates/s  {row['of_idle']}x its idle rate  "
              f"{row['of_torch']}x torch's under the same load")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
