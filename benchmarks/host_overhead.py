"""Host work per update: Lightning's fit loop with the improved recipe's callbacks and logger, against the bare step.

A model small enough that host time dominates (width 32, one layer, 0.5 s clips, 4 per batch) trains on batches
already collated in memory (no decoding, no workers), so the difference between the two loops is the host
work that Lightning, the training module's hooks, the callbacks and the logger add to every update:

- bare: ``model(...)``, the CTC loss, backward, clipping at 1.0 and AdamW, in a plain Python loop;
- fit: ``Trainer.fit`` with configs/xls-r-300m_pt_improved.yaml's callbacks (WERMetrics, CTCHealth,
  BlankPlateauWatch, MixedPrecisionHealth, TrainingMonitor, the progress bar; not the checkpointing ones),
  TensorBoard, ``log_every_n_steps`` 25 and gradient clipping as the recipe sets them, fp32 on the CPU.

The two alternate in rounds in one process, with one intra-op thread, so that the CPU time of the main
thread (``time.thread_time``) is the update's whole CPU work: on a machine shared with other jobs that time
holds where wall time does not (wall time is reported too). ``host_ms_per_update`` is the median fit update
minus the median bare update, in CPU time; ``python_calls_per_update`` (cProfile's count over one more round
of each, a number no load changes) says how much Python runs around the step. ``--profile`` writes
cProfile's top functions of that fit round (by own time).

``--trees A B`` runs the same measurement in a subprocess per source tree (PYTHONPATH), alternating, so a
change is measured before and after in one run on the same load; the CPU training step of
train_throughput.py's small model (``--step``) can be timed the same way:

    python benchmarks/host_overhead.py --trees /tmp/base . --out benchmarks/results/host_overhead_cpu.json
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_throughput as bare  # noqa: E402 -- batches and the CPU model of the bare step

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "xls-r-300m_pt_improved.yaml"
TINY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, conv_dim=[16] * 7,
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, hidden_dropout=0.0, attention_dropout=0.0,
            activation_dropout=0.0, feat_proj_dropout=0.0, final_dropout=0.0, layerdrop=0.0,
            ctc_loss_reduction="mean", ctc_zero_infinity=True, **bare.MASKING)


def batches(count: int, clips: int, seconds: float) -> list[dict]:
    """Collated batches as the data module makes them (waveforms, lengths, labels, label_lengths)."""
    generator = torch.Generator().manual_seed(0)
    out = []
    for _ in range(count):
        made = bare._batch([seconds * (0.8 + 0.2 * i / clips) for i in range(clips)], generator)
        out.append(dict(waveforms=made.waveforms, lengths=made.lengths, labels=made.labels,
                        label_lengths=made.label_lengths))
    return out


def module():
    from ptasr.train.module import Wav2Vec2CTCModule

    torch.manual_seed(0)
    return Wav2Vec2CTCModule(bare.VOCAB, bare.VOCAB - 1, config_overrides=dict(TINY), lr=1e-4, fused=False)


def bare_round(model: torch.nn.Module, data: list[dict], optimizer: torch.optim.Optimizer) -> tuple[float, float]:
    """Wall and CPU seconds per update of the plain loop."""
    from ptasr.model.loss import config_ctc_loss

    params = [p for p in model.parameters() if p.requires_grad]
    start, cpu = time.perf_counter(), time.thread_time()
    for batch in data:
        logits, frames = model(batch["waveforms"], batch["lengths"], torch.Generator().manual_seed(0))
        loss = config_ctc_loss(model.config, logits, frames, batch["labels"], batch["label_lengths"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / len(data), (time.thread_time() - cpu) / len(data)


def trainer(steps: int, run_dir: Path):
    """A Trainer with the recipe's callbacks (checkpointing ones left out), logger and logging cadence."""
    import lightning as L
    from jsonargparse import ArgumentParser

    recipe = yaml.safe_load(RECIPE.read_text(encoding="utf-8"))["trainer"]
    parser = ArgumentParser()
    parser.add_argument("--callbacks", type=list[L.Callback])
    parser.add_argument("--logger", type=L.pytorch.loggers.Logger)
    callbacks = [c for c in recipe["callbacks"] if not c["class_path"].endswith(("ModelCheckpoint", "LastCheckpoint"))]
    logger = dict(recipe["logger"], init_args=dict(recipe["logger"]["init_args"], save_dir=str(run_dir)))
    built = parser.instantiate_classes(parser.parse_object(dict(callbacks=callbacks, logger=logger)))
    return L.Trainer(accelerator="cpu", devices=1, precision="32-true", max_steps=steps, logger=built.logger,
                     callbacks=built.callbacks, log_every_n_steps=recipe["log_every_n_steps"],
                     gradient_clip_val=recipe["gradient_clip_val"], limit_val_batches=0, num_sanity_val_steps=0,
                     enable_checkpointing=False, enable_model_summary=False)


