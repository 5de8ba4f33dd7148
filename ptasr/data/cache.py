"""What the data side caches on disk: where (:func:`default_cache_dir`), clip durations read from audio
headers (:class:`HeaderDurationCache`), and arrays written whole or not at all (:func:`save_array_atomically`).

Every cache is optional: one that cannot be read (a file cut short, written by an older ptasr) is rebuilt, and a
cache folder that cannot be written (a read-only ``HOME``, a full disk) is skipped; each says so in one line
and the run goes on. Paths of any characters round-trip: the TSV caches escape their fields
(:func:`escape_field`) and read file names as the file system gives them (``surrogateescape``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ptasr.data.audio import AudioDecodeError, audio_duration

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$PTASR_CACHE``, else ``$XDG_CACHE_HOME/ptasr``, else ``~/.cache/ptasr``."""
    if "PTASR_CACHE" in os.environ:
        return Path(os.environ["PTASR_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ptasr"


# --- fields of tab-separated lines ------------------------------------------------------------------------

_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_UNESCAPES = {escaped[1]: plain for plain, escaped in _ESCAPES.items()}
_ESCAPE = str.maketrans(_ESCAPES)
_ESCAPED = re.compile(r"\\([\\tnr])")


def escape_field(text: str) -> str:
    r"""``text`` as one field of a tab-separated line: backslash, tab, newline and carriage return written as
    ``\\``, ``\t``, ``\n``, ``\r`` (the escapes of PostgreSQL's and MySQL's TSV); :func:`unescape_field` reverses it.

    >>> escape_field("clips/a\tb\nc\\d.wav")
    'clips/a\\tb\\nc\\\\d.wav'
    >>> unescape_field(escape_field("x\\ny\r\n")) == "x\\ny\r\n"
    True
    """
    return text.translate(_ESCAPE)


def unescape_field(field: str) -> str:
    """The text :func:`escape_field` wrote as ``field``."""
    return _ESCAPED.sub(lambda match: _UNESCAPES[match.group(1)], field)


# --- reading and writing caches, never fatal ----------------------------------------------------------------

_ABSENT = (FileNotFoundError, NotADirectoryError)  # no cache yet, or a cache folder that cannot exist: not an error
_unwritable: set[Path] = set()  # cache folders already said to be unwritable in this process


def load_cached_array(path: Path) -> np.ndarray | None:
    """The array cached at ``path``, or None when there is none or it cannot be read (said in one line; the
    caller rebuilds it)."""
    try:
        return np.load(path)
    except _ABSENT:
        return None
    except (OSError, ValueError, EOFError) as error:  # cut short, not an .npy, unreadable
        log.warning("cache %s cannot be read (%s); rebuilding it", path, _reason(error))
        return None


def save_array_atomically(path: Path, array: np.ndarray) -> bool:
    """``np.save`` to a temporary file, then rename: DDP ranks may write the same cache at once, and a reader
    never sees half a file. Returns whether it was written (see :func:`write_cache`)."""
    return write_cache(path, lambda tmp: np.save(tmp, array), suffix=".tmp.npy")


def write_cache(path: Path, write: Callable[[Path], object], suffix: str = ".tmp") -> bool:
    """``write(tmp)`` then rename ``tmp`` to ``path``; returns False, having said so once per folder, when the
    cache folder cannot be written (read-only, not a folder, full): a cache is optional, the run goes on."""
    tmp = path.with_suffix(f".{os.getpid()}{suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
        return True
    except OSError as error:
        with contextlib.suppress(OSError):  # the folder itself is unusable: nothing was left in it
            tmp.unlink(missing_ok=True)
        if path.parent not in _unwritable:
            _unwritable.add(path.parent)
            full = " (free some space there)" if error.errno in (errno.ENOSPC, errno.EDQUOT) else ""
            log.warning("cannot write the cache %s (%s)%s; going on without it, set PTASR_CACHE to a writable "
                        "folder to keep it between runs", path.parent, _reason(error), full)
        return False


def _reason(error: BaseException) -> str:
    return (error.strerror if isinstance(error, OSError) and error.strerror else str(error)) or type(error).__name__


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
            except OSError as error:  # a symlink loop, a name too long, no permission: unreadable like a bad header
                log.warning("cannot read the header of %s: %s", self.clips_dir / name, _reason(error))
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
        """The cached entries; none when the file is absent, or cannot be read (then it is rebuilt)."""
        try:
            # newline="\n": a carriage return is data, not a line end; surrogateescape: names as the file
            # system holds them, UTF-8 or not
            with open(self.path, encoding="utf-8", errors="surrogateescape", newline="\n") as f:
                lines = f.read().split("\n")
        except _ABSENT:
            return {}
        except OSError as error:
            log.warning("cache %s cannot be read (%s); rebuilding it", self.path, _reason(error))
            return {}
        cached = {}
        try:
            for line in filter(None, lines):
                name, size, mtime, seconds = line.split("\t")
                cached[unescape_field(name)] = (f"{size}\t{mtime}", float(seconds))
        except ValueError as error:  # cut short, or written by a ptasr that did not escape names
            log.warning("cache %s cannot be read (%s); rebuilding it", self.path, error)
            return {}
        return cached

    def _save(self, cached: dict[str, tuple[str, float]]) -> None:
        # write then rename: DDP ranks may build the same cache at once, and a reader never sees half a file
        text = "".join(f"{escape_field(name)}\t{stamp}\t{float(seconds)!r}\n"
                       for name, (stamp, seconds) in cached.items())
        write_cache(self.path, lambda tmp: tmp.write_text(text, encoding="utf-8", errors="surrogateescape",
                                                          newline="\n"))
