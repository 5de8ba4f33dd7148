"""The LightningDataModule: the sources of ``data.train``, ``data.val`` and ``data.test`` -> filtered, bucketed
batches, with the settings grouped by concern (``data.text``, ``data.batching``, ``data.filters``,
``data.loading``: :mod:`ptasr.data.settings`).
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from ptasr.data import BUNDLED_CORPUS
from ptasr.data.audio import SAMPLE_RATE
from ptasr.data.dataset import ClipDataset, ClipLoader
from ptasr.data.filters import check_leakage, filter_manifest
from ptasr.data.manifests import ManifestFile
from ptasr.data.sampler import BucketBatchSampler
from ptasr.data.settings import BatchSettings, FilterSettings, LoadingSettings, TextSettings
from ptasr.data.sources import (
    DataSource,
    Reader,
    as_sources,
    check_sources,
    describe,
    distinct_names,
    open_source,
    source_name,
    source_splits,
)
from ptasr.data.table import Manifest
from ptasr.data.text import AlphabetReport, Vocabulary
from ptasr.errors import DataError, SettingError
from ptasr.threads import dataloader_workers


class SpeechDataModule(pl.LightningDataModule):
    """Speech and transcripts for CTC fine-tuning: Common Voice releases, your own manifest files, parquet
    folders, hub datasets, or several at once -> filtered, length-bucketed batches.

    ``data.train``, ``data.val`` and ``data.test`` each list :class:`~ptasr.data.sources.DataSource` entries (a
    path alone is one); every source is opened by :func:`~ptasr.data.sources.open_source`, as ``ptasr evaluate
    --data`` opens it. One vocabulary covers all of them. With two or more validation (test) sources,
    ``val/wer`` and ``val/cer`` pool them (word-weighted) and each also gets ``val/<name>/wer`` and
    ``val/<name>/cer``; every per-source report (filter counts, leakage, unknown characters) names it the same way.

    ``vocab``, ``vocab_size``, ``pad_token_id`` and ``normalizer`` work right after construction (LightningCLI
    links ``vocab_size`` into the model before ``setup``): the first access reads and normalises the split
    TSVs, nothing more. ``setup`` adds durations, applies the filters and logs what each removed.

    Args:
        train: what trains (default: the bundled synthetic Portuguese corpus, its train and dev splits).
        val: what validates (default: the bundled corpus's test split). Required once ``train`` is your own.
        test: what ``train.py test`` and ``predict`` read (default: the sources of ``val`` where those are your
            own, each release at its test split; else the bundled corpus's test split).
        text: transcript normalisation and vocabulary (:class:`~ptasr.data.settings.TextSettings`).
        batching: batch sizes and order (:class:`~ptasr.data.settings.BatchSettings`).
        filters: which clips are usable (:class:`~ptasr.data.filters.FilterSettings`).
        loading: workers and cache (:class:`~ptasr.data.settings.LoadingSettings`).
    """

    def __init__(
        self,
        train: str | list[DataSource] = BUNDLED_CORPUS,
        val: str | list[DataSource] = BUNDLED_CORPUS,
        test: str | list[DataSource] = BUNDLED_CORPUS,
        text: TextSettings = TextSettings(),  # noqa: B008 (dataclasses: LightningCLI shows them as groups)
        batching: BatchSettings = BatchSettings(),  # noqa: B008
        filters: FilterSettings = FilterSettings(),  # noqa: B008
        loading: LoadingSettings = LoadingSettings(),  # noqa: B008
    ) -> None:
        super().__init__()
        # plain values, not dataclasses: a checkpoint then loads with torch.load(weights_only=True)
        self.save_hyperparameters({"train": _plain(train), "val": _plain(val), "test": _plain(test),
                                   "text": asdict(text), "batching": asdict(batching), "filters": asdict(filters),
                                   "loading": asdict(loading)})
        self.text, self.batching, self.loading = text, batching, loading
        self.filters = replace(filters, conv_kernel=tuple(filters.conv_kernel), conv_stride=tuple(filters.conv_stride))
        if batching.batch_size is None and batching.max_batch_seconds is None:
            raise SettingError("set data.batching.batch_size, data.batching.max_batch_seconds, or both")
        if (filters.max_duration is not None and batching.max_batch_seconds is not None
                and filters.max_duration > batching.max_batch_seconds):
            rank_zero_warn(f"max_duration={filters.max_duration} s exceeds max_batch_seconds="
                           f"{batching.max_batch_seconds} s: clips longer than the budget get a batch of their own, "
                           f"over budget")
        if batching.pad_to_multiple_seconds is not None and batching.pad_to_multiple_seconds <= 0:
            raise SettingError(f"data.batching.pad_to_multiple_seconds must be positive or null, got "
                               f"{batching.pad_to_multiple_seconds}")
        self.pad_to_multiple = max(1, round((batching.pad_to_multiple_seconds or 0) * SAMPLE_RATE))  # samples
        self.normalizer = text.normalizer()
        if text.vocab_path is not None and text.vocabulary is not None:
            raise SettingError("set data.text.vocab_path or data.text.vocabulary, not both: they are two ways to give "
                               "the vocabulary")
        self._given_vocab = Vocabulary.from_tokens(text.vocabulary) if text.vocabulary is not None else None
        self._notices: set[str] = set()  # what setup has said once already
        self._sources = {"train": as_sources(train), "val": as_sources(val), "test": as_sources(test)}
        for role, sources in self._sources.items():
            check_sources(role, sources)
        if not _is_demo(self._sources["train"]) and _is_demo(self._sources["val"]):
            raise SettingError("data.val is not set, so validation would run on the bundled demo corpus while "
                               "data.train is your own: set data.val to held-out clips (a manifest, or your "
                               "release, whose test split it then reads)")
        if _is_demo(self._sources["test"]) and not _is_demo(self._sources["val"]):
            # your own validation data also tests, rather than the demo corpus: a release at its test split
            self._sources["test"] = [replace(source, splits=None) for source in self._sources["val"]]
        # each source's name, as reports and metrics give it (val/<name>/wer), known before any is read; only
        # scored sets need distinct ones (two training files may both be train.csv)
        self._names = {role: [source_name(source, source_splits(source, role)) for source in sources]
                       for role, sources in self._sources.items()}
        for role in ("val", "test"):
            distinct_names(role, self._sources[role], self._names[role])
        self._opened: dict[tuple, Reader] = {}  # readers by reader_key: one release read once for every role
        self._parts: dict[str, list[tuple[Reader, str, float, int]]] = {}  # role -> (reader, split, weight, source)
        self._rows: dict[tuple[int, str], Manifest] = {}  # (reader, split) -> unfiltered rows with normalised text
        self._vocab: Vocabulary | None = None
        self._manifests: dict[str, Manifest] = {}  # "train" / "val" / "test" -> filtered
        self._train_weights: np.ndarray | None = None  # (N,) per training clip, where sources weigh them
        self._row_sources: dict[str, np.ndarray] = {}  # "val" / "test" -> int64 (N,) source of each row, if several
        self._loaders: list[ClipLoader] = []

    # -- lazily built pieces -------------------------------------------------------------------------------

    def _open(self, role: str) -> None:
        """Open the sources of ``role`` (archives are extracted here) and name them."""
        parts = []
        for index, source in enumerate(self._sources[role]):
            reader, splits = open_source(source, role, self.loading.cache_dir, self._opened)
            parts += [(reader, split, source.weight, index) for split in splits]
        self._parts[role] = parts

    def parts(self, name: str) -> list[tuple[Reader, str, float]]:
        """What ``"train"``, ``"val"`` or ``"test"`` reads: ``(reader, split, weight)`` for each split of each
        source, in their order."""
        if name not in self._parts:
            self._open(name)
        return [(reader, split, weight) for reader, split, weight, _ in self._parts[name]]

    def source_names(self, name: str) -> list[str]:
        """The names of what ``"val"`` or ``"test"`` reads, in the order ``batch["sources"]`` numbers them:
        one per source where there are several, else ``[name]``."""
        return list(self._names[name]) if len(self._sources[name]) > 1 else [name]

    def _label(self, name: str, index: int, reader: Reader, split: str) -> str:
        """A source as every report names it: its name, and where it is read from."""
        return f"{self._names[name][index]} ({describe(reader, split)})"

    def rows(self, split: str, source: Reader) -> Manifest:
        """Unfiltered rows of ``split`` of ``source`` with normalised texts (read once)."""
        key = (id(source), split)
        if key not in self._rows:
            self._rows[key] = source.read_split(split, self.normalizer)
        return self._rows[key]

    @property
    def vocab(self) -> Vocabulary:
        """The given ``vocabulary`` or ``vocab_path``'s, else the one built from train and evaluation text like
        the reference."""
        if self._vocab is None:
            if self._given_vocab is not None:
                self._vocab = self._given_vocab
            elif self.text.vocab_path is not None:
                self._vocab = Vocabulary.load(self.text.vocab_path)
            else:
                parts = dict.fromkeys((id(source), split, source) for name in ("train", "val", "test")
                                      for source, split, _ in self.parts(name))
                self._vocab = Vocabulary.build(text for _, split, source in parts
                                               for text in self.rows(split, source).texts)
        return self._vocab

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def pad_token_id(self) -> int:
        """The CTC blank."""
        return self.vocab.pad_id

    # -- Lightning hooks -------------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        # runs once per node before the other ranks start: extract archives here, not in every rank
        for name in ("train", "val", "test"):
            self.parts(name)

    def setup(self, stage: str) -> None:
        """Filter the splits the stage needs, report the counts, check leakage (see ``save_text_files``)."""
        wanted = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"], "predict": ["test"]}[stage]
        for name in wanted:
            if name not in self._manifests:
                self._manifests[name] = self._build(name)
        self.vocab  # noqa: B018 (built from the unfiltered rows, before they go)
        # the unfiltered rows served the vocabulary and the filters; a million-row corpus holds them twice else
        self._rows.clear()
        if stage == "fit":
            for source, manifest in self._by_source("val"):
                check_leakage(self._manifests["train"], manifest, f"validation ({source})", self.filters.leakage)
            self._notice_validation_on_test()
        self._report_alphabet(wanted[0])
        self._report_unknown_chars(wanted)

    def _build(self, name: str) -> Manifest:
        pieces, weights, owners = [], [], []
        self.parts(name)
        for reader, split, weight, index in self._parts[name]:
            label = self._label(name, index, reader, split)
            manifest, report = filter_manifest(reader, self.rows(split, reader), self.filters, label)
            rank_zero_info(f"[data] {name} <- {report}; {manifest.total_seconds / 3600:.2f} h")
            pieces.append(manifest)
            weights.append(weight)
            owners.append(index)
        manifest = Manifest.concat(pieces)
        if name != "train" and len(self._sources[name]) > 1:
            self._row_sources[name] = self._sources_of_rows(name, pieces, owners)
        if len(manifest) == 0:
            where = ", ".join(self._label(name, index, reader, split)
                              for reader, split, _, index in self._parts[name])
            raise DataError(f"no {name} clips left after filtering {where}; see the counts above (check "
                            f"data.filters.min_duration / max_duration and the data paths)")
        if name == "train" and any(w != 1.0 for w in weights):
            self._train_weights = np.repeat(np.array(weights), [len(m) for m in pieces])
        return manifest

    def _sources_of_rows(self, name: str, pieces: list[Manifest], owners: list[int]) -> np.ndarray:
        """int64 (N,): which source of ``data.<name>`` each row of ``pieces`` (a split of source ``owners[i]``
        each) comes from."""
        kept = np.bincount(owners, weights=[len(piece) for piece in pieces], minlength=len(self._names[name]))
        empty = [source for source, count in zip(self._names[name], kept) if count == 0]
        if empty:  # its WER would read 0.0 from no words at all
            raise DataError(f"no clips of data.{name} sources {empty} are left after filtering; see the counts "
                            f"above (check data.filters.min_duration / max_duration and the paths)")
        return np.repeat(np.array(owners, dtype=np.int64), [len(piece) for piece in pieces])

    def _by_source(self, name: str) -> list[tuple[str | None, Manifest]]:
        """The filtered rows of ``"val"`` or ``"test"`` per source: ``(its name, rows)`` for each."""
        manifest, sources = self._manifests[name], self._row_sources.get(name)
        if sources is None:
            return [(self._names[name][0], manifest)]
        return [(source, manifest.select(np.flatnonzero(sources == i))) for i, source in enumerate(self._names[name])]

    def _once(self, key: str, message: str) -> None:
        if key not in self._notices:
            self._notices.add(key)
            rank_zero_info(message)

    def _report_alphabet(self, name: str) -> None:
        report = AlphabetReport.build(self._manifests[name].texts, self.normalizer.chars_to_ignore,
                                      self.text.rare_symbol_count)
        self._once("alphabet", f"[data] {name} {report.table()}")

    def _notice_validation_on_test(self) -> None:
        # by repr (the resolved path), not identity: a release listed twice is opened once, but compare the place
        test = {(repr(reader), split) for reader, split, _ in self.parts("test")}
        shared = [(reader, split, index) for reader, split, _, index in self._parts["val"]
                  if (repr(reader), split) in test]
        if not shared:
            return
        where = ", ".join(self._label("val", index, reader, split) for reader, split, index in shared)
        # the way out fits the source: a manifest is one split, a release has others
        fix = ("set data.test to other clips" if all(isinstance(reader, ManifestFile) for reader, _, _ in shared)
               else "validate on the release's dev split (splits: [dev] in data.val) or set data.test to other clips")
        self._once("val-is-test", f"[data] validation source {where} is also a test set: the checkpoint chosen by "
                                  f"val/wer is chosen on test clips, so its test WER is optimistic. To report an "
                                  f"unbiased one, {fix}")

    def _report_unknown_chars(self, names: list[str]) -> None:
        given = "data.text.vocabulary" if self._given_vocab is not None else self.text.vocab_path
        if given is None:
            return  # a vocabulary built from these texts knows all their characters
        for name in names:
            for source, manifest in self._by_source(name):
                unknown = self.vocab.unknown_chars(manifest.texts)
                if unknown:
                    where = f"{name} ({source})"
                    rank_zero_warn(f"[data] {where}: {sum(unknown.values())} characters are not in "
                                   f"{given} and become [UNK]: {dict(unknown.most_common(20))}")

    def save_text_files(self, log_dir: Path) -> None:
        """Write ``vocab.json`` and ``normalizer.json`` into the run folder ``log_dir`` (rank 0 only).

        Not part of ``setup``: the caller (train.py's ``RunConfigSaver``, when fit starts) writes them once the
        checkpoint being resumed has been checked against this vocabulary, so a refused run changes no file.
        """
        if self.trainer is not None and not self.trainer.is_global_zero:
            return
        log_dir.mkdir(parents=True, exist_ok=True)
        self.vocab.save(log_dir)
        self.normalizer.save(log_dir)

    def train_dataloader(self) -> ClipLoader:
        return self._loader("train", self.batching.batch_size, shuffle=True)

    def val_dataloader(self) -> ClipLoader:
        return self._loader("val", self.batching.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> ClipLoader:
        return self._loader("test", self.batching.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> ClipLoader:
        """``train.py predict`` transcribes the test split."""
        return self._loader("test", self.batching.eval_batch_size, shuffle=False)

    def _loader(self, name: str, batch_size: int | None, shuffle: bool) -> ClipLoader:
        if name not in self._manifests:
            self._manifests[name] = self._build(name)
        manifest = self._manifests[name]
        trainer = self.trainer
        sampler = BucketBatchSampler(
            manifest.durations, batch_size=batch_size, max_batch_seconds=self.batching.max_batch_seconds,
            num_buckets=self.batching.num_buckets, shuffle=shuffle, seed=self.batching.seed,
            weights=self._train_weights if name == "train" else None,
            num_replicas=trainer.world_size if trainer is not None else None,
            rank=trainer.global_rank if trainer is not None else None)
        # persistent workers: forking a worker re-copies the manifest, so do it once, not every epoch
        # sampler by keyword: Lightning re-creates predict loaders from these arguments plus its own sampler=
        dataset = ClipDataset(manifest, self.vocab, conv_kernel=self.filters.conv_kernel,
                              conv_stride=self.filters.conv_stride, sources=self._row_sources.get(name))
        loader = ClipLoader(dataset, sampler=sampler, num_workers=self._workers(),
                            pin_memory=self.loading.pin_memory, persistent_workers=True, pad_to_multiple=self.pad_to_multiple)
        # Its own generator: otherwise each new iterator draws the workers' base seed from the global RNG,
        # which shifts every later random draw (dropout) and breaks exact resume at an epoch boundary.
        loader.generator = torch.Generator().manual_seed(self.batching.seed)
        self._loaders.append(loader)
        return loader

    def _workers(self) -> int:
        if self.loading.num_workers is not None:
            return self.loading.num_workers
        trainer = self.trainer
        if trainer is None:  # a loader asked for outside a Trainer: as for training on the CPU
            return dataloader_workers("cpu")
        return dataloader_workers(trainer.strategy.root_device.type, processes_per_host=trainer.num_devices)

    @property
    def num_skipped_clips(self) -> int:
        """Clips skipped so far as unreadable or truncated, over all loaders this module made (this rank)."""
        return sum(loader.num_skipped for loader in self._loaders)

    def teardown(self, stage: str) -> None:
        if self.num_skipped_clips:
            rank_zero_warn(f"[data] {self.num_skipped_clips} clips were skipped as unreadable or truncated (or too "
                           f"short for their text; see the warnings naming them)")

    # -- checkpoints -----------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Normaliser and vocabulary, so a resumed run can refuse data that would re-label the CTC outputs."""
        return {"normalizer": self.normalizer.to_dict(), "vocab": self.vocab.to_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_checkpoint_vocabulary(Vocabulary.from_dict(state["vocab"]), self.vocab)
        if state["normalizer"] != self.normalizer.to_dict():
            rank_zero_warn(f"the checkpoint's text normaliser {state['normalizer']} differs from this run's "
                           f"{self.normalizer.to_dict()}")


def check_checkpoint_vocabulary(saved: Vocabulary, data: Vocabulary) -> None:
    """Refuse a checkpoint whose CTC outputs mean other tokens than this data's vocabulary gives them.

    >>> check_checkpoint_vocabulary(Vocabulary.build(["ab"]), Vocabulary.build(["abc"]))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ptasr.errors.DataError: the checkpoint's vocabulary (5 tokens) differs from this data's (6 tokens; only here: 'c'): ...
    """
    if saved == data:
        return
    only_saved = sorted(set(saved.tokens) - set(data.tokens))
    only_data = sorted(set(data.tokens) - set(saved.tokens))
    differences = "; ".join(part for part in (
        f"only in the checkpoint: {' '.join(map(repr, only_saved))}" if only_saved else "",
        f"only here: {' '.join(map(repr, only_data))}" if only_data else "",
    ) if part) or "same tokens, other order"
    raise DataError(f"the checkpoint's vocabulary ({len(saved)} tokens) differs from this data's ({len(data)} "
                     f"tokens; {differences}): the model's outputs would mean other characters. Pass the run's "
                     f"vocab.json (in its run folder) as data.text.vocab_path, and the same data.text settings "
                     f"(chars_to_ignore, lowercase, strip_accents) as that run")


def _plain(value: list[DataSource] | str) -> list[dict[str, Any]] | str:
    """A source list as plain values (for the checkpoint's hyperparameters)."""
    return value if isinstance(value, str) else [asdict(source) for source in as_sources(value)]


def _is_demo(sources: list[DataSource]) -> bool:
    """Whether ``sources`` is the bundled demo corpus alone (the default of data.train, val and test)."""
    return all(Path(source.path).expanduser().resolve() == Path(BUNDLED_CORPUS) for source in sources)
