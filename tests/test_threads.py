"""ptasr/threads.py: the CPU thread policy's decisions, and that every entry point applies it before torch loads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ptasr import threads
from ptasr.threads import ThreadPolicy, _cpu_ticks, cgroup_cpu_quota, dataloader_workers, decide

REPO = Path(__file__).resolve().parents[1]


def test_idle_openmp_threads_sleep_on_busy_cpus_unless_the_user_chose_how_they_wait() -> None:
    assert decide({}, cpus=2, host_cpus=2, busy=1.0).environment == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert decide({}, cpus=2, host_cpus=2, busy=None).environment == {"OMP_WAIT_POLICY": "PASSIVE"}  # unknown
    for name, value in [("OMP_WAIT_POLICY", "ACTIVE"), ("GOMP_SPINCOUNT", "10000"), ("KMP_BLOCKTIME", "200")]:
        assert decide({name: value}, cpus=2, host_cpus=2, busy=1.0).environment == {}, name


def test_free_cpus_keep_torchs_spinning_threads() -> None:
    # spinning is what makes small ops fast on free cores; light background work does not count as busy
    assert decide({}, cpus=2, host_cpus=2, busy=0.0).environment == {}
    assert decide({}, cpus=64, host_cpus=64, busy=threads.BUSY_CPUS - 0.01).environment == {}
    assert decide({}, cpus=64, host_cpus=64, busy=threads.BUSY_CPUS).environment == {"OMP_WAIT_POLICY": "PASSIVE"}


def test_thread_count_follows_the_usable_cpus_unless_the_user_set_one() -> None:
    assert "OMP_NUM_THREADS" not in decide({}, cpus=4, host_cpus=4, busy=0.0).environment  # torch's count is right
    assert decide({}, cpus=3, host_cpus=64, busy=0.0).environment["OMP_NUM_THREADS"] == "3"  # affinity, cgroup
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        assert "OMP_NUM_THREADS" not in decide({name: "8"}, cpus=3, host_cpus=64, busy=0.0).environment, name


def test_the_policy_says_what_it_chose_in_one_line_and_nothing_when_torch_defaults_stand() -> None:
    assert ThreadPolicy().describe() is None
    assert decide({"OMP_WAIT_POLICY": "ACTIVE"}, cpus=2, host_cpus=2, busy=1.0).describe() is None
    assert decide({}, cpus=2, host_cpus=2, busy=0.0).describe() is None
    line = decide({}, cpus=3, host_cpus=64, busy=1.2).describe()
    assert "\n" not in line and "OMP_WAIT_POLICY=PASSIVE" in line and "OMP_NUM_THREADS=3" in line
    assert "other processes keep 1.2 of 3 CPUs busy" in line


def test_cpu_ticks_count_busy_time_of_the_allowed_cpus_only(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    #                 user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text("cpu  300 0 30 600 10 0 0 50 0 0\n"
                    "cpu0 100 0 10 400 10 0 0 50 0 0\n"
                    "cpu1 200 0 20 200 0 0 0 0 0 0\n"
                    "intr 1 2 3\n")
    assert _cpu_ticks(stat, None) == (330, 940)  # steal is neither busy nor ours
    assert _cpu_ticks(stat, {1}) == (220, 420)
    assert _cpu_ticks(tmp_path / "missing", None) is None


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="busy_cpus reads Linux's /proc/stat")
def test_a_cpu_bound_process_beside_us_counts_as_busy() -> None:
    # a grandchild, outside the tree the meter counts as ours (this process and its children: DataLoader workers);
    # "; true" keeps sh from exec-ing the spinner in its own place
    spinner = f'"{sys.executable}" -c "while True: pass"; true'
    competitor = subprocess.Popen(["sh", "-c", spinner], start_new_session=True)
    try:
        time.sleep(0.3)  # running before the window opens
        busy = threads.busy_cpus(window=0.5)
    finally:
        os.killpg(competitor.pid, signal.SIGKILL)
        competitor.wait()
    assert busy is not None and busy >= 0.8  # one CPU's worth, give or take the scheduler's ticks


def test_cgroup_quota_v2_and_v1(tmp_path: Path) -> None:
    assert cgroup_cpu_quota(tmp_path) is None  # no cgroup files at all
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(tmp_path) is None
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # docker --cpus 1.5
    assert cgroup_cpu_quota(tmp_path) == 1.5
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(v1) is None
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    assert cgroup_cpu_quota(v1) == 0.5
    (tmp_path / "cpu.max").write_text("garbage\n")
    assert cgroup_cpu_quota(tmp_path) is None


def test_dataloader_workers_one_on_the_cpu_and_the_spare_cpus_beside_an_accelerator() -> None:
    assert dataloader_workers("cpu", cpus=2) == dataloader_workers("cpu", cpus=64) == 1
    assert dataloader_workers("cuda", cpus=2) == 1
    assert dataloader_workers("cuda", cpus=16) == 8  # capped
    assert dataloader_workers("cuda", processes_per_host=4, cpus=16) == 3  # each rank leaves one CPU to itself
    assert dataloader_workers("cuda", processes_per_host=8, cpus=4) == 1


def test_a_given_num_workers_wins_over_the_policy() -> None:
    from ptasr.data import SpeechDataModule
    from ptasr.data.settings import BatchSettings, LoadingSettings

    # no data.loading.num_workers: the policy's (no Trainer: as on the CPU)
    data = SpeechDataModule(batching=BatchSettings(batch_size=4))
    data.setup("fit")
    assert data.hparams.loading["num_workers"] is None and data.train_dataloader().num_workers == 1
    data.loading = LoadingSettings(num_workers=0)  # as --data.loading.num_workers=0 gives it
    assert data.train_dataloader().num_workers == 0


def test_nothing_is_set_once_torch_is_loaded() -> None:
    import torch  # noqa: F401 -- loaded, as in a test calling ptasr.cli.main in-process

    environ: dict[str, str] = {}
    assert threads.apply_before_torch(environ) is None and environ == {}


def _spin_count(command: list[str], competing: bool = True, **extra: str) -> tuple[str, str]:
    """GOMP_SPINCOUNT as libgomp reports it when it loads in ``command`` (run without the user's OpenMP
    variables, beside one competing CPU-bound process where ``competing``, so that the policy sees busy
    CPUs), and the command's stderr."""
    env = {name: value for name, value in os.environ.items()
           if name not in (*threads.WAIT_VARIABLES, *threads.THREAD_COUNT_VARIABLES)}
    env.update(OMP_DISPLAY_ENV="VERBOSE", PYTHONPATH=str(REPO), **extra)
    competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if competing else None
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    output = done.stdout + done.stderr
    values = [line.split("=", 1)[1].strip(" '") for line in output.splitlines()
              if line.strip().startswith("GOMP_SPINCOUNT =")]
    if not values:
        pytest.skip("torch's OpenMP runtime is not libgomp (no GOMP_SPINCOUNT in OMP_DISPLAY_ENV's report)")
    return values[0], done.stderr


