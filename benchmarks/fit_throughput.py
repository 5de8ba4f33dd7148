"""Training throughput of the whole Lightning ``fit`` loop, next to the bare step of train_throughput.py.

The bare step (train_throughput.py) times forward + CTC + backward + AdamW on batches already in memory. A real
run also decodes MP3 in DataLoader workers, resamples, collates, pins and copies batches, runs the callbacks,
logs to TensorBoard and steps the schedule. This benchmark runs that: ``Trainer.fit`` as ``python train.py fit``
builds it from a recipe (default configs/xls-r-300m_pt_improved.yaml: the module, the Common Voice data module,
the recipe's callbacks, plugins and Trainer settings, TensorBoard on), over a synthetic Common Voice release it
writes first (48 kHz MP3 clips of 2-8 s, seeded, words of the bundled corpus's sentences as transcripts).

What differs from the recipe, so that a run is short and its model step equals the bare step's:
- the model: the preset's architecture with random weights and train_throughput.py's config (no dropout or
  LayerDrop, the reference's masking), conv encoder frozen, fused AdamW exactly where the bare step uses it
  (CUDA), no head-only phase (``freeze_transformer_steps`` 0: it would skip most of each update);
- batches: ``--clips-per-step`` clips (or ``--batch-seconds`` of padded audio), no gradient accumulation, from
  the training split only; the corpus is sized so that every batch is full;
- ``max_steps`` = warm-up + timed steps; validation as the recipe schedules it (its sanity check only, in a
  short run); no checkpoints unless ``--checkpoint``; the run folder is a temporary directory.

Timing: a callback stamps ``on_train_batch_end`` and sums each batch's valid (unpadded) audio on the device. The
batches after ``--warmup`` are cut into windows of ``--window`` batches, and the device is synchronised only
where a window closes; the figures are medians over windows (a burst of load from other processes moves one
window), with the whole span as ``overall_*``. Validation and what follows it (a checkpoint) are excluded.
``--compare-step`` times the bare ptasr step of train_throughput.py in the same process before and after the
fit (same model config, clips per step and precision; the load of a shared machine can change in between) and
prints the ratio fit loop / mean bare step, in audio seconds per second (what a run gets) and in padded seconds
per second (the data module pads to the same 0.5 s multiples as the bare step, but its batches mix lengths
differently); below 1 is the loop's overhead. Figures and the JSON are written as they are measured, so a run cut short still reports.

    python benchmarks/fit_throughput.py --device cpu --compare-step   # small model, 4 clips: 1-2 min on 2 cores
    python benchmarks/fit_throughput.py --compare-step                # GPU: XLS-R 300m, bf16, 16 clips per step
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import gc
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import soundfile as sf
import torch
import yaml
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_throughput as bare  # noqa: E402 -- the bare step, its model configs and its timing

from ptasr import Wav2Vec2Config, Wav2Vec2CTC  # noqa: E402
from ptasr.data import BUNDLED_CORPUS  # noqa: E402
from ptasr.data.commonvoice import read_tsv  # noqa: E402
from ptasr.data.testing import OLD_COLUMNS  # noqa: E402
from ptasr.train.cli import cli_main  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLE_RATE = 16_000  # what the data module hands the model
MP3_RATE = 48_000  # Common Voice's clips
CHARS_PER_SECOND = 12  # transcript length, as train_throughput.py's labels
PRECISIONS = {"bf16-mixed": "bf16", "16-mixed": "fp16", "32-true": "fp32", "32": "fp32"}  # Lightning -> bare step


# --- the synthetic release -----------------------------------------------------------------------------------


def write_corpus(root: Path, train_clips: int, test_clips: int, seed: int, pool: int = 128,
                 min_seconds: float = 2.0, max_seconds: float = 8.0) -> float:
    """A Common Voice release folder (train/dev/test.tsv, clip_durations.tsv, clips/*.mp3); returns train seconds.

    ``pool`` distinct clips are encoded (MP3 encoding is ~75x real time per core, decoding ~1000x) and copied to
    as many files as there are rows, so every row has its own file and the workers decode every byte.
    """
    rng = np.random.default_rng(seed)
    (root / "clips").mkdir(parents=True, exist_ok=True)
    durations = rng.uniform(min_seconds, max_seconds, size=min(pool, train_clips + test_clips))
    signals = [_speechlike(seconds, rng) for seconds in durations]
    with concurrent.futures.ThreadPoolExecutor() as threads:  # libsndfile runs without the GIL
        list(threads.map(lambda item: sf.write(root / "clips" / f"pool_{item[0]}.mp3", item[1], MP3_RATE,
                                               format="MP3"), enumerate(signals)))
    words = [w for s in read_tsv(Path(BUNDLED_CORPUS) / "train.tsv", {"sentence": ("sentence",)})["sentence"]
             for w in s.split()]
    rows: dict[str, list[dict[str, str]]] = {"train": [], "dev": [], "test": []}
    lengths: list[tuple[str, float]] = []
    for i in range(train_clips + test_clips):
        k = i % len(durations)
        name = f"common_voice_synthetic_{i:06d}.mp3"
        shutil.copyfile(root / "clips" / f"pool_{k}.mp3", root / "clips" / name)
        split = "train" if i < train_clips else "test"
        rows[split].append({"client_id": f"speaker{i % 50}", "path": name, "up_votes": "2", "down_votes": "0",
                            "sentence": _sentence(words, durations[k], rng), "locale": "pt"})
        lengths.append((name, len(signals[k]) / MP3_RATE))
    for split, split_rows in rows.items():
        lines = ["\t".join(OLD_COLUMNS)] + ["\t".join(r.get(c, "") for c in OLD_COLUMNS) for r in split_rows]
        (root / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    table = ["clip\tduration[ms]"] + [f"{name}\t{round(seconds * 1000)}" for name, seconds in lengths]
    (root / "clip_durations.tsv").write_text("\n".join(table) + "\n", encoding="utf-8")
    for k in range(len(durations)):
        (root / "clips" / f"pool_{k}.mp3").unlink()
    return sum(seconds for _, seconds in lengths[:train_clips])


def _speechlike(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A voiced-sounding signal: a gliding pitch with harmonics, syllable-rate envelope, a little noise."""
    t = np.arange(int(seconds * MP3_RATE)) / MP3_RATE
    pitch = rng.uniform(90, 220) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.2, 0.8) * t))
    phase = 2 * np.pi * np.cumsum(pitch) / MP3_RATE
    voice = sum(np.sin(h * phase) / h for h in range(1, 8))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3, 5) * t + rng.uniform(0, np.pi)) ** 2
    signal = 0.1 * envelope * voice + 0.01 * rng.standard_normal(len(t))
    return signal.astype(np.float32)


def _sentence(words: list[str], seconds: float, rng: np.random.Generator) -> str:
    picked: list[str] = []
    while sum(len(w) + 1 for w in picked) < CHARS_PER_SECOND * seconds:
        picked.append(words[rng.integers(len(words))])
    return " ".join(picked)


# --- the fit and its timer -----------------------------------------------------------------------------------


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class FitTimer(L.Callback):
    """Audio seconds per second of training batches after ``warmup`` batches; validation excluded.

    Stamps at ``on_train_batch_end``. The timed batches are cut into windows of ``window`` batches; the device is
    synchronised only where a window closes (and at the start), so the loop runs as it would without the timer.
    The headline figures are the median over full windows (as the bare step's median over rounds: a burst of
    load from other processes moves one window, not the figure); ``overall_*`` cover the whole timed span.
    """

    def __init__(self, warmup: int, report: Callable[[dict], None], window: int, device: str) -> None:
        if warmup < 1:
            raise ValueError(f"--warmup must be >= 1 (the first batch waits for the workers), got {warmup}")
        self.warmup, self.report, self.window, self.device = warmup, report, window, device
        self.batches = 0  # training batches ended, warm-up included
        self.timed = 0  # batches since the warm-up
        self.clips = 0
        self.padded_samples = 0  # from shapes: no sync
        self.samples: torch.Tensor | None = None  # valid samples, summed on the device
        self.excluded = 0.0  # seconds of validation (and what follows it) since the warm-up
        self.paused_at: float | None = None
        self.first_update = 0
        self.start: dict | None = None  # counters when timing started
        self.opened: dict | None = None  # counters when the current window opened
        self.windows: list[dict] = []  # closed windows: batches, seconds, audio and padded seconds

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: dict,
                             batch_idx: int) -> None:
        if self.paused_at is not None:  # back from validation
            _synchronize(self.device)
            self.excluded += time.perf_counter() - self.paused_at
            self.paused_at = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: object, batch: dict,
                           batch_idx: int) -> None:
        self.batches += 1
        if self.batches == self.warmup:
            self.samples = torch.zeros((), dtype=torch.long, device=batch["lengths"].device)
            self.first_update = trainer.global_step
            self.start = self.opened = self._counters()
        elif self.batches > self.warmup:
            self.samples += batch["lengths"].sum()
            self.padded_samples += batch["waveforms"].numel()
            self.clips += batch["waveforms"].shape[0]
            self.timed += 1
            if self.timed % self.window == 0:
                self._close_window()
                self.report(self.figures(trainer))

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.start is not None and not trainer.sanity_checking:
            _synchronize(self.device)
            self.paused_at = time.perf_counter()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.timed % self.window:
            self._close_window()  # a partial window: counted overall, not in the medians
        if self.timed:
            self.report(self.figures(trainer))

    def _counters(self) -> dict:
        """Time and totals now (synchronises the device)."""
        _synchronize(self.device)
        now = self.paused_at if self.paused_at is not None else time.perf_counter()
        return dict(time=now - self.excluded, batches=self.timed, samples=int(self.samples),
                    padded=self.padded_samples)

    def _close_window(self) -> None:
        now = self._counters()
        self.windows.append(_rates(now, self.opened))
        self.opened = now

    def figures(self, trainer: L.Trainer) -> dict:
        full = [w for w in self.windows if w["batches"] == self.window] or self.windows
        overall = _rates(self.opened, self.start)
        median = {key: round(statistics.median(w[key] for w in full), 4 if key == "step_s" else 1)
                  for key in ("step_s", "audio_s_per_s", "padded_s_per_s")}
        return dict(batches=self.timed, updates=trainer.global_step - self.first_update,
                    clips_per_step=round(self.clips / self.timed, 2), **median, windows=len(full),
                    padding=round(1 - (self.opened["samples"] / self.opened["padded"]), 3),
                    **{f"overall_{key}": value for key, value in overall.items() if key in median},
                    window_audio_s_per_s=[w["audio_s_per_s"] for w in self.windows],
                    validation_excluded_s=round(self.excluded, 2), peak_gib=_peak_gib(self.device))


def _rates(end: dict, begin: dict) -> dict:
    seconds = end["time"] - begin["time"]
    batches = end["batches"] - begin["batches"]
    return dict(batches=batches, step_s=round(seconds / batches, 4),
                audio_s_per_s=round((end["samples"] - begin["samples"]) / SAMPLE_RATE / seconds, 1),
                padded_s_per_s=round((end["padded"] - begin["padded"]) / SAMPLE_RATE / seconds, 1))


def _peak_gib(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None


def fit_config(args: argparse.Namespace, corpus: Path, run_dir: Path, num_buckets: int) -> dict:
    """The recipe, with the changes the module docstring lists."""
    config = yaml.safe_load(args.config.read_text(encoding="utf-8"))
    trainer, model, data = config["trainer"], config.setdefault("model", {}), config.setdefault("data", {})
    fit_share = 0.75 if args.compare_step else 1.0  # the rest for the bare step after the fit
    recipe_steps = model.get("total_steps") or trainer.get("max_steps")
    seconds = max(30, int(fit_share * (args.deadline - time.monotonic())))
    trainer.update(accelerator=args.device, devices=1, precision=args.precision, max_steps=args.warmup + args.steps,
                   accumulate_grad_batches=1, max_time={"seconds": seconds})
    trainer["logger"]["init_args"].update(save_dir=str(run_dir), name="fit_throughput")
    if not args.checkpoint:
        trainer["callbacks"] = [c for c in trainer["callbacks"]
                                if not c["class_path"].endswith(("ModelCheckpoint", "LastCheckpoint"))]
        trainer["enable_checkpointing"] = False
    preset = Wav2Vec2Config.preset("xls-r-300m")
    wanted = bare.model_config(args.preset)  # the bare step's model, field by field
    overrides = {f.name: getattr(wanted, f.name) for f in dataclasses.fields(wanted)
                 if getattr(wanted, f.name) != getattr(preset, f.name) and f.name not in ("vocab_size", "pad_token_id")}
    # the schedule spans the recipe's run (a short run is its warm-up), not the few steps timed here
    model.update(pretrained=None, preset="xls-r-300m", config_overrides=_plain(overrides),
                 freeze_feature_encoder=True, freeze_transformer_steps=0, gradient_checkpointing=False,
                 compile=args.compile, fused=args.device == "cuda", total_steps=recipe_steps)
    data.update(train=[{"path": str(corpus), "splits": ["train"]}], val=str(corpus), test=str(corpus))
    data.setdefault("batching", {}).update(
        batch_size=None if args.batch_seconds else args.clips_per_step, max_batch_seconds=args.batch_seconds,
        pad_to_multiple_seconds=bare.BUCKET_SAMPLES / bare.SAMPLE_RATE,  # the bare step's shapes
        num_buckets=num_buckets, seed=0)
    data.setdefault("loading", {}).update(num_workers=args.workers, pin_memory=args.device == "cuda")
    return config


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)


def _plain(value: object) -> object:
    """Tuples as lists, for YAML."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else value


def run_fit(args: argparse.Namespace, work: Path, report: Callable[[dict], None]) -> None:
    recipe = yaml.safe_load(args.config.read_text(encoding="utf-8"))
    num_buckets = int((recipe.get("data") or {}).get("num_buckets", 10))
    batches = args.warmup + args.steps + 1
    if args.batch_seconds:  # enough batches, and every bucket holds a few batches of its clips
        clips = max(math.ceil(batches * args.batch_seconds / 5.0), num_buckets * math.ceil(args.batch_seconds))
    else:  # a multiple of clips x buckets: every bucket splits into full batches
        clips = args.clips_per_step * num_buckets * math.ceil(batches / num_buckets)
    start = time.perf_counter()
    audio = write_corpus(work / "corpus", clips, test_clips=16, seed=args.seed)
    print(f"corpus: {clips} training clips, {audio / 3600:.2f} h, written in {time.perf_counter() - start:.1f} s",
          flush=True)
    config_path = work / "fit.yaml"
    config_path.write_text(yaml.safe_dump(fit_config(args, work / "corpus", work / "runs", num_buckets)),
                           encoding="utf-8")
    argv, sys.argv = sys.argv, sys.argv[:1]  # the CLI reads only the config, not this script's arguments
    try:
        cli = cli_main(["-c", str(config_path)], run=False)
    finally:
        sys.argv = argv

    def report_fit(figures: dict) -> None:
        report(dict(system="fit loop", config=_shown(args.config), precision=args.precision, warmup=args.warmup,
                    workers=args.workers, compile=args.compile, **figures))

    cli.trainer.callbacks.append(FitTimer(args.warmup, report_fit, args.window, args.device))
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    if cli.trainer.global_step < args.warmup + args.steps:
        print(f"the fit stopped at update {cli.trainer.global_step} of {args.warmup + args.steps} (--budget-s)",
              flush=True)
    del cli
    gc.collect()  # the trainer holds cycles: free the model and optimiser before the bare step after the fit
    if args.device == "cuda":
        torch.cuda.empty_cache()


def run_bare_step(args: argparse.Namespace, work: Path, report: Callable[[dict], None], when: str,
                  share: float) -> None:
    """train_throughput.py's ptasr step on the same model config, clips and precision, in ``share`` of the time left.

    Run before and after the fit: on a shared machine the load can change between the two measurements, and
    the two bare figures bracket the fit's.
    """
    if args.batch_seconds or args.precision not in PRECISIONS:
        print("--compare-step needs --clips-per-step and a mixed or 32-bit precision; skipped", flush=True)
        return
    if not (work / "model").is_dir():
        torch.manual_seed(0)
        Wav2Vec2CTC(bare.model_config(args.preset)).save_pretrained(work / "model")
    deadline = time.monotonic() + share * (args.deadline - time.monotonic())
    step_args = argparse.Namespace(device=args.device, precision=PRECISIONS[args.precision], steps=args.bare_steps,
                                   rounds=3, peak_tflops=args.peak_tflops, deadline=deadline)

    def report_step(row: dict) -> None:
        if "error" not in row:  # the padded seconds the step computed on, as the fit loop reports them
            row["padded_s_per_s"] = round(row["audio_s_per_s"] / (1 - row["padding"]), 1)
        report(dict(row, system=f"bare step ({row['system']}), {when}"))

    bare.measure(["ptasr-compile" if args.compile else "ptasr"], args.clips_per_step, step_args, work / "model",
                 report_step)
    gc.collect()
    if args.device == "cuda":
        torch.cuda.empty_cache()


# --- reporting -----------------------------------------------------------------------------------------------


def machine_info(args: argparse.Namespace) -> dict:
    import lightning

    gpu = args.device == "cuda"
    return dict(device=torch.cuda.get_device_name() if gpu else bare.cpu_name(), torch=torch.__version__,
                lightning=lightning.__version__, soundfile=sf.__version__, python=sys.version.split()[0],
                threads=torch.get_num_threads(), cpus=_cpu_count(), commit=_commit(),
                date=time.strftime("%Y-%m-%d"), load_average_at_start=_load(), note=args.note)


def _load() -> float | None:
    """The 1-minute load average: on a shared machine, how busy the cores were."""
    import os

    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def _cpu_count() -> int | None:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def ratios(results: list[dict]) -> dict | None:
    """Fit loop over bare step (the mean of its runs before and after the fit): in audio-s/s (what a run gets) and
    in padded-s/s (the same work per padded second; both pad to 0.5 s multiples, but batch lengths differently)."""
    fit = next((r for r in results if r["system"] == "fit loop"), None)
    steps = [r for r in results if r["system"].startswith("bare step") and "error" not in r]
    if not (fit and steps):
        return None
    return {key: round(fit[key] / statistics.mean(r[key] for r in steps), 3)
            for key in ("audio_s_per_s", "padded_s_per_s")}


def print_table(results: list[dict]) -> None:
    print(f"\n{'system':34s} {'clips':>6s} {'step_s':>8s} {'audio-s/s':>10s} {'padded-s/s':>10s} {'padding':>8s} "
          f"{'peak GiB':>8s}")
    for r in results:
        if "error" in r:
            print(f"{r['system']:34s} ERROR {r['error'][:100]}")
            continue
        clips = r.get("clips_per_step", r.get("clips"))
        print(f"{r['system']:34s} {clips:6} {r['step_s']:8.4f} {r['audio_s_per_s']:10.1f} {r['padded_s_per_s']:10.1f} "
              f"{r['padding']:8.3f} {r['peak_gib'] or '-':>8}")
    ratio = ratios(results)
    if ratio:
        print(f"fit loop / bare step: {ratio['audio_s_per_s']:.2f} in audio-s/s, {ratio['padded_s_per_s']:.2f} in "
              f"padded-s/s (below 1: the DataLoader + Lightning + callbacks overhead)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", choices=["xls-r-300m", "small"],
                        help="model of train_throughput.py; default xls-r-300m (GPU), small (CPU)")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "xls-r-300m_pt_improved.yaml",
                        help="the recipe whose Trainer, callbacks and data settings run")
    parser.add_argument("--precision", help="Lightning precision; default bf16-mixed (GPU), 32-true (CPU)")
    parser.add_argument("--clips-per-step", type=int, help="clips per batch; default 16 (GPU), 4 (CPU)")
    parser.add_argument("--batch-seconds", type=float, help="padded audio seconds per batch instead of a clip count")
    parser.add_argument("--warmup", type=int, help="batches before the timing starts; default 10 (GPU), 3 (CPU)")
    parser.add_argument("--steps", type=int, help="timed batches; default 60 (GPU), 30 (CPU)")
    parser.add_argument("--workers", type=int, help="DataLoader workers; default 8 (GPU, the recipe's), 1 (CPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (model.compile)")
    parser.add_argument("--checkpoint", action="store_true", help="keep the recipe's ModelCheckpoint and LastCheckpoint (temp dir)")
    parser.add_argument("--compare-step", action="store_true",
                        help="time the bare step before and after the fit, in this process")
    parser.add_argument("--bare-steps", type=int, help="timed bare steps per round; default 10 (GPU), 4 (CPU)")
    parser.add_argument("--window", type=int, default=10,
                        help="timed batches per window (figures are medians over windows; JSON updated per window)")
    parser.add_argument("--budget-s", type=float, default=240.0,
                        help="wall budget: the bare step before the fit gets up to 30 %%, the fit 75 %% of the rest")
    parser.add_argument("--peak-tflops", type=float, default=790.0, help="for the bare step's MFU column")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--note", default="", help="free text for the JSON, e.g. the machine and its load")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/fit_throughput.json"))
    args = parser.parse_args(argv)
    gpu = args.device == "cuda"
    args.deadline = time.monotonic() + args.budget_s
    args.preset = args.preset or ("xls-r-300m" if gpu else "small")
    args.precision = args.precision or ("bf16-mixed" if gpu else "32-true")
    args.clips_per_step = args.clips_per_step or (16 if gpu else 4)
    args.warmup = args.warmup if args.warmup is not None else (10 if gpu else 3)
    args.steps = args.steps or (60 if gpu else 30)
    args.workers = args.workers if args.workers is not None else (8 if gpu else 1)
    args.bare_steps = args.bare_steps or (10 if gpu else 4)
    args.config = args.config.resolve()

    info = machine_info(args)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                if k not in ("deadline", "note")}
    settings["config"] = _shown(args.config)
    results: list[dict] = []

    def write() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        everything = dict(info=info, settings=settings, results=results, fit_over_bare_step=ratios(results))
        args.out.write_text(json.dumps(everything, indent=1) + "\n")

    def report(row: dict) -> None:
        # the fit loop reports as it goes: its latest figures replace the earlier ones
        results[:] = [r for r in results if r["system"] != row["system"]] + [row]
        tqdm.write(json.dumps(row))  # on a line of its own while Lightning's progress bar is drawn
        write()

    print(json.dumps(info), flush=True)
    with tempfile.TemporaryDirectory(prefix="fit_throughput_") as tmp:
        if args.compare_step:
            run_bare_step(args, Path(tmp), report, "before the fit", share=0.3)
        run_fit(args, Path(tmp), report)
        if args.compare_step:
            run_bare_step(args, Path(tmp), report, "after the fit", share=1.0)
    info["load_average_at_end"] = _load()
    write()
    print_table(results)


if __name__ == "__main__":
    main()
