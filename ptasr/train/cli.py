"""``python train.py {fit,validate,test,predict}``: LightningCLI over the module and the Common Voice data.

The data module decides the vocabulary; the CLI links its size and blank id into the model when both are
instantiated. Without ``-c/--config``, the demo config (``configs/demo.yaml``) is the default, so
``python train.py fit`` trains the bundled corpus. ``--ckpt_path last`` resumes the newest run of the
configured logger in its own folder instead of starting a new ``version_N``; likewise a checkpoint path inside
a run folder (``runs/demo/version_0/checkpoints/x.ckpt``) logs the evaluation or the resumed training there.
``predict`` transcribes the data's test split into ``predictions.jsonl`` in that run folder.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from ptasr.data.datamodule import CommonVoiceDataModule
from ptasr.train.module import Wav2Vec2CTCModule

# The repository's configs/ (train.py sits beside it); absent in an installed wheel, where -c is needed.
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "demo.yaml"
SUBCOMMANDS = ("fit", "validate", "test", "predict")


class PtasrCLI(LightningCLI):
    """LightningCLI with the data -> model links, and runs resumed or evaluated in their own folder."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The vocabulary is built by the data module (from the corpus text), so the head size follows it.
        parser.link_arguments("data.vocab_size", "model.vocab_size", apply_on="instantiate")
        parser.link_arguments("data.pad_token_id", "model.pad_token_id", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.get("ckpt_path"):
            _log_into_checkpoint_run(config.trainer, config.ckpt_path)

    def before_predict(self) -> None:
        self.trainer.callbacks.append(TranscriptWriter())


class RunConfigSaver(SaveConfigCallback):
    """Saves the resolved config into the run folder: ``config.yaml`` for fit, ``config_<stage>.yaml`` otherwise.

    A validate/test/predict run logged into a training run's folder must not overwrite its training config.
    Without a logger there is no run folder (Lightning would fall back to the working directory): nothing is
    written, as the data module writes no vocab.json there either.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        stage = getattr(stage, "value", stage)  # Lightning passes its TrainerFn enum
        self.config_filename = "config.yaml" if stage == "fit" else f"config_{stage}.yaml"
        self.save_to_log_dir = trainer.logger is not None
        super().setup(trainer, pl_module, stage)


class TranscriptWriter(Callback):
    """``predict``'s transcripts as JSON lines ``{"id", "text", "reference"}``, one per clip, in batch order.

    Written to ``predictions.jsonl`` in the run folder (``predictions_rank<N>.jsonl`` per rank under DDP);
    ``reference`` is the clip's normalised transcript from the TSV. Without a logger there is no run folder
    and nothing is written (``Trainer.predict`` still returns the transcripts).
    """

    def __init__(self) -> None:
        self.path: Path | None = None
        self._file: TextIO | None = None
        self._count = 0

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._count = 0
        if trainer.logger is None:
            rank_zero_warn("trainer.logger is off, so predict has no run folder to write predictions.jsonl into")
            return
        log_dir = Path(trainer.log_dir)  # every rank asks: it broadcasts
        name = "predictions.jsonl" if trainer.world_size == 1 else f"predictions_rank{trainer.global_rank}.jsonl"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.path = log_dir / name
        self._file = open(self.path, "w", encoding="utf-8")

    def on_predict_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._file is None:
            return
        for row, reference in zip(outputs, batch["texts"], strict=True):
            self._file.write(json.dumps({**row, "reference": reference}, ensure_ascii=False) + "\n")
        self._count += len(outputs)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._file is None:
            return
        self._file.close()
        self._file = None
        rank_zero_info(f"[predict] {self._count} transcripts written to {self.path}")


def _log_into_checkpoint_run(trainer_config, ckpt_path: str) -> None:
    """Pin a TensorBoardLogger without a fixed version to the run folder the checkpoint belongs to.

    ``last`` means the newest run of this logger holding ``checkpoints/last.ckpt``: Lightning resolves it
    inside the checkpoint folder of *this* run, which is a fresh ``version_N`` unless the version is pinned.
    A path ``<save_dir>/<name>/<version>/checkpoints/<file>`` pins ``<version>``. Pinning keeps the run's
    curves, checkpoints and configs together; anything else (``best``, other paths) is left to Lightning.
    """
    logger = trainer_config.get("logger")
    if not hasattr(logger, "class_path") or not logger.class_path.endswith("TensorBoardLogger"):
        return
    args = logger.init_args
    if args.get("version") is not None:
        return
    runs = Path(args.save_dir) / (args.get("name") or "lightning_logs")
    if ckpt_path == "last":
        candidates = sorted(runs.glob("*/checkpoints/last.ckpt"), key=lambda path: path.stat().st_mtime)
        run = candidates[-1].parent.parent if candidates else None
    else:
        run = Path(ckpt_path).resolve().parent.parent
        if Path(ckpt_path).resolve().parent.name != "checkpoints" or run.parent != runs.resolve():
            run = None
    if run is not None:
        args.version = run.name


def _has_config_arg(args: list[str]) -> bool:
    return any(arg in ("-c", "--config") or arg.startswith("--config=") for arg in args)


def cli_main(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Run the training CLI on ``args`` (``sys.argv[1:]`` when ``None``) and return it (tests inspect it).

    The demo config is the default only when no ``-c/--config`` is given: a user config replaces it
    instead of being merged into it (demo values must not leak into, say, the XLS-R recipe).
    """
    argv = sys.argv[1:] if args is None else args
    parser_kwargs = {}
    if DEFAULT_CONFIG.is_file() and not _has_config_arg(argv):
        parser_kwargs = {name: {"default_config_files": [str(DEFAULT_CONFIG)]} for name in SUBCOMMANDS}
    return PtasrCLI(
        Wav2Vec2CTCModule,
        CommonVoiceDataModule,
        args=args,
        run=run,
        parser_kwargs=parser_kwargs,
        save_config_callback=RunConfigSaver,
        # Resuming writes config.yaml into the same run folder again: overwrite instead of refusing.
        save_config_kwargs={"overwrite": True},
        # The module's configure_optimizers builds parameter groups and the schedule from its own arguments.
        auto_configure_optimizers=False,
    )