ENTRY_POINTS = {
    "train.py": [sys.executable, "train.py", "fit", "--print_config"],
    # a real clip, so that the command gets as far as loading torch before it fails on the missing model
    "python -m ptasr": [sys.executable, "-m", "ptasr", "transcribe", "no-such-model.ckpt",
                        "ptasr/assets/cv-tiny-pt/clips/common_voice_pt_19019079.mp3"],
    "tests' conftest": [sys.executable, "-m", "pytest", "-s", "-q", "-p", "no:cacheprovider",
                        "tests/test_threads.py::test_nothing_is_set_once_torch_is_loaded"],
}


def test_torch_alone_spins_so_the_entry_point_checks_can_fail() -> None:
    spin, _ = _spin_count([sys.executable, "-c", "import torch"], competing=False)
    assert spin != "0"  # libgomp's default: 300000 polls before an idle thread sleeps


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_entry_points_apply_the_policy_before_torch_loads_openmp(entry: str) -> None:
    # beside a competing process: the policy's choice (sleeping threads) differs from torch's default
    spin, stderr = _spin_count(ENTRY_POINTS[entry])
    assert spin == "0", f"{entry}: libgomp loaded before OMP_WAIT_POLICY=PASSIVE was set"
    if entry != "tests' conftest":  # the suite keeps quiet
        assert "ptasr: CPU threads: OMP_WAIT_POLICY=PASSIVE" in stderr  # the one line saying so


def test_the_users_wait_policy_wins_in_the_entry_point() -> None:
    spin, stderr = _spin_count(ENTRY_POINTS["python -m ptasr"], OMP_WAIT_POLICY="ACTIVE")
    assert spin != "0" and "CPU threads" not in stderr


