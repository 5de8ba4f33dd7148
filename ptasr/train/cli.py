"""``python train.py {fit,validate,test,predict}``: LightningCLI over the module and the speech data.

The data module decides the vocabulary; the CLI links its size and blank id into the model when both are
instantiated. Without ``-c/--config``, the demo config (``configs/demo.yaml``) is the default, so
``python train.py fit`` trains the bundled corpus. ``--ckpt_path last`` resumes the newest run of the
configured logger in its own folder instead of starting a new ``version_N``; likewise a checkpoint path inside
a run folder (``runs/demo/version_0/checkpoints/x.ckpt``) logs the evaluation or the resumed training there.
``predict`` transcribes the data's test split into ``predictions.jsonl`` in that run folder.

What a command writes never replaces another run's files:

- ``validate``/``test``/``predict`` need a trained model (``--ckpt_path``, or ``model.pretrained`` evaluated as it
  is); ``--ckpt_path last`` with no ``last.ckpt`` is an error naming where it looked. A refused command creates
  no run folder.
- An evaluation logs into its own sub-folder of the run (``<run>/validate``, ``<run>/test``, ``<run>/predict``),
  so its ``val/*`` points are not mistaken for training validations (``ptasr export``'s results table) and its
  ``hparams.yaml`` does not replace the training's.
- A fresh ``fit`` refuses a run folder that already holds a run (a pinned ``logger.init_args.version``) unless it
  resumes that run's checkpoint.
- An evaluation uses the evaluated model's vocabulary and normaliser (a checkpoint's, or an exported folder's as
  ``model.pretrained``), whatever the data's own text would build.
- ``config.yaml`` and the data's ``vocab.json``/``normalizer.json`` are written once every check passed (the
  checkpoint's vocabulary included), and by ``fit`` only: an evaluation leaves the training's text files alone.
"""

from __future__ import annotations

import glob
import json
import re
import sys
from pathlib import Path
from typing import Any, TextIO

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from ptasr import compat
from ptasr.compat import is_sharded_checkpoint
from ptasr.data.datamodule import SpeechDataModule
from ptasr.data.text import TextNormalizer, Vocabulary
from ptasr.errors import MissingPathError, SettingError, UserError
from ptasr.model.config import PRESETS, Wav2Vec2Config
from ptasr.model.convert import head_log, is_hub_id
from ptasr.recognition.trained_model import load_folder_vocabulary, read_text_side, verify_checkpoint
from ptasr.train.config_errors import ConfigParser
from ptasr.train.module import Wav2Vec2CTCModule
from ptasr.train.out_of_memory import out_of_memory_explained
from ptasr.train.rank_failure import ranks_end_together
from ptasr.train.run_folder_on_failure import no_run_folder_on_failure
from ptasr.train.run_lock import LOCK_NAME, run_folder_lock

# The repository's configs/ (train.py sits beside it); absent in an installed wheel, where -c is needed.
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "demo.yaml"
SUBCOMMANDS = ("fit", "validate", "test", "predict")
EVALUATIONS = ("validate", "test", "predict")


