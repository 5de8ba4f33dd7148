"""What a run reads: ``data.train``, ``data.val`` and ``data.test`` are each a list of :class:`DataSource`
(a plain path is the shorthand for a one-element list), and :func:`open_source` is the one way a source
becomes the reader of its clips and the splits to read -- for ``train.py`` and ``ptasr evaluate --data`` alike.

A source is recognised from its path (:func:`source_kind`), or named outright with ``kind``:

- ``commonvoice``: a release's language folder, a folder holding several (``language`` picks one), or the
  release archive (``.tar.gz``, ``.tgz``, ``.tar``);
- ``manifest``: a ``.csv``/``.tsv``/``.jsonl`` file of your own recordings (:mod:`ptasr.data.manifests`); a
  Common Voice split ``.tsv`` (recognised by its columns) is read as that release's split;
- ``parquet``: a local folder of a Hugging Face dataset's parquet files (split by file name);
- ``huggingface``: a dataset on the Hugging Face hub (``org/name``, with ``config`` and ``data_dir``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ptasr.data.commonvoice import CommonVoiceRelease
from ptasr.data.huggingface import HFDatasetSource
from ptasr.data.manifests import ManifestFile, is_common_voice_split, is_manifest_file
from ptasr.errors import MissingPathError, SettingError

Reader = CommonVoiceRelease | HFDatasetSource | ManifestFile
SourceKind = Literal["commonvoice", "manifest", "parquet", "huggingface"]
Role = Literal["train", "val", "test"]

# A release's splits read where a source names none: the reference trains on train + dev (Common Voice's
# "validation") and evaluates on test.
DEFAULT_SPLITS: dict[str, list[str]] = {"train": ["train", "dev"], "val": ["test"], "test": ["test"]}

_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")  # org/name, as the hub spells datasets (a local path is asked first)
_NAME = re.compile(r"[A-Za-z0-9_.-]+")  # a source's name goes into metric names: val/<name>/wer
_NAME_GAPS = re.compile(r"[^A-Za-z0-9_.-]+")  # what a default name replaces by "_"


@dataclass
class DataSource:
    """One corpus that a run trains, validates or tests on.

    Args:
        path: a Common Voice release folder or archive, a manifest file (``.csv``/``.tsv``/``.jsonl``), a
            local folder of parquet files, or a Hugging Face hub dataset id.
        kind: what ``path`` is (``commonvoice``, ``manifest``, ``parquet``, ``huggingface``); default:
            recognised from the path (:func:`source_kind`). Say it where the path is ambiguous.
        splits: the release's or dataset's splits to read, concatenated (``dev`` also finds an HF
            ``validation`` split); default ``[train, dev]`` in ``data.train``, ``[test]`` in ``data.val`` and
            ``data.test``. A manifest file is one split and takes none.
        language: the language folder, where a release folder holds several (e.g. ``pt``).
        config: a Hugging Face dataset's configuration name (e.g. a language code).
        data_dir: a Hugging Face dataset's ``data_dir``.
        audio_column: a Hugging Face dataset's audio column (an Audio feature or file paths).
        text_column: a Hugging Face dataset's transcript column.
        weight: training only: how often its clips are drawn relative to their count: 2.0 draws each clip
            twice per epoch, 0.5 a random half of them (another half each epoch).
        name: validation and test only: what its metrics are called (``val/<name>/wer`` where several are
            scored): letters, digits, ``_``, ``.``, ``-``. Default: a manifest's file name without its suffix
            (``dev.csv`` -> ``dev``), else the folder's (or dataset's) name and the splits (``pt_dev``).
    """

    path: str
    kind: SourceKind | None = None
    splits: list[str] | None = None
    language: str | None = None
    config: str | None = None
    data_dir: str | None = None
    audio_column: str = "audio"
    text_column: str = "sentence"
    weight: float = 1.0
    name: str | None = None


def as_sources(value: str | DataSource | Sequence[str | DataSource | dict]) -> list[DataSource]:
    """``data.train``/``val``/``test`` as a list of sources: a path is the shorthand for one source.

    >>> as_sources("/data/cv/pt")
    [DataSource(path='/data/cv/pt', kind=None, splits=None, language=None, config=None, data_dir=None, audio_column='audio', text_column='sentence', weight=1.0, name=None)]
    """
    if isinstance(value, (str, Path, DataSource)):
        value = [value]
    return [item if isinstance(item, DataSource) else DataSource(**item) if isinstance(item, dict)
            else DataSource(path=str(item)) for item in value]


def source_kind(source: DataSource) -> SourceKind:
    """``source.kind``, or what its path is: a ``.csv``/``.tsv``/``.jsonl`` file is a manifest; an archive, or
    a folder with split TSVs here or below, a Common Voice release; another folder with ``.parquet`` files a
    parquet dataset; a path that does not exist but reads ``org/name`` a hub dataset.

    >>> source_kind(DataSource("/data/mine/train.csv")), source_kind(DataSource("mozilla/common_voice"))
    ('manifest', 'huggingface')
    """
    if source.kind is not None:
        return source.kind
    path = Path(source.path).expanduser()
    if is_manifest_file(path):
        return "manifest"
    if path.name.lower().endswith(_ARCHIVE_SUFFIXES) or (path.is_dir() and _holds_split_tsvs(path)):
        return "commonvoice"
    if path.is_dir():
        # a release's TSVs are checked first: searching for parquet files would walk every clip of a release
        return "parquet" if any(path.rglob("*.parquet")) else "commonvoice"
    if not path.exists() and _HUB_ID.match(source.path):
        return "huggingface"
    if not path.exists():
        raise MissingPathError(f"data source {source.path} does not exist: give a Common Voice release folder or "
                               f"archive, a .csv/.tsv/.jsonl manifest, a folder of parquet files, or a hub dataset id")
    return "commonvoice"  # another file: the release reader refuses it in one line if it is no archive


def _holds_split_tsvs(path: Path) -> bool:
    """A release's language folder, or a release root above its language folders: TSVs here or one level down."""
    return any(path.glob("*.tsv")) or any(path.glob("*/*.tsv"))


