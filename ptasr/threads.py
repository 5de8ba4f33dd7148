"""ptasr's CPU thread policy: how many threads torch and the data loader use, and how idle OpenMP threads wait.

Why: torch runs its CPU ops on an OpenMP team of one thread per core, and the OpenMP runtime's idle threads spin
(libgomp polls 300,000 times) before they sleep. On free cores that is what makes small ops fast: the team is
awake when the next parallel region starts. When another process wants the same cores (someone else's job), the
spinning threads burn the time it needs, and every parallel region then waits for a team member the kernel has
descheduled: on 2 cores beside one CPU-bound process the demo trained at about a third of its idle rate with
torch's defaults. Threads that sleep as soon as they have no work (``OMP_WAIT_POLICY=PASSIVE``) give the core
back at once and slow a busy machine's run in proportion to the load, but each wake-up costs time, about a fifth
of the demo's rate on free cores. So the policy looks before it chooses: other processes' CPU use over a short
window (:func:`busy_cpus`), and sleeping threads only where the CPUs are busy. The figures are in
``benchmarks/README.md`` (``benchmarks/cpu_under_load.py``).

What :func:`decide` chooses, each only where the user has not chosen (their environment variables and config
values, such as ``data.loading.num_workers``, win):

- ``OMP_WAIT_POLICY=PASSIVE`` when other processes keep at least :data:`BUSY_CPUS` of this process's CPUs busy
  (or their use cannot be read); torch's spinning threads otherwise. Not set when the user set
  ``OMP_WAIT_POLICY``, or tuned the spinning through ``GOMP_SPINCOUNT`` or ``KMP_BLOCKTIME``. The choice holds
  for the process: the OpenMP runtime reads it once. When the CPUs get busy later (a second job started beside
  a long fit), :class:`~ptasr.train.cpu_threads.CPUThreadsUnderLoad` shrinks the spinning team instead
  (:func:`threads_beside`, :class:`OtherProcessesMeter`).
- intra-op threads (``OMP_NUM_THREADS``): the CPUs this process may run on (its CPU affinity, and a cgroup CPU
  quota such as ``docker --cpus``), where torch counts every core of the host. Not set when the user set
  ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS``.
- inter-op threads: torch's own choice; that pool serves ``torch.jit.fork``, which ptasr does not call.
- DataLoader workers (:func:`dataloader_workers`), when ``data.loading.num_workers`` is not given: one for
  training on the CPU (decoding a batch costs a small part of an update; more workers would take cores from the
  model), and for an accelerator the CPUs left per process, up to 8.

The OpenMP runtime reads its environment once, when torch loads it, so :func:`apply_before_torch` runs before
anything imports torch in every entry point: ``train.py``, ``ptasr`` / ``python -m ptasr`` (``ptasr.cli.main``)
and the tests' ``conftest.py``. It prints one line when its choice differs from torch's defaults.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

# Variables through which a user has already said how idle OpenMP threads wait (libgomp's and Intel/LLVM's).
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
# torch takes its intra-op thread count from either.
THREAD_COUNT_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
MAX_WORKERS = 8  # decoding and resampling keep up with an XLS-R step on a GPU with this many (the recipes' value)
# Other processes' CPU use, in CPUs' worth, from which idle OpenMP threads sleep: one CPU-bound process beside
# the run costs torch's spinning threads about 3/4 of the rate, sleeping threads about 1/2; light background
# work (a shell, an editor, a monitor: a few hundredths of a CPU) costs neither.
BUSY_CPUS = 0.5
BUSY_WINDOW_SECONDS = 0.15  # /proc/stat counts in 10 ms ticks: 15 per CPU, enough to tell 0.5 CPUs from 0


@dataclass(frozen=True)
class ThreadPolicy:
    """The environment variables to set before torch loads, and why (empty: torch's defaults stand)."""

    environment: dict[str, str] = field(default_factory=dict)
    reasons: tuple[str, ...] = ()

    def describe(self) -> str | None:
        """One line for the log, or ``None`` when nothing differs from torch's defaults."""
        if not self.environment:
            return None
        settings = " ".join(f"{name}={value}" for name, value in self.environment.items())
        return (f"CPU threads: {settings} ({'; '.join(self.reasons)}); set these variables yourself to choose "
                f"otherwise")


def decide(environ: Mapping[str, str], cpus: int, host_cpus: int, busy: float | None) -> ThreadPolicy:
    """The policy for a process that may use ``cpus`` of the host's ``host_cpus`` while other processes keep
    ``busy`` of those CPUs busy (``None``: unknown), given the user's ``environ``.

    >>> decide({}, cpus=2, host_cpus=2, busy=1.0).environment
    {'OMP_WAIT_POLICY': 'PASSIVE'}
    >>> decide({}, cpus=2, host_cpus=2, busy=0.02).environment
    {}
    >>> decide({"OMP_WAIT_POLICY": "ACTIVE"}, cpus=2, host_cpus=8, busy=1.0).environment
    {'OMP_NUM_THREADS': '2'}
    """
    environment, reasons = {}, []
    if not any(name in environ for name in WAIT_VARIABLES) and (busy is None or busy >= BUSY_CPUS):
        environment["OMP_WAIT_POLICY"] = "PASSIVE"
        seen = ("other processes' CPU use is unknown" if busy is None
                else f"other processes keep {busy:.1f} of {cpus} CPUs busy")
        reasons.append(f"{seen}: idle threads sleep instead of spinning")
    if not any(name in environ for name in THREAD_COUNT_VARIABLES) and cpus < host_cpus:
        environment["OMP_NUM_THREADS"] = str(cpus)
        reasons.append(f"this process may use {cpus} of the {host_cpus} CPUs")
    return ThreadPolicy(environment, tuple(reasons))


def busy_cpus(window: float = BUSY_WINDOW_SECONDS) -> float | None:
    """CPUs' worth of time other processes use on this process's CPUs over the next ``window`` seconds, while
    this process sleeps (:class:`OtherProcessesMeter`); ``None`` off Linux."""
    meter = OtherProcessesMeter()
    time.sleep(window)
    return meter.sample()


def _cpu_ticks(stat: Path, allowed: set[int] | None) -> tuple[int, int] | None:
    """(busy, all) ticks summed over the CPUs in ``allowed`` (all where ``None``), from ``/proc/stat``'s
    ``cpuN user nice system idle iowait irq softirq steal ...`` lines."""
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return None
    busy = total = 0
    for line in lines:
        name, *fields = line.split()
        if not (name.startswith("cpu") and name[3:].isdigit()) or (allowed and int(name[3:]) not in allowed):
            continue
        ticks = [int(field) for field in fields[:8]] + [0] * (8 - len(fields[:8]))
        user, nice, system, idle, iowait, irq, softirq, _steal = ticks
        # steal (a hypervisor's other guests) and I/O wait do not take this process's cores
        busy += user + nice + system + irq + softirq
        total += user + nice + system + idle + iowait + irq + softirq
    return (busy, total) if total else None


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask, lowered by a cgroup CPU quota (at least 1)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return max(1, min(cpus, math.ceil(quota))) if quota else cpus


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs' worth of time a cgroup quota allows (``docker --cpus 1.5``: 1.5), or ``None`` without a quota.

    Reads cgroup v2's ``cpu.max`` ("max 100000" or "150000 100000") or v1's ``cpu.cfs_quota_us`` (-1: none).
    """
    try:
        if (v2 := root / "cpu.max").is_file():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        if (v1 := root / "cpu" / "cpu.cfs_quota_us").is_file():
            quota = int(v1.read_text())
            return None if quota <= 0 else quota / int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):  # an unreadable or odd file: no quota we can rely on
        return None
    return None


def apply_before_torch(environ: MutableMapping[str, str] = os.environ, announce: bool = True) -> ThreadPolicy | None:
    """Set the policy's variables in ``environ``, say so on stderr when ``announce`` and the choice differs from
    torch's defaults; ``None`` (nothing set) if torch is already loaded.

    Once torch (and with it the OpenMP runtime) has loaded, its environment is read and these variables would
    only reach child processes, so nothing is set then: an entry point called from Python (a test calling
    ``ptasr.cli.main``) keeps the process's threads as they are.
    """
    if "torch" in sys.modules:
        return None
    # the window is spent only where the wait policy is still to be chosen
    global _ADAPTS
    busy = None if any(name in environ for name in WAIT_VARIABLES) else busy_cpus()
    policy = decide(environ, usable_cpus(), os.cpu_count() or 1, busy)
    _ADAPTS = meets_later_load(environ, policy)
    environ.update(policy.environment)
    if announce and (line := policy.describe()):
        print(f"ptasr: {line}", file=sys.stderr, flush=True)
    return policy


_ADAPTS = False  # set by apply_before_torch


def meets_later_load(environ: Mapping[str, str], policy: ThreadPolicy) -> bool:
    """Whether a run under ``policy`` may shrink its thread team when other processes come later: only with
    spinning threads (sleeping ones were chosen for busy CPUs and lose little) on a thread count and wait policy
    the user left to ptasr.

    >>> meets_later_load({}, decide({}, cpus=2, host_cpus=2, busy=0.0))
    True
    >>> meets_later_load({}, decide({}, cpus=2, host_cpus=2, busy=1.0)), meets_later_load({"OMP_NUM_THREADS": "2"}, ThreadPolicy())
    (False, False)
    """
    users = any(name in environ for name in (*WAIT_VARIABLES, *THREAD_COUNT_VARIABLES))
    return not users and "OMP_WAIT_POLICY" not in policy.environment


def adapts_to_load() -> bool:
    """Whether this process's entry point left the threads to ptasr with spinning threads (the user set none of
    the OpenMP variables, and the CPUs were free at start): then :func:`threads_beside` may shrink the team
    when other processes come."""
    return _ADAPTS


def threads_beside(busy: float, base: int) -> int:
    """Intra-op threads for a process whose team has ``base`` spinning threads while other processes keep
    ``busy`` CPUs' worth busy: the CPUs they leave free (at least 1), ``base`` when they use less than
    :data:`BUSY_CPUS`. A team no larger than the free CPUs never waits on a descheduled member.

    >>> threads_beside(0.1, 2), threads_beside(1.0, 2), threads_beside(2.3, 2), threads_beside(1.4, 8)
    (2, 1, 1, 7)
    """
    if busy < BUSY_CPUS:
        return base
    return max(1, min(base, round(base - busy)))


class OtherProcessesMeter:
    """CPUs' worth of time other processes used on this process's CPUs between two calls of :meth:`sample`:
    all CPU time on them (``/proc/stat``) less this process's own and its children's (DataLoader workers)."""

    def __init__(self, proc: Path = Path("/proc")) -> None:
        self.proc = proc
        self.allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
        self.cpus = len(self.allowed) if self.allowed else os.cpu_count() or 1
        self._last = self._read()

    def _read(self) -> tuple[int, int, int] | None:
        """(busy ticks of the CPUs, all their ticks, this process tree's ticks), or ``None`` off Linux."""
        ticks = _cpu_ticks(self.proc / "stat", self.allowed)
        own = _process_ticks(self.proc / "self")
        if ticks is None or own is None:
            return None
        children = self.proc / "self" / "task"
        for task in children.iterdir() if children.is_dir() else ():
            try:
                pids = (task / "children").read_text().split()
            except OSError:  # a thread that ended meanwhile, or a kernel without the children file
                continue
            own += sum(_process_ticks(self.proc / pid) or 0 for pid in pids)
        return ticks[0], ticks[1], own

    def sample(self) -> float | None:
        """Other processes' CPUs' worth since the previous call (or construction); ``None`` off Linux, or when
        no tick has passed."""
        now, last = self._read(), self._last
        self._last = now
        if now is None or last is None or now[1] <= last[1]:
            return None
        others = (now[0] - last[0]) - (now[2] - last[2])  # a child that exited took its ticks along: >= 0 below
        return max(0.0, self.cpus * others / (now[1] - last[1]))


def _process_ticks(process: Path) -> int | None:
    """User + system ticks of all threads of ``process`` (``/proc/<pid>``), from its ``stat`` file."""
    try:
        fields = (process / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15, counted from the state (3)


def dataloader_workers(accelerator: str, processes_per_host: int = 1, cpus: int | None = None) -> int:
    """DataLoader workers for one training process when ``data.loading.num_workers`` is not given.

    On the CPU the model's threads use every core, so one worker overlaps decoding with the update without
    taking more; beside an accelerator each of the ``processes_per_host`` processes gets the CPUs left after
    its own main thread, up to :data:`MAX_WORKERS`.

    >>> dataloader_workers("cpu", cpus=2), dataloader_workers("gpu", cpus=16), dataloader_workers("gpu", 4, cpus=16)
    (1, 8, 3)
    """
    if accelerator == "cpu":
        return 1
    per_process = (cpus or usable_cpus()) // max(1, processes_per_host)
    return max(1, min(MAX_WORKERS, per_process - 1))
