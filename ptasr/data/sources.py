"""The corpora a run reads, as ``data.sources``, ``data.val_sources`` and ``data.test_sources`` list them:
:class:`TrainSource` and :class:`EvalSource`, the metric name each evaluation source gets, and :data:`Source`,
the readers they open.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ptasr.data.commonvoice import CommonVoiceRelease
from ptasr.data.huggingface import HFDatasetSource
from ptasr.data.manifests import ManifestFile, is_common_voice_split, is_manifest_file
from ptasr.errors import SettingError

Source = CommonVoiceRelease | HFDatasetSource | ManifestFile


def open_file(path: str | Path, cache_dir: str | Path | None = None) -> tuple[Source, str]:
    """A ``.csv``/``.tsv``/``.jsonl`` file as the source that reads it and the split to read, for training
    (``data.*_manifest``, ``data.*sources``) and ``ptasr evaluate --data`` alike: a Common Voice split TSV
    (:func:`~ptasr.data.manifests.is_common_voice_split`, by its columns) as the release around it and its
    split; any other file as a manifest (its one split, ``""``)."""
    if is_common_voice_split(path):
        return CommonVoiceRelease.around(path, cache_dir), Path(path).stem
    return ManifestFile(path, cache_dir), ""


def describe(source: Source, split: str) -> str:
    """A source as messages name it: a manifest's path, a release's folder and split.

    >>> from ptasr.data import BUNDLED_CORPUS
    >>> describe(CommonVoiceRelease(BUNDLED_CORPUS), "dev").endswith("cv-tiny-pt dev")
    True
    """
    if isinstance(source, ManifestFile):
        return str(source.path)
    where = source.root if isinstance(source, CommonVoiceRelease) else f"{source.name} {source.config or ''}".rstrip()
    return f"{where} {split}".rstrip()


@dataclass
class TrainSource:
    """One training corpus of several (``data.sources``).

    Args:
        path: a manifest file (``.csv``/``.tsv``/``.jsonl``), or a Common Voice release folder or archive.
        hf_dataset: a Hugging Face dataset instead of ``path`` (with ``hf_config``, ``hf_data_dir``; the audio
            and text columns are ``data.hf_audio_column`` / ``data.hf_text_column``).
        hf_config: its configuration name.
        hf_data_dir: its ``data_dir``.
        splits: the release's or dataset's splits to train on (default ``data.train_splits``); a manifest
            file is one split.
        language: the language folder, where ``path`` holds several.
        weight: how often its clips are drawn relative to their count: 2.0 draws each clip twice per epoch,
            0.5 a random half of them (another half each epoch).
    """

    path: str | None = None
    hf_dataset: str | None = None
    hf_config: str | None = None
    hf_data_dir: str | None = None
    splits: list[str] | None = None
    language: str | None = None
    weight: float = 1.0


@dataclass
class EvalSource:
    """One validation or test corpus of several (``data.val_sources``, ``data.test_sources``): scored alone
    (``val/<name>/wer``, ``val/<name>/cer``) beside the pooled ``val/wer`` and ``val/cer``.

    Args:
        path: a manifest file (``.csv``/``.tsv``/``.jsonl``), or a Common Voice release folder or archive.
        hf_dataset: a Hugging Face dataset instead of ``path`` (with ``hf_config``, ``hf_data_dir``).
        hf_config: its configuration name.
        hf_data_dir: its ``data_dir``.
        split: the release's or dataset's split (default ``data.val_split`` / ``data.test_split``); a manifest
            file is one split.
        language: the language folder, where ``path`` holds several.
        name: what its metrics are called: letters, digits, ``_``, ``.``, ``-``. Default: a manifest's file
            name without its suffix (``dev.csv`` -> ``dev``), else the folder's (or dataset's) name and the
            split (``pt_dev``).
    """

    path: str | None = None
    hf_dataset: str | None = None
    hf_config: str | None = None
    hf_data_dir: str | None = None
    split: str | None = None
    language: str | None = None
    name: str | None = None


_NAME = re.compile(r"[A-Za-z0-9_.-]+")  # a source's name goes into metric names: val/<name>/wer
_NAME_GAPS = re.compile(r"[^A-Za-z0-9_.-]+")  # what a default name replaces by "_"
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def eval_source_name(spec: EvalSource, split: str) -> str:
    """``spec.name``, or the name its metrics get by default.

    >>> eval_source_name(EvalSource(path="corpora/read speech.csv"), "test")
    'read_speech'
    >>> eval_source_name(EvalSource(path="cv-corpus-7.0/pt"), "dev")
    'pt_dev'
    """
    if spec.name is not None:
        return spec.name
    if spec.path is not None and is_manifest_file(spec.path):
        return _NAME_GAPS.sub("_", Path(spec.path).stem)
    base = Path((spec.path or spec.hf_dataset or "").rstrip("/")).name
    for suffix in _ARCHIVE_SUFFIXES:
        base = base.removesuffix(suffix)
    parts = [base, spec.language or spec.hf_config, split]
    return _NAME_GAPS.sub("_", "_".join(part for part in parts if part))


def check_eval_sources(option: str, specs: list[EvalSource], split: str) -> list[str]:
    """The metric name of each of ``specs`` (``data.val_sources`` or ``data.test_sources``); refuses an entry
    without exactly one of ``path`` and ``hf_dataset``, a name unfit for a metric, and a name given twice."""
    if not specs:
        raise SettingError(f"data.{option} is empty: list at least one source, or leave it unset")
    for spec in specs:
        if (spec.path is None) == (spec.hf_dataset is None):
            raise SettingError(f"each of data.{option} needs exactly one of path and hf_dataset; got {spec}")
        if spec.name is not None and not _NAME.fullmatch(spec.name):
            raise SettingError(f"data.{option} name {spec.name!r} goes into metric names (val/<name>/wer): use "
                               f"letters, digits, '_', '.' and '-' only")
    names = [eval_source_name(spec, spec.split or split) for spec in specs]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        where = [spec.path or spec.hf_dataset for spec, name in zip(specs, names) if name in twice]
        raise SettingError(f"data.{option} gives the name {', '.join(map(repr, twice))} to several sources "
                           f"({', '.join(map(str, where))}): set a distinct `name` on each")
    return names
