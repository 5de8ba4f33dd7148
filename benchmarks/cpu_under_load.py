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

A last row starts ``--late`` competing processes after the warm-up instead (outside the fit's process tree, as
someone else's jobs are), and times the fit from 25 s later: the ``ptasr`` fit started on free CPUs with
spinning threads and meets the load by shrinking its thread team (``ptasr/train/cpu_threads.py``).

Updates per second are counted between update ``--warmup`` (or the late row's start) and the last, from a callback's stamps; a fit ends
after ``--updates`` or once its timed updates took ``--seconds`` (at least 10 timed: torch's defaults under load
run several times slower). Setup, the first updates (kernel selection, worker start) and the final checkpoint are
outside. The JSON is rewritten after every measurement, so a run cut short keeps what it measured. The JSON
records the machine, the versions, and the 1-minute load average before each measurement and at the end (other
people's processes on a shared machine count as load too). Ratios printed: each rate over the same policy's
rate with no competing process, and ptasr's over torch's under the same load.

    python benchmarks/cpu_under_load.py                   # 0, 1, 2 competing, 1 late: about 10 min on 2 cores
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
TIMED_FROM: list[int] = []  # the stamp the timing starts from, set by UpdateClock
THREADS_SEEN: list[int] = []  # torch's intra-op threads at each update
LATE_PIDS: list[int] = []  # competing processes UpdateClock started during the fit


@functools.cache
def _update_clock_class() -> type:
    import lightning as L

    class UpdateClock(L.Callback):
        """Stamps the end of every training batch (one per update: the demo does not accumulate) and ends the
        fit after ``updates``, or once ``seconds`` have passed since update ``warmup`` and at least
        ``MIN_TIMED`` updates were timed (a slow configuration need not run them all). The demo's schedule, and
        so its learning rates, stay those of its 2000 updates."""

        def __init__(self, updates: int, warmup: int, seconds: float, late: int = 0, settle: float = 25.0) -> None:
            self.updates, self.warmup, self.seconds = updates, warmup, seconds
            self.late, self.settle, self.late_since = late, settle, None

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            import torch

            STAMPS.append(time.perf_counter())
            THREADS_SEEN.append(torch.get_num_threads())
            if len(STAMPS) == self.warmup + 1:
                if self.late:  # load that comes after the start: timing begins once it had time to be met
                    LATE_PIDS.extend(start_outside_our_tree(self.late))
                    self.late_since = STAMPS[-1]
                else:
                    TIMED_FROM.append(self.warmup)
            elif not TIMED_FROM and self.late_since is not None and STAMPS[-1] - self.late_since >= self.settle:
                TIMED_FROM.append(len(STAMPS) - 1)
            timed = len(STAMPS) - 1 - TIMED_FROM[0] if TIMED_FROM else 0
            out_of_time = timed >= MIN_TIMED and STAMPS[-1] - STAMPS[TIMED_FROM[0]] > self.seconds
            trainer.should_stop = (len(STAMPS) >= self.updates and timed >= MIN_TIMED) or out_of_time

    return UpdateClock


def __getattr__(name: str):
    # Lightning (and so torch) loads only when the CLI asks for the class: the policy must come first.
    if name == "UpdateClock":
        return _update_clock_class()
    raise AttributeError(name)


def start_outside_our_tree(count: int) -> list[int]:
    """``count`` CPU-bound processes that are not children of this one (a shell starts each and exits), as
    someone else's jobs are: the thread policy counts its own children (DataLoader workers) as its own load."""
    pids = []
    for _ in range(count):
        done = subprocess.run(["sh", "-c", f"'{sys.executable}' -c '{BUSY_LOOP}' >/dev/null 2>&1 & echo $!"],
                              capture_output=True, text=True, check=True)
        pids.append(int(done.stdout))
    return pids


def child(policy: str, updates: int, warmup: int, seconds: float, run_dir: str, late: int) -> None:
    """One short demo fit under ``policy`` (with ``late`` competing processes started after ``warmup``
    updates); prints its rate as one JSON line."""
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
            f"--trainer.callbacks.seconds={seconds}", f"--trainer.callbacks.late={late}"]
    if policy == "torch":
        args.append("--data.loading.num_workers=1")  # the demo's value before the policy chose it
    try:
        cli = cli_main(args)
    finally:
        for pid in cpu_under_load.LATE_PIDS:
            os.kill(pid, signal.SIGKILL)
    stamps = cpu_under_load.STAMPS
    timed = stamps[cpu_under_load.TIMED_FROM[0]:]
    rate = (len(timed) - 1) / (timed[-1] - timed[0])
    print(RESULT_PREFIX + json.dumps(dict(updates_per_second=rate, timed_updates=len(timed) - 1,
                                          intra_op_threads=cpu_under_load.THREADS_SEEN[-1],
                                          inter_op_threads=torch.get_num_interop_threads(),
                                          num_workers=cli.trainer.train_dataloader.num_workers,
                                          omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"))), flush=True)


# --- the harness -------------------------------------------------------------------------------------------


def measure(policy: str, args: argparse.Namespace, late: int = 0) -> dict:
    """Run one child fit; its result with the load average seen just before it started."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("OMP_", "GOMP_", "KMP_", "MKL_", "PTASR_THREADS"))}  # no user settings
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    load = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory() as run_dir:
        done = subprocess.run([sys.executable, __file__, "--child", policy, "--updates", str(args.updates),
                               "--warmup", str(args.warmup), "--seconds", str(args.seconds), "--run-dir", run_dir,
                               "--late", str(late)],
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


def summarise(runs: list[dict], rows: list[str]) -> dict:
    """Best rate per (policy, row) over the repeats, and its ratios to idle (row "0") and to torch's."""
    best: dict[tuple[str, str], float] = {}
    for run in runs:
        key = (run["policy"], run["competitors"])
        best[key] = max(best.get(key, 0.0), run["updates_per_second"])
    table = {}
    for policy in POLICIES:
        for row in rows:
            rate = best.get((policy, row))
            if rate is None:
                continue
            idle = best.get((policy, "0"))
            other = best.get(("torch", row))
            table[f"{policy}/{row}"] = dict(updates_per_second=round(rate, 3),
                                            of_idle=round(rate / idle, 3) if idle else None,
                                            of_torch=round(rate / other, 3) if other else None)
    return table


def rows(args: argparse.Namespace) -> list[str]:
    """The rows measured: competing processes from the start ("0", "1", "2"), then those that start late."""
    return [str(load) for load in args.loads] + ([f"{args.late} late"] if args.late else [])


def save(report: dict, args: argparse.Namespace) -> None:
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["summary"] = summarise(report["runs"], rows(args))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loads", type=int, nargs="+", default=[0, 1, 2], help="competing processes per row")
    parser.add_argument("--updates", type=int, default=80, help="updates per fit (default: 80)")
    parser.add_argument("--warmup", type=int, default=3, help="updates not timed at the start (default: 3)")
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="end a fit once its timed updates took this long (at least 10 timed; default: 60)")
    parser.add_argument("--late", type=int, default=1,
                        help="a last row with this many competing processes started after the warm-up, timed from "
                             "25 s later (default: 1; 0: no such row)")
    parser.add_argument("--repeats", type=int, default=1, help="fits per policy and load; the best counts")
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument("--note", default="", help="recorded in the JSON (e.g. what else ran on the machine)")
    parser.add_argument("--child", choices=POLICIES, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.updates, args.warmup, args.seconds, args.run_dir, args.late)

    # A TERM (a timeout, a kill) ends the competing processes too, through the finally below.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    report = dict(machine=machine(), note=args.note, updates=args.updates, warmup=args.warmup, seconds=args.seconds,
                  load_average_at_start=[round(x, 2) for x in os.getloadavg()], runs=[])
    for row in rows(args):
        late = args.late if row.endswith("late") else 0
        competitors = start_competitors(0 if late else int(row))
        try:
            time.sleep(1.0)  # the busy loops are running before the fit starts
            for _ in range(args.repeats):
                for policy in POLICIES:
                    run = dict(competitors=row, **measure(policy, args, late))
                    report["runs"].append(run)
                    save(report, args)
                    print(f"{row} competing, {policy:5}: {run['updates_per_second']:.2f} updates/s "
                          f"(threads {run['intra_op_threads']}/{run['inter_op_threads']} at the end, workers "
                          f"{run['num_workers']}, wait policy {run['omp_wait_policy']}, load average "
                          f"{run['load_average_before']})", flush=True)
        finally:
            stop(competitors)
    save(report, args)
    for key, row in report["summary"].items():
        print(f"{key:14} {row['updates_per_second']:6.2f} updates/s  {row['of_idle']}x its idle rate  "
              f"{row['of_torch']}x torch's under the same load")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
