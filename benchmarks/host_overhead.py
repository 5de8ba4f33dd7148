"""Host work per update: Lightning's fit loop with the improved recipe's callbacks and logger, against the bare step.

A model small enough that host time dominates (width 32, one layer, 0.5 s clips, 4 per batch) trains on batches
already collated in memory (no decoding, no workers), so the difference between the two loops is the host
work that Lightning, the training module's hooks, the callbacks and the logger add to every update:

- bare: ``model(...)``, the CTC loss, backward, clipping at 1.0 and AdamW, in a plain Python loop;
- fit: ``Trainer.fit`` with configs/xls-r-300m_pt_improved.yaml's callbacks (WERMetrics, CTCHealth,
  BlankPlateauWatch, MixedPrecisionHealth, TrainingMonitor, the progress bar; not the checkpointing ones),
  TensorBoard, ``log_every_n_steps`` 25 and gradient clipping as the recipe sets them, fp32 on the CPU.

The two alternate in rounds in one process; ``host_ms_per_update`` is the median fit update minus the median
bare update. ``--profile`` adds cProfile's top functions of one fit round (by own time).

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


def bare_round(model: torch.nn.Module, data: list[dict], optimizer: torch.optim.Optimizer) -> float:
    """Seconds per update of the plain loop."""
    from ptasr.model.loss import config_ctc_loss

    params = [p for p in model.parameters() if p.requires_grad]
    start = time.perf_counter()
    for batch in data:
        logits, frames = model(batch["waveforms"], batch["lengths"], torch.Generator().manual_seed(0))
        loss = config_ctc_loss(model.config, logits, frames, batch["labels"], batch["label_lengths"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / len(data)


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
                self.times: list[float] = []

            def on_train_batch_end(self, *args: object) -> None:
                self.times.append(time.perf_counter())

        return _Stamps()


def fit_round(data: list[dict], warmup: int, run_dir: Path, profile: bool) -> tuple[float, str | None]:
    """Seconds per update of ``Trainer.fit`` after ``warmup`` updates (a fresh module and trainer each round)."""
    from torch.utils.data import DataLoader

    stamps = Stamps()
    fit = trainer(len(data), run_dir)
    fit.callbacks.append(stamps)
    loader = DataLoader(data, batch_size=None, shuffle=False)
    profiler = cProfile.Profile() if profile else None
    if profiler:
        profiler.enable()
    fit.fit(module(), train_dataloaders=loader)
    if profiler:
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(30)
        table = text.getvalue()
    times = stamps.times[warmup:]
    return (times[-1] - times[0]) / (len(times) - 1), table if profiler else None


def measure_host(args: argparse.Namespace) -> dict:
    data = batches(args.updates, args.clips, args.seconds)
    bare_module = module()
    bare_module.model.train()
    optimizer = torch.optim.AdamW([p for p in bare_module.parameters() if p.requires_grad], lr=1e-4)
    bare_round(bare_module.model, data[:3], optimizer)  # warm-up
    fits, bares, table = [], [], None
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(args.rounds):
            bares.append(bare_round(bare_module.model, data, optimizer))
            seconds, profiled = fit_round(data, args.warmup, Path(tmp), args.profile and index == args.rounds - 1)
            fits.append(seconds)
            table = profiled or table
    fit_ms, bare_ms = statistics.median(fits) * 1e3, statistics.median(bares) * 1e3
    row = dict(what="host work per update", updates=args.updates, rounds=args.rounds, fit_ms=round(fit_ms, 2),
               bare_ms=round(bare_ms, 2), host_ms_per_update=round(fit_ms - bare_ms, 2),
               fit_over_bare=round(fit_ms / bare_ms, 3), load_average=[round(x, 2) for x in os.getloadavg()])
    if table:
        Path(args.profile_out).write_text(table, encoding="utf-8")
    return row


def measure_step(args: argparse.Namespace) -> dict:
    """train_throughput.py's eager CPU training step (small model, fp32, 4 clips), median of rounds."""
    step_args = argparse.Namespace(device="cpu", precision="fp32", steps=4, rounds=args.rounds, peak_tflops=1.0,
                                   deadline=time.monotonic() + 600)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        from ptasr import Wav2Vec2CTC

        Wav2Vec2CTC(bare.model_config("small")).save_pretrained(tmp)
        bare.measure(["ptasr"], 4, step_args, Path(tmp), rows.append)
    return dict(what="eager CPU training step", step_ms=round(rows[0]["step_s"] * 1e3, 1),
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
    parser.add_argument("--profile", action="store_true", help="cProfile the last fit round")
    parser.add_argument("--profile-out", default="benchmarks/results/host_overhead_profile_cpu.txt")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/host_overhead_cpu.json"))
    args = parser.parse_args(argv)
    if not (args.host or args.step):
        args.host = True
    if args.trees:
        compare(args)
        return
    torch.set_num_threads(torch.get_num_threads())
    for what in (["host"] if args.host else []) + (["step"] if args.step else []):
        print(json.dumps(measure_host(args) if what == "host" else measure_step(args)), flush=True)


if __name__ == "__main__":
    main()