def reader_key(source: DataSource) -> tuple:
    """What tells two readers apart: sources with equal keys share one reader (and its rows)."""
    return (source_kind(source), str(Path(source.path).expanduser()), source.language, source.config,
            source.data_dir, source.audio_column, source.text_column)


def open_source(source: DataSource, role: Role, cache_dir: str | Path | None = None,
                opened: dict[tuple, Reader] | None = None) -> tuple[Reader, list[str]]:
    """The reader of ``source`` and the splits ``role`` reads of it: its ``splits``, else the role's default
    (:data:`DEFAULT_SPLITS`); a manifest's one split ``""``; a Common Voice split TSV's own name.

    ``opened``: readers already opened, by :func:`reader_key`, reused and added to (one release read once
    whether it trains, validates or tests).
    """
    kind = source_kind(source)
    source_splits(source, role)  # a manifest given splits: refused before it is read
    opened = {} if opened is None else opened
    key = reader_key(source)
    if key not in opened:
        opened[key] = _open(source, kind, cache_dir)
    reader = opened[key]
    if kind == "manifest":
        # a Common Voice split TSV reads as its release's split of that name
        return reader, [Path(source.path).stem if isinstance(reader, CommonVoiceRelease) else ""]
    return reader, source_splits(source, role)


def source_splits(source: DataSource, role: Role) -> list[str]:
    """The splits ``role`` reads of a release or dataset ``source``, known without opening it: its ``splits``,
    else :data:`DEFAULT_SPLITS`; none for a manifest file, which is one split.

    >>> source_splits(DataSource("cv/pt"), "train"), source_splits(DataSource("a.csv"), "val")
    (['train', 'dev'], [])
    """
    if is_manifest_file(source.path):
        if source.splits:
            raise SettingError(f"data source {source.path} is one file, one split: remove its splits "
                               f"{source.splits}")
        return []
    return list(source.splits or DEFAULT_SPLITS[role])


def _open(source: DataSource, kind: SourceKind, cache_dir: str | Path | None) -> Reader:
    if kind == "manifest":
        if is_common_voice_split(source.path):
            return CommonVoiceRelease.around(source.path, cache_dir)
        return ManifestFile(source.path, cache_dir)
    if kind == "commonvoice":
        return CommonVoiceRelease(source.path, source.language, cache_dir)
    return HFDatasetSource(str(Path(source.path).expanduser()) if kind == "parquet" else source.path,
                           source.config, source.data_dir, source.audio_column, source.text_column, cache_dir)


def describe(reader: Reader, split: str) -> str:
    """A reader's split as messages name where it is: a manifest's path, a release's folder and split.

    >>> from ptasr.data import BUNDLED_CORPUS
    >>> describe(CommonVoiceRelease(BUNDLED_CORPUS), "dev").endswith("cv-tiny-pt dev")
    True
    """
    if isinstance(reader, ManifestFile):
        return str(reader.path)
    where = reader.root if isinstance(reader, CommonVoiceRelease) else f"{reader.name} {reader.config or ''}".rstrip()
    return f"{where} {split}".rstrip()


def source_name(source: DataSource, splits: Sequence[str]) -> str:
    """``source.name``, or the name its metrics and reports get by default.

    >>> source_name(DataSource("corpora/read speech.csv"), [])
    'read_speech'
    >>> source_name(DataSource("cv-corpus-7.0/pt"), ["dev"])
    'pt_dev'
    """
    if source.name is not None:
        return source.name
    if is_manifest_file(source.path):
        return _NAME_GAPS.sub("_", Path(source.path).stem)
    base = Path(source.path.rstrip("/")).name
    for suffix in _ARCHIVE_SUFFIXES:
        base = base.removesuffix(suffix)
    parts = [base, source.language or source.config, *splits]
    return _NAME_GAPS.sub("_", "_".join(part for part in parts if part))


def check_sources(option: str, sources: list[DataSource]) -> None:
    """Refuse an empty list, a weight that is not positive, a weight outside ``data.train``, and a ``name``
    unfit for a metric (``option``: ``train``, ``val`` or ``test``)."""
    if not sources:
        raise SettingError(f"data.{option} is empty: list at least one source (a path is one)")
    for source in sources:
        if not source.weight > 0:
            raise SettingError(f"data.{option} source {source.path}: weight must be positive, got {source.weight}")
        if option != "train" and source.weight != 1.0:
            raise SettingError(f"data.{option} source {source.path}: weight applies to data.train only (an "
                               f"evaluation scores every clip once)")
        if source.name is not None and not _NAME.fullmatch(source.name):
            raise SettingError(f"data.{option} name {source.name!r} goes into metric names (val/<name>/wer): use "
                               f"letters, digits, '_', '.' and '-' only")


def distinct_names(option: str, sources: list[DataSource], names: list[str]) -> list[str]:
    """``names`` (one per source of a scored set), refused where two sources would log under one name."""
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        where = [source.path for source, name in zip(sources, names) if name in twice]
        raise SettingError(f"data.{option} gives the name {', '.join(map(repr, twice))} to several sources "
                           f"({', '.join(where)}): set a distinct `name` on each")
    return names
