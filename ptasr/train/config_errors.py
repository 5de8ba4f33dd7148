"""Config mistakes as one line: an unknown setting with its closest matches, a YAML syntax error with its line.

jsonargparse reports both after ~95 lines of usage, and a YAML error as ``in "<unicode string>", line 70``
without the file. :class:`ConfigParser` (LightningCLI's ``parser_class`` in train.py) turns them into a
:class:`~ptasr.errors.SettingError` that names the setting, where it was given (a config file and its line, or
the command line) and the valid settings of that section closest to it::

    train.py: error: unknown setting data.batching.batch_sise in /data/my.yaml, line 80; did you mean
    data.batching.batch_size? ...

Any other parse error keeps jsonargparse's own report. The messages are recognised by their wording in
jsonargparse 4.53 (``tests/test_cli.py`` checks each against the installed version).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NoReturn

import yaml
from lightning.pytorch.cli import LightningArgumentParser

from ptasr.errors import SettingError

# jsonargparse's wording: a command-line option no parser knows, and a config key (from a file or a JSON value).
UNRECOGNIZED = re.compile(r"unrecognized arguments: --([^\s=]+)")
NOT_ACCEPTED = re.compile(r"Subcommand '[^']+' does not accept option '([^']+)'|Option '([^']+)' is not accepted")


class ConfigParser(LightningArgumentParser):
    """LightningCLI's parser, whose errors for an unknown setting or a YAML syntax error are one line."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        # A parser that does not exit on errors is one jsonargparse tries values with (union types): let it raise.
        if self.exit_on_error:
            explained = explain(self, message, ex)
            if explained is not None:
                raise SettingError(explained) from ex
        super().error(message, ex)


def explain(parser: LightningArgumentParser, message: str, ex: BaseException | None) -> str | None:
    """The one-line message for a parse error of ``parser``, or None where jsonargparse's own is better."""
    cause = ex.__cause__ if ex is not None else None
    if isinstance(cause, yaml.MarkedYAMLError):
        return _yaml_error(parser, cause)
    key, origin = None, "the command line"
    if match := UNRECOGNIZED.match(message):
        key = match[1]
    elif match := NOT_ACCEPTED.match(message):
        key = match[1] or match[2]
        parser = getattr(ex, "subcommand_parser", None) or parser
        origin = _where_set(key, _config_files(parser)) or origin
    if key is None:
        return None
    if (moved := renamed_setting_message(key, origin)) is not None:
        return moved
    return unknown_setting_message(key, origin, _settings(parser), parser.prog.replace(" [options]", ""))


# Settings the data module no longer has (issue #24: one notion of a data source, settings in groups), each with
# what replaced it. A config or command line that still names one gets this line, not "did you mean".
_SOURCE = "a source's {} in data.train/val/test (e.g. [{{path: /data/cv/pt, {}}}])"
RENAMED: dict[str, str] = {
    "data.root": "data.train, data.val and data.test (a release path: data.train reads train + dev, data.val and "
                 "data.test its test split)",
    "data.language": _SOURCE.format("language", "language: pt"),
    "data.train_splits": "a source's splits in data.train (e.g. [{path: /data/cv/pt, splits: [train]}])",
    "data.val_split": "a source's splits in data.val (e.g. [{path: /data/cv/pt, splits: [dev]}])",
    "data.test_split": "a source's splits in data.test (e.g. [{path: /data/cv/pt, splits: [test]}])",
    "data.hf_dataset": "data.train, data.val and data.test (a parquet folder or a hub dataset id as a source's path)",
    "data.hf_config": _SOURCE.format("config", "config: pt"),
    "data.hf_data_dir": _SOURCE.format("data_dir", "data_dir: DIR"),
    "data.hf_audio_column": _SOURCE.format("audio_column", "audio_column: audio"),
    "data.hf_text_column": _SOURCE.format("text_column", "text_column: sentence"),
    "data.train_manifest": "data.train (a manifest path is a source)",
    "data.val_manifest": "data.val (a manifest path is a source)",
    "data.test_manifest": "data.test (a manifest path is a source)",
    "data.sources": "data.train (a list of sources, each with its weight)",
    "data.val_sources": "data.val (a list of sources, each with its name)",
    "data.test_sources": "data.test (a list of sources, each with its name)",
    **{f"data.{name}": f"data.{group}.{name}" for group, names in (
        ("text", ("chars_to_ignore", "lowercase", "strip_accents", "strip_punctuation", "rare_symbol_count",
                  "vocab_path", "vocabulary")),
        ("batching", ("batch_size", "max_batch_seconds", "pad_to_multiple_seconds", "eval_batch_size",
                      "num_buckets", "seed")),
        ("filters", ("min_duration", "max_duration", "conv_kernel", "conv_stride", "leakage")),
        ("loading", ("num_workers", "pin_memory", "cache_dir"))) for name in names},
}
OLD_DATA_CLASS = "ptasr.data.CommonVoiceDataModule"