class Stamps:
    """Wall time at the end of every training batch (a callback, appended last)."""

    def __new__(cls):
        import lightning as L

        class _Stamps(L.Callback):
            def __init__(self) -> None:
                self.times: list[tuple[float, float]] = []

            def on_train_batch_end(self, *args: object) -> None:
                self.times.append((time.perf_counter(), time.thread_time()))

        return _Stamps()


def fit_round(data: list[dict], warmup: int, run_dir: Path) -> tuple[float, float]:
    """Wall and CPU seconds per update of ``Trainer.fit`` after ``warmup`` updates (a fresh module and trainer)."""
    from torch.utils.data import DataLoader

    stamps = Stamps()
    fit = trainer(len(data), run_dir)
    fit.callbacks.append(stamps)
    fit.fit(module(), train_dataloaders=DataLoader(data, batch_size=None, shuffle=False))
    (wall0, cpu0), (wall1, cpu1) = stamps.times[warmup], stamps.times[-1]
    updates = len(stamps.times) - 1 - warmup
    return (wall1 - wall0) / updates, (cpu1 - cpu0) / updates


def python_calls(run: Callable[[list[dict]], object], data: list[dict], short: int) -> tuple[float, pstats.Stats]:
    """Python function calls per update of ``run`` under cProfile: the difference between runs over all of
    ``data`` and over its first ``short`` batches (so set-up is not counted), and the longer run's profile."""
    counts, stats = [], None
    for part in (data[:short], data):
        profiler = cProfile.Profile()
        profiler.runcall(run, part)
        stats = pstats.Stats(profiler)
        counts.append(stats.total_calls)
    return (counts[1] - counts[0]) / (len(data) - short), stats


def measure_host(args: argparse.Namespace) -> dict:
    data = batches(args.updates, args.clips, args.seconds)
    bare_module = module()
    bare_module.model.train()
    optimizer = torch.optim.AdamW([p for p in bare_module.parameters() if p.requires_grad], lr=1e-4)
    bare_round(bare_module.model, data[:3], optimizer)  # warm-up
    fits, bares = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            bares.append(bare_round(bare_module.model, data, optimizer))
            fits.append(fit_round(data, args.warmup, Path(tmp)))
        few = data[: args.warmup + 20]
        bare_calls, _ = python_calls(lambda part: bare_round(bare_module.model, part, optimizer), few, args.warmup + 2)
        fit_calls, stats = python_calls(lambda part: fit_round(part, 1, Path(tmp)), few, args.warmup + 2)
    fit_wall, fit_cpu = (statistics.median(x[i] for x in fits) * 1e3 for i in (0, 1))
    bare_wall, bare_cpu = (statistics.median(x[i] for x in bares) * 1e3 for i in (0, 1))
    if args.profile:
        text = io.StringIO()
        stats.stream = text
        stats.sort_stats("tottime").print_stats(30)
        Path(args.profile_out).write_text(text.getvalue(), encoding="utf-8")
    return dict(what="host work per update", updates=args.updates, rounds=args.rounds,
                fit_cpu_ms=round(fit_cpu, 2), bare_cpu_ms=round(bare_cpu, 2),
                host_ms_per_update=round(fit_cpu - bare_cpu, 2), fit_wall_ms=round(fit_wall, 2),
                bare_wall_ms=round(bare_wall, 2), python_calls_per_update=round(fit_calls - bare_calls),
                load_average=[round(x, 2) for x in os.getloadavg()])