class PtasrCLI(LightningCLI):
    """LightningCLI with the data -> model links, and runs resumed or evaluated in their own folder."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The vocabulary is built by the data module (from the corpus text), so the head size follows it.
        parser.link_arguments("data.vocab_size", "model.vocab_size", apply_on="instantiate")
        parser.link_arguments("data.pad_token_id", "model.pad_token_id", apply_on="instantiate")
        # The symbols too: a pretrained model's head is rebuilt unless it outputs the very same ones.
        parser.link_arguments("data.vocab", "model.vocab_tokens", compute_fn=_tokens, apply_on="instantiate")
        # The data's CTC-feasibility filter counts frames with the model's conv stack: one source, the model.
        model = ("model.preset", "model.pretrained", "model.config_overrides")
        parser.link_arguments(model, "data.filters.conv_kernel", compute_fn=_conv_kernel, apply_on="parse")
        parser.link_arguments(model, "data.filters.conv_stride", compute_fn=_conv_stride, apply_on="parse")
        # A source's path is data, not a file of settings: jsonargparse reads a file path given for a type that
        # holds dataclasses as the value (sub_configs), so --data.train mine.csv would become the CSV's text.
        compat.paths_are_values(parser, ("data.train", "data.val", "data.test"))

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand and self.config[subcommand].get("ckpt_path"):
            # before LightningCLI reads the checkpoint's hyperparameters (torch.load) right after parsing
            _check_checkpoint_file(self.config[subcommand].ckpt_path, subcommand)

    def before_instantiate_classes(self) -> None:
        # Every refusal here comes before the data is read and before any run folder exists.
        config = self.config[self.subcommand] if self.subcommand else self.config
        if self.subcommand in EVALUATIONS:
            _require_trained_model(self.subcommand, config)
        if self.subcommand == "fit" and config.get("ckpt_path") == "last":
            _start_when_nothing_to_resume(config)
        if config.get("ckpt_path"):
            _log_into_checkpoint_run(config.trainer, config.ckpt_path, self.subcommand)
        if self.subcommand in EVALUATIONS:
            _use_model_text(config, self.subcommand)
        if self.subcommand == "fit":
            _refuse_an_occupied_run(config.trainer, config.get("ckpt_path"))
        elif self.subcommand in EVALUATIONS:
            _log_into_own_subfolder(config.trainer, self.subcommand)

    def instantiate_classes(self) -> None:
        # A checkpoint restored next (a resumed fit, an evaluated checkpoint) replaces the CTC head that
        # model.pretrained gave: the line on how that head was rebuilt would describe a head never used.
        restores = self.subcommand is not None and bool(self.config[self.subcommand].get("ckpt_path"))
        head_log.disabled = restores
        try:
            super().instantiate_classes()
        finally:
            head_log.disabled = False

    def before_predict(self) -> None:
        self.trainer.callbacks.append(TranscriptWriter())

    # LightningCLI runs a method of this name instead of the Trainer's: an out-of-memory batch becomes one line,
    # and under DDP a failure of rank 0 ends the other ranks too.
    # A command that fails before writing anything of its own leaves no run folder behind. One writer per run
    # folder (ptasr.train.run_lock): each command holds its run folder's lock throughout.
    def fit(self, **kwargs: Any) -> None:
        with no_run_folder_on_failure(self.trainer), ranks_end_together(self.trainer), \
                run_folder_lock(self.trainer, fitting=True), \
                out_of_memory_explained(self.trainer, self.datamodule, self.model):
            self.trainer.fit(**kwargs)

    def validate(self, **kwargs: Any) -> None:
        with no_run_folder_on_failure(self.trainer), ranks_end_together(self.trainer), \
                run_folder_lock(self.trainer, fitting=False), \
                out_of_memory_explained(self.trainer, self.datamodule, self.model):
            self.trainer.validate(**kwargs)

    def test(self, **kwargs: Any) -> None:
        with no_run_folder_on_failure(self.trainer), ranks_end_together(self.trainer), \
                run_folder_lock(self.trainer, fitting=False):
            self.trainer.test(**kwargs)

    def predict(self, **kwargs: Any) -> None:
        with no_run_folder_on_failure(self.trainer), ranks_end_together(self.trainer), \
                run_folder_lock(self.trainer, fitting=False):
            self.trainer.predict(**kwargs)


class RunConfigSaver(SaveConfigCallback):
    """Saves the run's text files: ``config.yaml`` and the data's ``vocab.json``/``normalizer.json`` for fit,
    ``config_<stage>.yaml`` otherwise.

    They are written when the stage starts, not at ``setup``: Lightning restores the checkpoint (and the data
    module refuses one of another vocabulary) between the two, and a refused command must leave the run's
    files as they were. A validate/test/predict run writes only its config, into its own folder. Without a
    logger there is no run folder (Lightning would fall back to the working directory): nothing is written.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._stage = getattr(stage, "value", stage)  # Lightning passes its TrainerFn enum
        self.config_filename = "config.yaml" if self._stage == "fit" else f"config_{self._stage}.yaml"
        self.save_to_log_dir = trainer.logger is not None

    def _save(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.already_saved:
            return
        super().setup(trainer, pl_module, self._stage)  # Lightning's save, with its DDP broadcasts
        datamodule = getattr(trainer, "datamodule", None)
        if self._stage == "fit" and trainer.logger is not None and hasattr(datamodule, "save_text_files"):
            datamodule.save_text_files(Path(trainer.log_dir))  # every rank asks: log_dir broadcasts

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._save(trainer, pl_module)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._stage == "validate":
            self._save(trainer, pl_module)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._save(trainer, pl_module)

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._save(trainer, pl_module)


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
        # Every rank wrote its own share: the line counts them all (every rank takes part in the sum).
        total = int(trainer.strategy.reduce(torch.tensor(self._count, device=pl_module.device), reduce_op="sum"))
        where = self.path if trainer.world_size == 1 else self.path.with_name("predictions_rank*.jsonl")
        rank_zero_info(f"[predict] {total} transcripts written to {where}")


def _require_trained_model(subcommand: str, config: Any) -> None:
    """validate/test/predict of a random model give numbers that look like results: refuse, unless
    ``model.pretrained`` is the model to evaluate."""
    pretrained = (config.get("model") or {}).get("pretrained")
    if config.get("ckpt_path"):
        return
    if not pretrained:
        raise SettingError(f"train.py {subcommand} needs a trained model: pass --ckpt_path with a checkpoint "
                           f"(runs/<name>/version_N/checkpoints/last.ckpt, or `last` for the newest run of the "
                           f"configured logger), or --model.pretrained to {subcommand} a pretrained model as it is")
    rank_zero_warn(f"no --ckpt_path: {subcommand} runs on model.pretrained={pretrained} as it is, not on a model "
                   f"trained by train.py (its CTC head is kept only where it outputs this data's vocabulary; otherwise "
                   f"the head is new and random)")


def _check_checkpoint_file(ckpt_path: str, subcommand: str = "fit") -> None:
    """A local checkpoint file that is missing, cut short or damaged is one line here, not a traceback from
    torch.load (or a resume of damaged weights: see :func:`ptasr.recognition.trained_model.verify_checkpoint`); an exported
    model folder is named as one, with the option that takes it (``--model.pretrained``)."""
    if ckpt_path in ("last", "best", "hpc", "registry") or "://" in ckpt_path or ckpt_path.startswith("registry:"):
        return  # Lightning's own names, and remote paths fsspec reads
    path = Path(ckpt_path).expanduser()
    if is_sharded_checkpoint(path):
        return  # a sharded run's folder: torch.distributed.checkpoint checks its shards as it reads them
    if path.is_dir() and (path / "config.json").is_file():
        use = "to fine-tune from it" if subcommand == "fit" else f"to {subcommand} it as it is"
        raise SettingError(f"--ckpt_path {ckpt_path} is an exported model folder (config.json, weights), not a "
                           f"train.py checkpoint: {use}, pass --model.pretrained {ckpt_path} instead of --ckpt_path")
    if not path.is_file():
        raise MissingPathError(f"--ckpt_path {ckpt_path}: no such file" + ("; it is a folder, pass a .ckpt in it"
                                                                          if path.is_dir() else ""))
    verify_checkpoint(path)


def _use_model_text(config: Any, subcommand: str) -> None:
    """The evaluated model's vocabulary and normaliser rule: its head predicts those tokens, whatever the data's
    own text would build (characters the data has and the vocabulary lacks are counted at setup). The model is
    ``--ckpt_path``'s checkpoint, else a ``model.pretrained`` folder with a ``vocab.json`` (an export)."""
    vocab, normalizer, source = None, None, None
    if config.get("ckpt_path"):
        source = _evaluated_checkpoint(config.trainer, config.ckpt_path)
        vocab, normalizer = read_text_side(source) if source is not None else (None, None)
    elif (config.get("model") or {}).get("pretrained") and Path(config.model.pretrained, "vocab.json").is_file():
        source = Path(config.model.pretrained)
        vocab = load_folder_vocabulary(source)
        # an HF folder has no normalizer.json: the data's settings stay
        normalizer = TextNormalizer.load(source) if (source / "normalizer.json").is_file() else None
    if vocab is None:
        return  # a remote path, or a checkpoint saved without the data module: the data's own, checked on loading
    config.data.text.vocab_path = None
    config.data.text.vocabulary = list(vocab.tokens)
    if normalizer is not None:
        config.data.text.strip_punctuation = False  # saved only when set
        for setting, value in normalizer.to_dict().items():
            config.data.text[setting] = value
    rank_zero_info(f"[data] {subcommand} uses the vocabulary ({len(vocab)} tokens)"
                   f"{' and text normaliser' if normalizer is not None else ''} of {source}")


def _evaluated_checkpoint(trainer_config: Any, ckpt_path: str) -> Path | None:
    """The local file ``--ckpt_path`` names (``last``: the newest ``last*.ckpt`` where Lightning looks), or None."""
    if ckpt_path == "last":
        found = [Path(p) for pattern in _last_checkpoint_patterns(trainer_config) or [] for p in glob.glob(pattern)]
        return max(found, key=lambda path: path.stat().st_mtime) if found else None
    path = Path(ckpt_path).expanduser()
    return path if path.is_file() else None


def _tensorboard_args(trainer_config: Any) -> Any | None:
    logger = trainer_config.get("logger")
    if not hasattr(logger, "class_path") or not logger.class_path.endswith("TensorBoardLogger"):
        return None
    return logger.init_args


def _runs_folder(args: Any) -> Path:
    """``<save_dir>/<name>``: the folder of a TensorBoardLogger's ``version_N`` run folders."""
    return Path(args.save_dir) / (args.get("name") or "lightning_logs")


def _run_folder(args: Any) -> Path | None:
    """The run folder a TensorBoardLogger with a pinned version logs into (None: a new ``version_N``)."""
    version = args.get("version")
    if version is None:
        return None
    return _runs_folder(args) / (version if isinstance(version, str) else f"version_{version}")


def _log_into_checkpoint_run(trainer_config: Any, ckpt_path: str, subcommand: str | None = None) -> None:
    """Pin a TensorBoardLogger without a fixed version to the run folder the checkpoint belongs to.

    ``last`` means the newest run of this logger holding ``checkpoints/last.ckpt``: Lightning resolves it
    inside the checkpoint folder of *this* run, which is a fresh ``version_N`` unless the version is pinned.
    A path ``<save_dir>/<name>/<version>/checkpoints/<file>`` pins ``<version>``. Pinning keeps the run's
    curves, checkpoints and configs together; anything else (``best``, other paths) is left to Lightning.

    An evaluation (``subcommand`` other than fit) with ``last`` and no ``last.ckpt`` where Lightning would look
    is an error naming that place (Lightning would warn and evaluate the random model); ``fit`` starts afresh
    (:func:`_start_when_nothing_to_resume`).
    """
    args = _tensorboard_args(trainer_config)
    if ckpt_path == "last" and subcommand in EVALUATIONS:
        _require_last_checkpoint(trainer_config)
    if args is None or args.get("version") is not None:
        return
    runs = _runs_folder(args)
    if ckpt_path == "last":
        candidates = sorted(runs.glob("*/checkpoints/last*.ckpt"), key=lambda path: path.stat().st_mtime)
        run = candidates[-1].parent.parent if candidates else None
    else:
        run = Path(ckpt_path).resolve().parent.parent
        if Path(ckpt_path).resolve().parent.name != "checkpoints" or run.parent != runs.resolve():
            run = None
    if run is not None:
        # version_3 as the number 3, as a new run's: the progress bar's v_num shows a string's last 4 characters
        args.version = int(run.name[len("version_"):]) if re.fullmatch(r"version_\d+", run.name) else run.name


def _last_checkpoint_patterns(trainer_config: Any) -> list[str] | None:
    """Where ``--ckpt_path last`` finds a ``last*.ckpt`` (glob patterns); ``None``: another logger, whose
    checkpoint folder only Lightning knows."""
    args = _tensorboard_args(trainer_config)
    folders = [Path(callback.init_args.dirpath) for callback in trainer_config.get("callbacks") or []
               if getattr(callback, "class_path", "").endswith(("ModelCheckpoint", "LastCheckpoint"))
               and callback.init_args.get("dirpath")]
    if args is not None:
        run = _run_folder(args) or _runs_folder(args) / "*"  # pinned version, else any run of this name
        patterns = [str(run / "checkpoints" / "last*.ckpt")]
    elif trainer_config.get("logger") in (None, False):
        patterns = [str(Path(trainer_config.get("default_root_dir") or ".") / "checkpoints" / "last*.ckpt")]
    else:
        return None
    return patterns + [str(folder / "last*.ckpt") for folder in folders]


def _no_last_checkpoint(trainer_config: Any) -> str | None:
    """Where ``--ckpt_path last`` looked, when it finds nothing there (else ``None``)."""
    patterns = _last_checkpoint_patterns(trainer_config)
    if patterns is None or any(glob.glob(pattern) for pattern in patterns):
        return None
    return " or ".join(patterns)


def _require_last_checkpoint(trainer_config: Any) -> None:
    """Raise naming where ``--ckpt_path last`` looked when no ``last*.ckpt`` is there."""
    looked = _no_last_checkpoint(trainer_config)
    if looked is not None:
        raise MissingPathError(f"--ckpt_path last: no last checkpoint at {looked}; check "
                               f"--trainer.logger.init_args.save_dir/name/version (and the working directory), "
                               f"or pass the checkpoint's path")


def _start_when_nothing_to_resume(config: Any) -> None:
    """``fit --ckpt_path last`` with no last checkpoint yet starts a new run, as a scheduler's first submission of
    a job that is resubmitted with the same command needs; one line says so and where it looked (Lightning's
    own warning would suggest ``save_last``, which ``LastCheckpoint`` already does)."""
    looked = _no_last_checkpoint(config.trainer)
    if looked is not None:
        rank_zero_info(f"[run] --ckpt_path last: no last checkpoint at {looked} yet, so this fit starts a new run")
        config.ckpt_path = None


def _refuse_an_occupied_run(trainer_config: Any, ckpt_path: str | None) -> None:
    """A fresh fit into a pinned run folder that already holds a run would mix two runs' files: refuse it.

    Resuming that run (``last`` found there, or one of its checkpoints) is fine. Lightning's own refusal (an
    existing ``config.yaml``) is off because a resumed run writes its config again.
    """
    args = _tensorboard_args(trainer_config)
    run = _run_folder(args) if args is not None else None
    # (a lock file alone is what a run killed while it started leaves: it holds no run)
    if run is None or not run.is_dir() or all(path.name == LOCK_NAME for path in run.iterdir()):
        return
    if ckpt_path == "last" and any((run / "checkpoints").glob("last*.ckpt")):
        return
    if ckpt_path not in (None, "last") and run.resolve() in Path(ckpt_path).resolve().parents:
        return
    raise SettingError(f"run folder {run} already holds a run, and this fit does not resume it: resume it with "
                       f"--ckpt_path last (or one of its checkpoints), or give this run another "
                       f"--trainer.logger.init_args.version (or none, for a new version_N)")


def _log_into_own_subfolder(trainer_config: Any, subcommand: str) -> None:
    """An evaluation logs into ``<run>/<subcommand>``: its ``val/*`` at step 0 are not training validations."""
    args = _tensorboard_args(trainer_config)
    if args is not None and args.get("sub_dir") is None:
        args.sub_dir = subcommand


def _tokens(vocab: Vocabulary) -> list[str]:
    return list(vocab.tokens)


def _conv_layout(preset: str, pretrained: str | None, overrides: dict[str, Any] | None) -> Wav2Vec2Config:
    """The model's conv stack as far as parsing can know it without loading weights: a pretrained folder's (or
    cached hub model's) config.json, else the preset's; ``config_overrides`` on top. The module checks the
    built model against the data's numbers in ``setup``."""
    # A wrong preset is refused, with its own message, when the model is built.
    config = (_pretrained_config(pretrained) if pretrained else None) or PRESETS.get(preset, Wav2Vec2Config())
    layout = {k: v for k, v in (overrides or {}).items() if k in ("conv_dim", "conv_kernel", "conv_stride")}
    return config.replace(**layout)


def _pretrained_config(pretrained: str) -> Wav2Vec2Config | None:
    """A pretrained model's config, or None where parsing cannot read it without loading weights."""
    found = _pretrained_config_json(pretrained)
    try:
        return Wav2Vec2Config.from_json(found) if found is not None else None
    except UserError:
        return None  # an unsupported config.json: refused with its own message when the model is built


def _pretrained_config_json(pretrained: str) -> Path | None:
    path = Path(pretrained).expanduser()
    if path.is_dir():
        return path / "config.json" if (path / "config.json").is_file() else None
    if is_hub_id(pretrained):  # only what is already downloaded: parsing never goes online
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(pretrained, "config.json")
        return Path(cached) if isinstance(cached, str) else None
    return None  # a fairseq .pt: its config is inside the weights


def _conv_kernel(preset: str, pretrained: str | None, overrides: dict[str, Any] | None) -> list[int]:
    return list(_conv_layout(preset, pretrained, overrides).conv_kernel)


def _conv_stride(preset: str, pretrained: str | None, overrides: dict[str, Any] | None) -> list[int]:
    return list(_conv_layout(preset, pretrained, overrides).conv_stride)


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
        SpeechDataModule,
        args=args,
        run=run,
        parser_kwargs=parser_kwargs,
        parser_class=ConfigParser,  # an unknown setting or a YAML syntax error is one line, not the usage
        save_config_callback=RunConfigSaver,
        # Resuming writes config.yaml into the same run folder again: overwrite instead of refusing (a fresh fit
        # into an occupied run folder is refused earlier, by _refuse_an_occupied_run).
        save_config_kwargs={"overwrite": True},
        # The module's configure_optimizers builds parameter groups and the schedule from its own arguments.
        auto_configure_optimizers=False,
    )
