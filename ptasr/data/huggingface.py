"""A Hugging Face ``datasets`` dataset (hub id or local folder) as a source, read into a
:class:`~ptasr.data.table.Manifest` with audio decoding off: we decode the bytes ourselves (``datasets`` 4+
decodes through torchcodec and FFmpeg) and read durations from the audio headers once, cached by the
dataset's fingerprint.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ptasr.compat import dataset_fingerprint
from ptasr.data.audio import AudioDecodeError, AudioSource, audio_duration
from ptasr.data.cache import default_cache_dir, load_cached_array, save_array_atomically
from ptasr.data.commonvoice import COLUMN_ALIASES
from ptasr.data.table import Manifest
from ptasr.data.text import TextNormalizer, normalize_texts
from ptasr.errors import DataError, HubError, SettingError

log = logging.getLogger(__name__)

SPLIT_ALIASES = {"dev": ("dev", "validation"), "validation": ("validation", "dev")}


class HFAudioColumn:
    """Audio of Hugging Face datasets rows: ``key = "<split>/<row>"`` -> that row's bytes (or file path)."""

    def __init__(self, datasets: dict[str, Any], column: str) -> None:
        self.datasets = datasets
        self.column = column

    def __call__(self, key: str) -> AudioSource:
        split, row = key.rsplit("/", 1)
        audio = self.datasets[split][int(row)][self.column]
        if isinstance(audio, str):
            return audio
        return audio.get("bytes") or audio["path"]