def measure_step(args: argparse.Namespace) -> dict:
    """train_throughput.py's eager CPU training step (its small model, fp32, 4 clips, lengths on the host):
    median wall and CPU ms per step over rounds of 4 steps."""
    from ptasr import Wav2Vec2CTC
    from ptasr.model.loss import ctc_loss

    torch.manual_seed(0)
    model = Wav2Vec2CTC(bare.model_config("small")).train()
    model.freeze_feature_encoder()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    steps = bare.make_batches(4, 4, seed=4)

    def run() -> tuple[float, float]:
        start, cpu = time.perf_counter(), time.thread_time()
        for batch in steps:
            logits, frames = model(batch.waveforms, batch.lengths, torch.Generator().manual_seed(0))
            ctc_loss(logits, frames, batch.labels, batch.label_lengths, blank=bare.VOCAB - 1,
                     zero_infinity=True).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return (time.perf_counter() - start) / len(steps), (time.thread_time() - cpu) / len(steps)

    run()  # warm-up
    rounds = [run() for _ in range(args.rounds)]
    return dict(what="eager CPU training step", step_cpu_ms=round(statistics.median(r[1] for r in rounds) * 1e3, 1),
                step_wall_ms=round(statistics.median(r[0] for r in rounds) * 1e3, 1),
                load_average=[round(x, 2) for x in os.getloadavg()])


def compare(args: argparse.Namespace) -> None:
    """Alternate the measurement over source trees in subprocesses; write every row and the medians."""
    rows: list[dict] = []
    for repeat in range(args.repeats):
        for tree in args.trees:
            for what in (["--host"] if args.host else []) + (["--step"] if args.step else []):
                env = dict(os.environ, PYTHONPATH=str(Path(tree).resolve()))
                command = [sys.executable, __file__, what, "--rounds", str(args.rounds), "--updates",
                           str(args.updates)]
                out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
                row = dict(json.loads(out.strip().splitlines()[-1]), tree=_tree_name(tree), repeat=repeat)
                rows.append(row)
                print(json.dumps(row), flush=True)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(dict(info=_info(), results=rows), indent=1) + "\n")


def _tree_name(tree: str) -> str:
    head = subprocess.run(["git", "-C", tree, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return head.stdout.strip() or str(tree)


def _info() -> dict:
    return dict(device=bare.cpu_name(), torch=torch.__version__, threads=torch.get_num_threads(),
                date=time.strftime("%Y-%m-%d %H:%M"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", action="store_true", help="measure host work per update (default)")
    parser.add_argument("--step", action="store_true", help="measure the eager CPU training step")
    parser.add_argument("--trees", nargs="+", help="source trees to alternate over, in subprocesses")
    parser.add_argument("--repeats", type=int, default=2, help="alternations over the trees")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--updates", type=int, default=60, help="updates per round")
    parser.add_argument("--warmup", type=int, default=10, help="fit updates not timed per round")
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--profile", action="store_true", help="write cProfile's top functions of a fit round")
    parser.add_argument("--profile-out", default="benchmarks/results/host_overhead_profile_cpu.txt")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/host_overhead_cpu.json"))
    args = parser.parse_args(argv)
    if not (args.host or args.step):
        args.host = True
    if args.trees:
        compare(args)
        return
    torch.set_num_threads(1)  # the CPU time of the main thread is then all of an update's CPU work
    for what in (["host"] if args.host else []) + (["step"] if args.step else []):
        print(json.dumps(measure_host(args) if what == "host" else measure_step(args)), flush=True)


if __name__ == "__main__":
    main()
