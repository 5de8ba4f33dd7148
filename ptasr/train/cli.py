"""``python train.py {fit,validate,test,predict}``: LightningCLI over the module and the Common Voice data.

The data module decides the vocabulary; the CLI links its size and blank id into the model when both are
instantiated. Without ``-c/--config``, the demo config (``configs/demo.yaml``) is the default, so
``python train.py fit`` trains the bundled corpus. ``--ckpt_path last`` resumes the newest run of the
configured logger in its own folder instead of starting a new ``version_N``; likewise a checkpoint path inside
a run folder (``runs/demo/version_0/checkpoints/x.ckpt``) logs the evaluation or the resumed training there.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

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


class RunConfigSaver(SaveConfigCallback):
    """Saves the resolved config into the run folder: ``config.yaml`` for fit, ``config_<stage>.yaml`` otherwise.

    A validate/test/predict run logged into a training run's folder must not overwrite its training config.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        stage = getattr(stage, "value", stage)  # Lightning passes its TrainerFn enum
        self.config_filename = "config.yaml" if stage == "fit" else f"config_{stage}.yaml"
        super().setup(trainer, pl_module, stage)


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