# --- load that comes after the run started -------------------------------------------------------------------


def test_the_team_shrinks_to_the_cpus_other_processes_leave() -> None:
    assert threads.threads_beside(0.0, 2) == threads.threads_beside(threads.BUSY_CPUS - 0.01, 2) == 2
    assert threads.threads_beside(1.0, 2) == 1 and threads.threads_beside(3.0, 2) == 1  # never below one
    assert threads.threads_beside(2.0, 16) == 14


def _busy_process_outside_our_tree() -> int:
    """The pid of a CPU-bound process that is not our child (a shell starts it and exits: init adopts it)."""
    done = subprocess.run(["sh", "-c", f"'{sys.executable}' -c 'while True: pass' >/dev/null 2>&1 & echo $!"],
                          capture_output=True, text=True, check=True)
    return int(done.stdout)


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="the meter reads Linux's /proc")
def test_the_meter_counts_other_processes_but_not_our_own_workers() -> None:
    stranger = _busy_process_outside_our_tree()
    try:
        meter = threads.OtherProcessesMeter()
        time.sleep(0.6)
        assert meter.sample() >= 0.8  # someone else's CPU-bound process: about one CPU
    finally:
        os.kill(stranger, 9)
    worker = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # ours, like a DataLoader worker
    try:
        time.sleep(0.2)
        meter = threads.OtherProcessesMeter()
        first, worker_first = meter._read(), threads._process_ticks(Path(f"/proc/{worker.pid}"))
        time.sleep(0.6)
        last, worker_last = meter._read(), threads._process_ticks(Path(f"/proc/{worker.pid}"))
    finally:
        worker.kill()
        worker.wait()
    assert worker_last > worker_first  # it ran, however busy the machine
    assert last[2] - first[2] >= worker_last - worker_first  # and its ticks count as ours, not as others'


class _Meter:
    """Stands in for OtherProcessesMeter: the busy CPUs each sample reports, in turn."""

    def __init__(self, busy: list[float]) -> None:
        self.busy, self.cpus = list(busy), 2

    def sample(self) -> float:
        return self.busy.pop(0)


def test_the_callback_shrinks_the_team_while_others_run_and_restores_it(caplog) -> None:
    import torch
    from lightning.pytorch.trainer.trainer import Trainer

    from ptasr.train.cpu_threads import CPUThreadsUnderLoad

    base = torch.get_num_threads()
    trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    torch.set_num_threads(2)
    try:
        callback = CPUThreadsUnderLoad(every_seconds=0.0, enabled=True)
        callback.on_train_start(trainer, None)
        callback._meter = _Meter([0.1, 1.1, 1.0, 0.2])
        with caplog.at_level("INFO"):
            seen = []
            for _ in range(4):
                callback.on_train_batch_end(trainer)
                seen.append(torch.get_num_threads())
        assert seen == [2, 1, 1, 2]
        lines = [record.getMessage() for record in caplog.records if "CPU threads" in record.getMessage()]
        assert lines == ["CPU threads: 2 -> 1 at update 0 (other processes keep 1.1 of 2 CPUs busy)",
                         "CPU threads: 1 -> 2 at update 0 (the CPUs are free again)"]
        callback._meter = _Meter([1.5])
        callback.on_train_batch_end(trainer)
        callback.on_train_end(trainer, None)
        assert torch.get_num_threads() == 2  # the team back for what follows in the process
    finally:
        torch.set_num_threads(base)


def test_the_callback_leaves_threads_the_user_or_a_busy_start_chose() -> None:
    import torch
    from lightning.pytorch.trainer.trainer import Trainer

    from ptasr.train.cpu_threads import CPUThreadsUnderLoad

    assert threads.meets_later_load({}, decide({}, cpus=2, host_cpus=2, busy=0.0))
    assert not threads.meets_later_load({}, decide({}, cpus=2, host_cpus=2, busy=1.0))  # sleeping threads
    for name in (*threads.WAIT_VARIABLES, *threads.THREAD_COUNT_VARIABLES):
        assert not threads.meets_later_load({name: "1"}, decide({name: "1"}, cpus=2, host_cpus=2, busy=0.0)), name
    trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    off = CPUThreadsUnderLoad(every_seconds=0.0, enabled=False)
    off.on_train_start(trainer, None)
    threads_before = torch.get_num_threads()
    off.on_train_batch_end(trainer)
    assert off._meter is None and torch.get_num_threads() == threads_before
