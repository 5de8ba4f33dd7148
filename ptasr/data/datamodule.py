"""The LightningDataModule: Common Voice, manifest files, HF datasets, or several at once -> filtered, bucketed batches.

Defaults follow the reference (``lgris/wav2vec2-xls-r-pt-cv7`` with HF's ``run_speech_recognition_ctc.py``):
train on train + dev, evaluate on test, 16 clips per batch, 8 per evaluation batch, clips up to 20 s, the
README's ``chars_to_ignore``, lower-case, vocabulary from training and evaluation text.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from ptasr.data import BUNDLED_CORPUS
from ptasr.data.audio import SAMPLE_RATE
from ptasr.data.commonvoice import CommonVoiceRelease
from ptasr.data.dataset import ClipDataset, ClipLoader
from ptasr.data.filters import FilterSettings, check_leakage, filter_manifest
from ptasr.data.huggingface import HFDatasetSource
from ptasr.data.manifests import is_manifest_file
from ptasr.data.sampler import BucketBatchSampler
from ptasr.data.sources import EvalSource, Source, TrainSource, check_eval_sources, describe, open_file
from ptasr.data.table import Manifest
from ptasr.data.text import AlphabetReport, TextNormalizer, Vocabulary
from ptasr.errors import DataError, SettingError
from ptasr.threads import dataloader_workers


class CommonVoiceDataModule(pl.LightningDataModule):
    """Common Voice, your own manifest files, or several corpora at once, for CTC fine-tuning.

    What trains: ``sources`` (several corpora) if given, else ``train_manifest``, else ``train_splits`` of
    ``root`` (or ``hf_dataset``). What validates and tests: ``val_sources`` / ``test_sources`` (several
    corpora, each scored alone too) if given, else ``val_manifest`` / ``test_manifest``, else ``val_split`` /
    ``test_split`` of ``root``. One vocabulary covers all of them.

    ``vocab``, ``vocab_size``, ``pad_token_id`` and ``normalizer`` work right after construction (LightningCLI
    links ``vocab_size`` into the model before ``setup``): the first access reads and normalises the split
    TSVs, nothing more. ``setup`` adds durations, applies the filters and logs what each removed.

    Args:
        root: Common Voice language folder (``cv-corpus-<ver>/<lang>``), a folder of such, or the release
            ``.tar.gz``; default the bundled synthetic Portuguese corpus. Ignored when ``hf_dataset`` is set.
        language: language folder to use when ``root`` holds several (e.g. ``"pt"``).
        hf_dataset: a Hugging Face dataset (hub id, local folder of parquet files, or a builder such as
            ``"parquet"`` with ``hf_data_dir``) to read instead of ``root``.
        hf_config: its configuration name (e.g. a language code).
        hf_data_dir: its ``data_dir``.
        hf_audio_column: its audio column (Audio feature or file paths).
        hf_text_column: its transcript column.
        train_manifest: a manifest file (``.csv``/``.tsv``/``.jsonl``: audio column ``path``/``audio``/``file``,
            text column ``text``/``sentence``/``transcript``, optional ``duration`` seconds and ``speaker``;
            relative paths from the manifest's folder) to train on instead of ``root``'s splits.
        val_manifest: a manifest file to validate on instead of ``root``'s ``val_split``.
        test_manifest: a manifest file to test on (default: ``val_manifest`` where ``root`` is the bundled
            demo corpus, else ``root``'s ``test_split``).
        sources: several training corpora (manifests, releases, HF datasets), each with a weight; see
            :class:`TrainSource`. Replaces ``train_manifest`` and ``root``'s ``train_splits`` for training.
        val_sources: several validation corpora (manifests, releases, HF datasets), each with an optional
            ``name``; see :class:`EvalSource`. ``val/wer`` and ``val/cer`` pool them (word-weighted), and with
            two or more each also gets ``val/<name>/wer`` and ``val/<name>/cer``. Replaces ``val_manifest`` and
            ``root``'s ``val_split``.
        test_sources: several test corpora, likewise (``test/<name>/wer``); default ``val_sources`` where
            ``root`` is the bundled demo corpus.
        train_splits: splits trained on, concatenated (``"dev"`` also finds an HF ``"validation"`` split).
        val_split: split validated on.
        test_split: split tested on.
        batch_size: clips per training batch (``None``: only ``max_batch_seconds`` limits batches).
        max_batch_seconds: padded audio seconds per batch (clips x longest clip), for training and evaluation.
        pad_to_multiple_seconds: pad every batch's waveforms up to a multiple of this duration (e.g. 0.5), so
            that batches come in few shapes (at most ``max_duration`` / this), for code that specialises on
            shapes: torch.compile with static shapes, CUDA graphs, cuDNN's benchmark mode. It costs compute:
            half the multiple per clip on average, not counted in ``max_batch_seconds``. ``None``: pad to the
            longest clip only.
        eval_batch_size: clips per validation/test batch.
        num_buckets: duration buckets the sampler draws batches from.
        min_duration: shortest clip kept, seconds.
        max_duration: longest clip kept, seconds (``None``: no limit).
        chars_to_ignore: characters the normaliser deletes (before ``strip_punctuation``). Default none: the
            reference's list (:data:`~ptasr.data.text.DEFAULT_CHARS_TO_IGNORE`, which configs/xls-r-300m_pt_cv7.yaml
            and the demo set) deletes hyphens, dots and ’, which joins words: "primeiro-ministro" ->
            "primeiroministro", "a.C." -> "ac", "l’eau" -> "leau".
        lowercase: lower-case transcripts.
        strip_accents: remove diacritics (``"ação"`` -> ``"acao"``).
        strip_punctuation: replace every Unicode punctuation character by a space; an apostrophe, a hyphen or
            a Catalan middle dot between two word characters stays. The default, because it keeps words whole in
            every language checked (pt "primeiro-ministro", "d'água"; es "¿Qué?", "EE.UU." -> "ee uu"; fr
            "aujourd'hui", "l’eau", "peut-être"; en "don't", "U.S." -> "u s"; de "z.B." -> "z b",
            "Baden-Württemberg"; ca "col·legi", "l'home"), as the vocabularies of the most used XLSR fine-tunes
            on the hub (which keep ' and -) and Whisper's normaliser (punctuation becomes a space, not nothing) do.
        rare_symbol_count: the alphabet table printed at setup flags symbols seen fewer times than this.
        vocab_path: an existing ``vocab.json`` (e.g. of a checkpoint being fine-tuned further) instead of
            building one; characters it lacks map to ``[UNK]`` and are counted at setup.
        vocabulary: the vocabulary itself, its tokens in id order, instead of building one (train.py sets it,
            and the text settings above, from the model that validate/test/predict evaluate); characters it
            lacks map to ``[UNK]`` and are counted at setup.
        conv_kernel: feature-encoder kernel widths, for the CTC-feasibility filter (must match the model's).
        conv_stride: feature-encoder strides, likewise.
        leakage: what to do when evaluation clips or sentences also occur in training.
        num_workers: DataLoader worker processes (decoding and resampling happen there); ``None`` (default):
            :func:`ptasr.threads.dataloader_workers` chooses (1 when training on the CPU).
        pin_memory: pin batches for faster host-to-GPU copies.
        seed: seeds the per-epoch batch order (with the epoch number).
        cache_dir: where release archives are extracted and header durations cached (default
            ``$PTASR_CACHE`` or ``~/.cache/ptasr``).
    """

    def __init__(
        self,
        root: str = BUNDLED_CORPUS,
        language: str | None = None,
        hf_dataset: str | None = None,
        hf_config: str | None = None,
        hf_data_dir: str | None = None,
        hf_audio_column: str = "audio",
        hf_text_column: str = "sentence",
        train_manifest: str | None = None,
        val_manifest: str | None = None,
        test_manifest: str | None = None,
        sources: list[TrainSource] | None = None,
        val_sources: list[EvalSource] | None = None,
        test_sources: list[EvalSource] | None = None,
        train_splits: Sequence[str] = ("train", "dev"),
        val_split: str = "test",
        test_split: str = "test",
        batch_size: int | None = 16,
        max_batch_seconds: float | None = None,
        pad_to_multiple_seconds: float | None = None,
        eval_batch_size: int = 8,
        num_buckets: int = 10,
        min_duration: float = 0.0,
        max_duration: float | None = 20.0,
        chars_to_ignore: str = "",
        lowercase: bool = True,
        strip_accents: bool = False,
        strip_punctuation: bool = True,
        rare_symbol_count: int = 10,
        vocab_path: str | None = None,
        vocabulary: list[str] | None = None,
        conv_kernel: Sequence[int] = (10, 3, 3, 3, 3, 2, 2),
        conv_stride: Sequence[int] = (5, 2, 2, 2, 2, 2, 2),
        leakage: Literal["warn", "raise", "ignore"] = "warn",
        num_workers: int | None = None,
        pin_memory: bool = False,
        seed: int = 42,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if batch_size is None and max_batch_seconds is None:
            raise SettingError("set data.batch_size, data.max_batch_seconds, or both")
        if max_duration is not None and max_batch_seconds is not None and max_duration > max_batch_seconds:
            rank_zero_warn(f"max_duration={max_duration} s exceeds max_batch_seconds={max_batch_seconds} s: clips "
                           f"longer than the budget get a batch of their own, over budget")
        self.train_splits = list(train_splits)
        self.val_split, self.test_split = val_split, test_split
        self.batch_size, self.max_batch_seconds, self.eval_batch_size = batch_size, max_batch_seconds, eval_batch_size
        self.num_buckets, self.num_workers, self.pin_memory, self.seed = num_buckets, num_workers, pin_memory, seed
        self.leakage = leakage
        if pad_to_multiple_seconds is not None and pad_to_multiple_seconds <= 0:
            raise SettingError(f"data.pad_to_multiple_seconds must be positive or null, got {pad_to_multiple_seconds}")
        self.pad_to_multiple = max(1, round((pad_to_multiple_seconds or 0) * SAMPLE_RATE))  # samples
        self.normalizer = TextNormalizer(chars_to_ignore, lowercase=lowercase, strip_accents=strip_accents,
                                         strip_punctuation=strip_punctuation)
        self.rare_symbol_count = rare_symbol_count
        self._notices: set[str] = set()  # what setup has said once already
        self.filters = FilterSettings(min_duration, max_duration, tuple(conv_kernel), tuple(conv_stride))
        self._source_args: dict[str, Any] = dict(root=root, language=language, hf_dataset=hf_dataset,
                                                 hf_config=hf_config, hf_data_dir=hf_data_dir,
                                                 hf_audio_column=hf_audio_column, hf_text_column=hf_text_column,
                                                 cache_dir=cache_dir)
        if vocab_path is not None and vocabulary is not None:
            raise SettingError("set data.vocab_path or data.vocabulary, not both: they are two ways to give the "
                               "vocabulary")
        self._vocab_path = vocab_path
        self._given_vocab = Vocabulary.from_tokens(vocabulary) if vocabulary is not None else None
        if sources is not None and train_manifest is not None:
            raise SettingError("set data.sources (several corpora) or data.train_manifest (one file), not both: add "
                             f"{{path: {train_manifest}}} to data.sources")
        for spec in sources or ():
            if (spec.path is None) == (spec.hf_dataset is None):
                raise SettingError(f"each of data.sources needs exactly one of path and hf_dataset; got {spec}")
            if not spec.weight > 0:
                raise SettingError(f"data.sources weight must be positive, got {spec.weight} for {spec}")
        self._sources_spec = list(sources) if sources is not None else None
        self._manifest_args = {"train": train_manifest, "val": val_manifest, "test": test_manifest}
        # "val" / "test" -> the sources and their metric names, where several are given
        self._eval_specs = {name: list(specs) for name, specs in (("val", val_sources), ("test", test_sources))
                            if specs is not None}
        uses_own_data = sources is not None or train_manifest is not None
        on_demo = hf_dataset is None and root == BUNDLED_CORPUS
        if uses_own_data and val_manifest is None and val_sources is None and on_demo:
            raise SettingError("data.val_manifest is not set, so validation would run on the bundled demo corpus: set "
                             "data.val_manifest to a manifest of held-out clips (or data.root to the release whose "
                             "data.val_split you validate on)")
        if test_manifest is None and test_sources is None and on_demo:
            # your own validation data also tests, rather than the demo corpus
            if val_manifest is not None:
                self._manifest_args["test"] = val_manifest
            elif val_sources is not None:
                self._eval_specs["test"] = self._eval_specs["val"]
        # named after the split each reads: a release source without its own split tests on data.test_split
        self._eval_names = {name: self._checked_eval_sources(name) for name in self._eval_specs}
        self._source: Source | None = None
        # manifest files and data.sources entries, by what names them: (source, the split its file decides)
        self._opened: dict[str, tuple[Source, str | None]] = {}
        self._rows: dict[tuple[int, str], Manifest] = {}  # (source, split) -> unfiltered rows with normalised text
        self._vocab: Vocabulary | None = None
        self._manifests: dict[str, Manifest] = {}  # "train" / "val" / "test" -> filtered
        self._train_weights: np.ndarray | None = None  # (N,) per training clip, where data.sources weigh them
        self._row_sources: dict[str, np.ndarray] = {}  # "val" / "test" -> int64 (N,) source of each row, if several
        self._loaders: list[ClipLoader] = []

    # -- lazily built pieces -------------------------------------------------------------------------------

    @property
    def source(self) -> Source:
        """The release or HF dataset (built on first use: archives are extracted then)."""
        if self._source is None:
            a = self._source_args
            if a["hf_dataset"] is not None:
                self._source = HFDatasetSource(a["hf_dataset"], a["hf_config"], a["hf_data_dir"],
                                               a["hf_audio_column"], a["hf_text_column"], a["cache_dir"])
            else:
                self._source = CommonVoiceRelease(a["root"], a["language"], a["cache_dir"])
        return self._source

    def _open(self, key: str, make: Any) -> tuple[Source, str | None]:
        if key not in self._opened:
            self._opened[key] = make()
        return self._opened[key]

    def _source_of(self, spec: TrainSource | EvalSource) -> tuple[Source, str | None]:
        """The source ``spec`` names, and the split where its file decides it (a manifest's ``""``, a Common
        Voice split TSV's name; :func:`~ptasr.data.sources.open_file`, as ``ptasr evaluate --data`` reads it);
        ``None``: the spec's or the default splits."""
        a = self._source_args
        if spec.hf_dataset is not None:
            return self._open(f"hf:{spec.hf_dataset}:{spec.hf_config}:{spec.hf_data_dir}", lambda: (HFDatasetSource(
                spec.hf_dataset, spec.hf_config, spec.hf_data_dir, a["hf_audio_column"], a["hf_text_column"],
                a["cache_dir"]), None))
        if is_manifest_file(spec.path):
            return self._open(f"file:{spec.path}", lambda: open_file(spec.path, a["cache_dir"]))
        return self._open(f"cv:{spec.path}:{spec.language}", lambda: (CommonVoiceRelease(
            spec.path, spec.language, a["cache_dir"]), None))

    def _checked_eval_sources(self, name: str) -> list[str]:
        option, manifest = f"{name}_sources", self._manifest_args[name]
        if manifest is not None:
            raise SettingError(f"set data.{option} (several corpora) or data.{name}_manifest (one file), not both: "
                               f"add {{path: {manifest}}} to data.{option}")
        return check_eval_sources(option, self._eval_specs[name], self._default_split(name))

    def _default_split(self, name: str) -> str:
        return self.val_split if name == "val" else self.test_split

    def source_names(self, name: str) -> list[str]:
        """The names of what ``"val"`` or ``"test"`` reads, in the order ``batch["sources"]`` numbers them:
        one per entry of ``data.val_sources`` / ``data.test_sources``, else ``[name]``."""
        return list(self._eval_names.get(name, [name]))

    def parts(self, name: str) -> list[tuple[Source, str, float]]:
        """What ``"train"``, ``"val"`` or ``"test"`` reads: ``(source, split, weight)`` for each piece (with
        ``data.val_sources`` / ``data.test_sources``, one piece per source, in their order)."""
        if name in self._eval_specs:
            return [self._eval_part(spec, name) for spec in self._eval_specs[name]]
        manifest = self._manifest_args[name]
        if name == "train" and self._sources_spec is not None:
            parts = []
            for spec in self._sources_spec:
                source, split = self._source_of(spec)
                splits = [split] if split is not None else (spec.splits or self.train_splits)
                parts += [(source, split, spec.weight) for split in splits]
            return parts
        if manifest is not None:
            source, split = self._source_of(TrainSource(path=manifest))
            return [(source, split or "", 1.0)]
        splits = self.train_splits if name == "train" else [self.val_split if name == "val" else self.test_split]
        return [(self.source, split, 1.0) for split in splits]

    def _eval_part(self, spec: EvalSource, name: str) -> tuple[Source, str, float]:
        source, split = self._source_of(spec)
        return source, split if split is not None else spec.split or self._default_split(name), 1.0

    def rows(self, split: str, source: Source | None = None) -> Manifest:
        """Unfiltered rows of ``split`` of ``source`` (default ``root``'s) with normalised texts (read once)."""
        source = self.source if source is None else source
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
            elif self._vocab_path is not None:
                self._vocab = Vocabulary.load(self._vocab_path)
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
                check_leakage(self._manifests["train"], manifest, f"validation ({source or self.val_split})",
                              self.leakage)
            self._notice_validation_on_test()
        self._report_alphabet(wanted[0])
        self._report_unknown_chars(wanted)

    def _build(self, name: str) -> Manifest:
        pieces, weights = [], []
        for source, split, weight in self.parts(name):
            label = describe(source, split)
            manifest, report = filter_manifest(source, self.rows(split, source), self.filters, label)
            rank_zero_info(f"[data] {name} <- {report}; {manifest.total_seconds / 3600:.2f} h")
            pieces.append(manifest)
            weights.append(weight)
        manifest = Manifest.concat(pieces)
        if name in self._eval_specs:
            self._row_sources[name] = self._sources_of_rows(name, pieces)
        if len(manifest) == 0:
            where = ", ".join(describe(source, split) for source, split, _ in self.parts(name))
            raise DataError(f"no {name} clips left after filtering {where}; see the counts above (check "
                            f"data.min_duration / data.max_duration and the data paths)")
        if name == "train" and any(w != 1.0 for w in weights):
            self._train_weights = np.repeat(np.array(weights), [len(m) for m in pieces])
        return manifest

    def _sources_of_rows(self, name: str, pieces: list[Manifest]) -> np.ndarray:
        """int64 (N,): which of ``data.<name>_sources`` each row of ``pieces`` (one per source) comes from."""
        empty = [source for source, piece in zip(self._eval_names[name], pieces) if len(piece) == 0]
        if empty:  # its WER would read 0.0 from no words at all
            raise DataError(f"no clips of data.{name}_sources {empty} are left after filtering; see the counts "
                            f"above (check data.min_duration / data.max_duration and the paths)")
        return np.repeat(np.arange(len(pieces), dtype=np.int64), [len(piece) for piece in pieces])

    def _by_source(self, name: str) -> list[tuple[str | None, Manifest]]:
        """The filtered rows of ``"val"`` or ``"test"`` per source: ``(its name, rows)`` for each of several,
        else ``[(None, all rows)]``."""
        manifest, sources = self._manifests[name], self._row_sources.get(name)
        if sources is None:
            return [(None, manifest)]
        return [(source, manifest.select(np.flatnonzero(sources == i)))
                for i, source in enumerate(self._eval_names[name])]

    def _once(self, key: str, message: str) -> None:
        if key not in self._notices:
            self._notices.add(key)
            rank_zero_info(message)

    def _report_alphabet(self, name: str) -> None:
        report = AlphabetReport.build(self._manifests[name].texts, self.normalizer.chars_to_ignore,
                                      self.rare_symbol_count)
        self._once("alphabet", f"[data] {name} {report.table()}")

    def _notice_validation_on_test(self) -> None:
        # by repr (the resolved path), not identity: data.val_sources opens a release apart from data.root
        test = {(repr(source), split) for source, split, _ in self.parts("test")}
        val = zip(self.source_names("val"), self.parts("val"))
        shared = [(name, source, split) for name, (source, split, _) in val if (repr(source), split) in test]
        if not shared:
            return
        if "val" in self._eval_specs:
            where = ", ".join(f"{name} ({describe(source, split)})" for name, source, split in shared)
            where = f"validation source {where}, which is also a test set"
            # the way out fits the setting: data.val_split does nothing for manifests or data.val_sources
            fix = "list other clips in data.test_sources (or give each release source its own split)"
        elif self._manifest_args["val"] is not None:
            where = f"validation runs on {self._manifest_args['val']}, which is also the test set"
            fix = "set data.test_manifest to a manifest of other clips"
        else:
            where = (f"validation runs on split {self.val_split!r} of {describe(self.source, '')}, which is also the "
                     f"test set")
            fix = "validate on other clips of the release (data.val_split: dev)"
        self._once("val-is-test", f"[data] {where}: the checkpoint chosen by val/wer is chosen on test clips, so "
                                  f"its test WER is optimistic. To report an unbiased one, {fix}")

    def _report_unknown_chars(self, names: list[str]) -> None:
        given = "data.vocabulary" if self._given_vocab is not None else self._vocab_path
        if given is None:
            return  # a vocabulary built from these texts knows all their characters
        for name in names:
            for source, manifest in self._by_source(name):
                unknown = self.vocab.unknown_chars(manifest.texts)
                if unknown:
                    where = f"{name} ({source})" if source else name
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
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> ClipLoader:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> ClipLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> ClipLoader:
        """``train.py predict`` transcribes the test split."""
        return self._loader("test", self.eval_batch_size, shuffle=False)

    def _loader(self, name: str, batch_size: int | None, shuffle: bool) -> ClipLoader:
        if name not in self._manifests:
            self._manifests[name] = self._build(name)
        manifest = self._manifests[name]
        trainer = self.trainer
        sampler = BucketBatchSampler(
            manifest.durations, batch_size=batch_size, max_batch_seconds=self.max_batch_seconds,
            num_buckets=self.num_buckets, shuffle=shuffle, seed=self.seed,
            weights=self._train_weights if name == "train" else None,
            num_replicas=trainer.world_size if trainer is not None else None,
            rank=trainer.global_rank if trainer is not None else None)
        # persistent workers: forking a worker re-copies the manifest, so do it once, not every epoch
        # sampler by keyword: Lightning re-creates predict loaders from these arguments plus its own sampler=
        dataset = ClipDataset(manifest, self.vocab, conv_kernel=self.filters.conv_kernel,
                              conv_stride=self.filters.conv_stride, sources=self._row_sources.get(name))
        loader = ClipLoader(dataset, sampler=sampler, num_workers=self._workers(),
                            pin_memory=self.pin_memory, persistent_workers=True, pad_to_multiple=self.pad_to_multiple)
        # Its own generator: otherwise each new iterator draws the workers' base seed from the global RNG,
        # which shifts every later random draw (dropout) and breaks exact resume at an epoch boundary.
        loader.generator = torch.Generator().manual_seed(self.seed)
        self._loaders.append(loader)
        return loader

    def _workers(self) -> int:
        if self.num_workers is not None:
            return self.num_workers
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
                     f"vocab.json (in its run folder) as data.vocab_path, and the same data.* text settings "
                     f"(chars_to_ignore, lowercase, strip_accents) as that run")