def renamed_setting_message(key: str, origin: str) -> str | None:
    """One line naming what replaced ``key``, where ``key`` is a data setting that was renamed; else None.

    >>> renamed_setting_message("data.val_manifest", "the command line")
    'data.val_manifest (on the command line) is gone: use data.val (a manifest path is a source)'
    >>> renamed_setting_message("data.batch_size", "a.yaml, line 3")
    'data.batch_size (in a.yaml, line 3) is gone: use data.batching.batch_size'
    """
    where = "on the command line" if origin == "the command line" else f"in {origin}"
    if key.startswith(("data.class_path", "data.init_args")):
        # a config written for the class before #24 (class_path ptasr.data.CommonVoiceDataModule)
        return (f"{key} ({where}): train.py's data module is ptasr.data.SpeechDataModule ({OLD_DATA_CLASS} is "
                f"gone); give its settings directly under data: (data.train, data.val, data.text, ...)")
    if key in RENAMED:
        return f"{key} ({where}) is gone: use {RENAMED[key]}"
    return None


def unknown_setting_message(key: str, origin: str, settings: Iterable[str], prog: str) -> str:
    """Name ``key``, where it was given, and the settings closest to it in its section.

    >>> settings = ["data.batching.batch_size", "data.batching.eval_batch_size", "trainer.max_steps", "model.lr"]
    >>> unknown_setting_message("data.batching.batch_sise", "the command line", settings, "train.py fit")
    'unknown setting data.batching.batch_sise on the command line; did you mean data.batching.batch_size? (train.py fit --help lists every setting)'
    >>> unknown_setting_message("max_steps", "x.yaml, line 3", settings, "train.py fit").split(";")[1]
    ' did you mean trainer.max_steps? (train.py fit --help lists every setting)'
    """
    settings = set(settings)
    parts = key.split(".")
    # The longest known section the key starts with; the next part of the key is the unknown name.
    depth = max((i for i in range(len(parts)) if i == 0 or ".".join(parts[:i]) in _sections(settings)), default=0)
    section = ".".join(parts[:depth])
    prefix = section + "." if section else ""
    names = sorted({name[len(prefix):].split(".")[0] for name in settings if name.startswith(prefix)})
    rest = "".join("." + part for part in parts[depth + 1:])  # `dat.batch_size`: the section is misspelt
    close = [prefix + name + rest for name in difflib.get_close_matches(parts[depth], names, n=3, cutoff=0.75)]
    # A known name in another section (`--max_steps` for trainer.max_steps).
    close += sorted(name for name in settings if name.rsplit(".", 1)[-1] == parts[-1] and name not in close)
    where = "on the command line" if origin == "the command line" else f"in {origin}"
    hint = f"did you mean {' or '.join(close[:3])}?" if close else f"{section or 'the config'} has no such setting"
    return f"unknown setting {key} {where}; {hint} ({prog} --help lists every setting)"


def _sections(settings: set[str]) -> set[str]:
    return {".".join(name.split(".")[:i]) for name in settings for i in range(1, name.count(".") + 1)}


def _settings(parser: LightningArgumentParser) -> list[str]:
    # argparse keeps a parser's arguments in `_actions` (the attribute every argparse extension reads).
    return [action.dest for action in parser._actions if action.dest not in ("help", "config", "__default_config__")]


def _config_files(parser: LightningArgumentParser) -> list[Path]:
    """The config files of this parse: ``-c``/``--config`` arguments, else the default config (the demo)."""
    argv = list(getattr(parser, "args", None) or getattr(getattr(parser, "parent_parser", None), "args", None) or [])
    files = [value for flag, value in zip(argv, argv[1:]) if flag in ("-c", "--config")]
    files += [arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")]
    return [Path(file) for file in files or parser.default_config_files or []]


def _where_set(key: str, files: Sequence[Path]) -> str | None:
    """``"<file>, line <n>"`` of the last config file that sets ``key`` (a dotted path), or None."""
    for file in reversed(files):
        try:
            node = yaml.compose(file.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            continue
        line = None
        for part in key.split("."):
            found = [(name, value) for name, value in getattr(node, "value", ())
                     if isinstance(node, yaml.MappingNode) and name.value == part]
            if not found:
                line = None
                break
            name, node = found[-1]
            line = name.start_mark.line + 1
        if line is not None:
            return f"{file}, line {line}"
    return None


def _yaml_error(parser: LightningArgumentParser, error: yaml.MarkedYAMLError) -> str:
    """``<file>, line L, column C: not valid YAML (...)``; the file is the config that fails to load."""
    where = next((str(file) for file in _config_files(parser) if _yaml_fails(file)), "a config file")
    mark = error.context_mark or error.problem_mark
    what = "; ".join(str(part) for part in (error.context, error.problem) if part)
    later = (f" (noticed at line {error.problem_mark.line + 1})"
             if error.context_mark and error.problem_mark and error.problem_mark.line != mark.line else "")
    return (f"{where}, line {mark.line + 1}, column {mark.column + 1}: not valid YAML: {what}{later}; a setting is "
            f"`key: value`, indented under its section")


def _yaml_fails(file: Path) -> bool:
    try:
        yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return True
    except OSError:
        return False
    return False

