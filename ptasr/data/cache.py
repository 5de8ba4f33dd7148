"""What the data side caches on disk: where (:func:`default_cache_dir`), clip durations read from audio
headers (:class:`HeaderDurationCache`), and arrays written whole or not at all (:func:`save_array_atomically`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ptasr.data.audio import AudioDecodeError, audio_duration

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$PTASR_CACHE``, else ``$XDG_CACHE_HOME/ptasr``, else ``~/.cache/ptasr``."""
    if "PTASR_CACHE" in os.environ:
        return Path(os.environ["PTASR_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ptasr"


class HeaderDurationCache:
    """Durations read from audio headers, cached on disk per clips folder and keyed by (name, size, mtime).

    Older Common Voice releases have no ``clip_durations.tsv``; reading a header costs about a millisecond,
    so a big release would pay minutes on every start without this cache.
    """

    def __init__(self, cache_dir: Path, clips_dir: Path) -> None:
        digest = hashlib.sha1(str(clips_dir.resolve()).encode()).hexdigest()[:16]
        self.path = cache_dir / f"{digest}.tsv"
        self.clips_dir = clips_dir

    def durations(self, names: Sequence[str]) -> np.ndarray:
        cached = self._load()
        result = np.full(len(names), np.nan)
        fresh: list[str] = []
        for i, name in enumerate(names):
            try:
                stat = os.stat(self.clips_dir / name)
            except FileNotFoundError:
                continue
            stamp = f"{stat.st_size}\t{stat.st_mtime_ns}"
            if name in cached and cached[name][0] == stamp:
                result[i] = cached[name][1]
                continue
            try:
                result[i] = audio_duration(self.clips_dir / name)
            except AudioDecodeError as error:
                log.warning("%s", error)
            cached[name] = (stamp, result[i])
            fresh.append(name)
        if fresh:
            log.info("read the headers of %d clips in %s (cached in %s)", len(fresh), self.clips_dir, self.path)
            self._save(cached)
        return result

    def _load(self) -> dict[str, tuple[str, float]]:
        if not self.path.is_file():
            return {}
        cached = {}
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                name, size, mtime, seconds = line.rstrip("\n").split("\t")
                cached[name] = (f"{size}\t{mtime}", float(seconds))
        return cached

    def _save(self, cached: dict[str, tuple[str, float]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # write then rename: DDP ranks may build the same cache at once, and a reader never sees half a file
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(f"{name}\t{stamp}\t{float(seconds)!r}\n" for name, (stamp, seconds) in cached.items())
        os.replace(tmp, self.path)


def save_array_atomically(path: Path, array: np.ndarray) -> None:
    """``np.save`` to a temporary file, then rename: DDP ranks may write the same cache at once, and a reader
    never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)