class HFDatasetSource:
    """A Hugging Face ``datasets`` dataset with an audio column and a transcript column.

    Args:
        name: hub id, local dataset folder (e.g. of parquet files, split by file name), or a builder name
            such as ``"parquet"`` with ``data_dir``. (``"audiofolder"`` needs torchcodec in ``datasets`` 4+,
            even with decoding off.)
        config: dataset configuration (e.g. a language code), if it has several.
        data_dir: passed to ``load_dataset``.
        audio_column: column holding audio (an ``Audio`` feature or file paths).
        text_column: column holding the transcript.
        cache_dir: where header durations are cached (default :func:`default_cache_dir`).
    """

    def __init__(self, name: str, config: str | None = None, data_dir: str | None = None, audio_column: str = "audio",
                 text_column: str = "sentence", cache_dir: str | Path | None = None) -> None:
        self.name, self.config, self.data_dir = name, config, data_dir
        self.audio_column, self.text_column = audio_column, text_column
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._datasets: dict[str, Any] = {}
        self.reader = HFAudioColumn(self._datasets, audio_column)

    def __repr__(self) -> str:
        return f"HFDatasetSource({self.name!r}, config={self.config!r})"

    def _load(self, split: str) -> Any:
        if split not in self._datasets:
            import datasets  # only this source needs it; keep `import ptasr.data` light in workers

            with _hub_reachable(self.name):
                dataset = datasets.load_dataset(self.name, self.config, data_dir=self.data_dir, split=split)
            for column in (self.audio_column, self.text_column):
                if column not in dataset.column_names:
                    raise DataError(f"{self.name} split {split!r} has no column {column!r}; its columns are "
                                     f"{dataset.column_names} (set the source's audio_column / text_column)")
            if isinstance(dataset.features[self.audio_column], datasets.Audio):
                # decode=False: rows give {"bytes", "path"} and we decode with soundfile, no torchcodec/FFmpeg
                dataset = dataset.cast_column(self.audio_column, datasets.Audio(decode=False))
            self._datasets[split] = dataset
        return self._datasets[split]

    def resolve_split(self, split: str) -> str:
        """``split`` itself, or its other name (CV releases say "dev", HF copies said "validation")."""
        import datasets

        with _hub_reachable(self.name):
            available = datasets.get_dataset_split_names(self.name, self.config, data_dir=self.data_dir)
        for name in SPLIT_ALIASES.get(split, (split,)):
            if name in available:
                return name
        raise SettingError(f"{self.name} has no split {split!r}; it has {available}. Name splits it has: train.py's "
                           f"a source's splits in data.train/val/test (e.g. splits: [train]); ptasr evaluate's --split")

    def read_split(self, split: str, normalizer: TextNormalizer) -> Manifest:
        split = self.resolve_split(split)
        dataset = self._load(split)
        sentences = [str(s) for s in dataset[self.text_column]]
        keys = [f"{split}/{i}" for i in range(len(dataset))]
        ids = [os.path.basename(path) or key for path, key in zip(self._audio_paths(split), keys)]
        meta = {name: self._column(dataset, COLUMN_ALIASES[name]) for name in ("client_id", "age", "gender", "accent")}
        return Manifest(ids=ids, keys=keys, texts=normalize_texts(normalizer, sentences),
                        client_ids=meta["client_id"], ages=meta["age"], genders=meta["gender"],
                        accents=meta["accent"], reader=self.reader)

    def _audio_batches(self, split: str) -> Iterator[Any]:
        """The audio column in batches of 256 rows: ``{"bytes", "path"}`` dicts (or plain paths)."""
        for batch in self._load(split).select_columns([self.audio_column]).iter(batch_size=256):
            yield from batch[self.audio_column]

    def _audio_paths(self, split: str) -> list[str]:
        """Per row: the audio file path it names ("" if none), read without touching the bytes twice."""
        paths = []
        for audio in self._audio_batches(split):
            paths.append(audio if isinstance(audio, str) else ((audio or {}).get("path") or ""))
        return paths

    @staticmethod
    def _column(dataset: Any, aliases: tuple[str, ...]) -> list[str]:
        for alias in aliases:
            if alias in dataset.column_names:
                return ["" if v is None else str(v) for v in dataset[alias]]
        return [""] * len(dataset)

    def exists(self, manifest: Manifest) -> np.ndarray:
        """Rows with bytes always exist; rows that only name a file exist if the file does."""
        rows = _split_rows(manifest.keys)
        present = {split: np.array([_audio_present(a) for a in self._audio_batches(split)]) for split in set(rows[0])}
        return np.array([present[split][row] for split, row in zip(*rows)], dtype=bool)

    def durations(self, manifest: Manifest) -> np.ndarray:
        """Seconds (N,) from the audio headers (HF copies of Common Voice carry none), NaN if unreadable.

        Read once per split and cached under ``cache_dir/durations`` by the dataset's fingerprint.
        """
        rows = _split_rows(manifest.keys)
        per_split = {split: self._split_durations(split) for split in set(rows[0])}
        return np.array([per_split[split][row] for split, row in zip(*rows)], dtype=np.float64)

    def _split_durations(self, split: str) -> np.ndarray:
        path = self.cache_dir / "durations" / f"hf-{dataset_fingerprint(self._load(split))}.npy"
        cached = load_cached_array(path)
        if cached is not None:
            return cached
        result = []
        for audio in self._audio_batches(split):
            source = audio if isinstance(audio, str) else ((audio or {}).get("bytes") or (audio or {}).get("path"))
            try:
                result.append(audio_duration(source or b""))
            except AudioDecodeError as error:
                log.warning("%s (split %s row %d)", error, split, len(result))
                result.append(np.nan)
        durations = np.array(result, dtype=np.float64)
        save_array_atomically(path, durations)
        return durations


@contextmanager
def _hub_reachable(name: str) -> Iterator[None]:
    """``datasets``' ConnectionError (offline, or no such dataset on the hub) as one line with the way out."""
    try:
        yield
    except ConnectionError as error:
        raise HubError(f"cannot load the dataset {name} from the Hugging Face hub ({error}): download it while "
                       f"online (huggingface-cli download --repo-type dataset {name} --local-dir DIR) and give DIR, a "
                       f"folder of parquet files, as the source's path") from error


def _split_rows(keys: Sequence[str]) -> tuple[list[str], list[int]]:
    """``["train/0", "test/3"]`` -> ``(["train", "test"], [0, 3])``."""
    pairs = [key.rsplit("/", 1) for key in keys]
    return [split for split, _ in pairs], [int(row) for _, row in pairs]


def _audio_present(audio: Any) -> bool:
    """A row's audio is usable if it carries bytes or names a file that exists."""
    if isinstance(audio, str):
        return os.path.isfile(audio)
    audio = audio or {}
    return bool(audio.get("bytes")) or os.path.isfile(audio.get("path") or "")
