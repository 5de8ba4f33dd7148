"""``python train.py {fit,validate,test,predict}``: LightningCLI over the module and the Common Voice data.

The data module decides the vocabulary; the CLI links its size and blank id into the model when both are
instantiated. Without ``-c/--config``, the demo config (``configs/demo.yaml``) is the default, so
``python train.py fit`` trains the bundled corpus. ``--ckpt_path last`` resumes the newest run of the
configured logger in its own folder instead of starting a new ``version_N``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from ptasr.data.datamodule import CommonVoiceDataModule
from ptasr.train.module import Wav2Vec2CTCModule

# The repository's configs/ (train.py sits beside it); absent in an installed wheel, where -c is needed.
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "demo.yaml"
SUBCOMMANDS = ("fit", "validate", "test", "predict")


class PtasrCLI(LightningCLI):
    """LightningCLI with the data -> model links and resume-into-the-same-run for ``--ckpt_path last``."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The vocabulary is built by the data module (from the corpus text), so the head size follows it.
        parser.link_arguments("data.vocab_size", "model.vocab_size", apply_on="instantiate")
        parser.link_arguments("data.pad_token_id", "model.pad_token_id", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.get("ckpt_path") == "last":
            _continue_latest_run(config.trainer)


def _continue_latest_run(trainer_config) -> None:
    """Point a TensorBoardLogger without a fixed version at the newest run folder holding ``last.ckpt``.

    Lightning resolves ``ckpt_path="last"`` inside the checkpoint folder of *this* run, which is a fresh
    ``version_N`` unless the logger's version is pinned; pinning it to the run being resumed keeps its
    curves, checkpoints and config.yaml together.
    """
    logger = trainer_config.get("logger")
    if not hasattr(logger, "class_path") or not logger.class_path.endswith("TensorBoardLogger"):
        return
    args = logger.init_args
    if args.get("version") is not None:
        return
    runs = Path(args.save_dir) / (args.get("name") or "lightning_logs")
    candidates = sorted(runs.glob("*/checkpoints/last.ckpt"), key=lambda path: path.stat().st_mtime)
    if candidates:
        args.version = candidates[-1].parent.parent.name


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
        # Resuming writes config.yaml into the same run folder again: overwrite instead of refusing.
        save_config_kwargs={"overwrite": True},
        # The module's configure_optimizers builds parameter groups and the schedule from its own arguments.
        auto_configure_optimizers=False,
    )
