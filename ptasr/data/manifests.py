"""Your own recordings: a manifest file (``.csv``, ``.tsv`` or ``.jsonl``) listing audio files and transcripts.

Columns, by header name (CSV/TSV) or key (JSON lines): the audio file (``path``, else ``audio`` or ``file``),
its transcript (``text``, else ``sentence`` or ``transcript``), optionally ``duration`` (seconds; read from
the audio header where absent or empty, and cached like a release's) and ``speaker`` (also ``age``,
``gender``, ``accent`` where present). Relative paths resolve against the manifest's folder. Any audio that
soundfile reads works: WAV, FLAC, Ogg Vorbis/Opus, MP3, at any rate, mono or stereo. The file is UTF-8 (with or
without a byte-order mark); a duration is above 0 and at most :data:`MAX_CLIP_SECONDS`; anything else is
refused in one line that names the file and the line.

One rule tells a manifest from a Common Voice split, for training and evaluation alike
(:func:`is_common_voice_split`): a ``.tsv`` whose header holds ``client_id``, ``path``, ``sentence``,
``up_votes`` and ``down_votes`` is a Common Voice split (its clips in ``clips/`` beside it); every other
``.csv``, ``.tsv`` or ``.jsonl`` is a manifest.

A :class:`ManifestFile` is a source like :class:`ptasr.data.commonvoice.CommonVoiceRelease`: it gives a
:class:`~ptasr.data.table.Manifest`, and :func:`~ptasr.data.filters.filter_manifest` applies the
same filters to it. It has one split, the whole file.

>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = (folder / "train.csv").write_text("path,text,duration\\nclips/a.wav,Olá mundo,1.5\\n")
>>> rows = ManifestFile(folder / "train.csv").read_split("", lambda s: s.lower())
>>> rows.keys == [str(folder / "clips" / "a.wav")], rows.texts, rows.durations.tolist()
(True, ['olá mundo'], [1.5])
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ptasr.data.cache import HeaderDurationCache, default_cache_dir, load_cached_array, save_array_atomically
from ptasr.data.table import ClipFiles, Manifest, not_utf8
from ptasr.data.text import normalize_texts
from ptasr.errors import DataError, MissingPathError, SettingError

MANIFEST_SUFFIXES = (".csv", ".tsv", ".jsonl")
# canonical column -> the names accepted for it, first match wins
MANIFEST_COLUMNS: dict[str, tuple[str, ...]] = {
    "path": ("path", "audio", "file"),
    "text": ("text", "sentence", "transcript"),
    "duration": ("duration",),
    "speaker": ("speaker", "client_id"),
    "age": ("age",),
    "gender": ("gender",),
    "accent": ("accent", "accents"),
}
SHARED_COLUMNS = ("speaker", "age", "gender", "accent")  # values that repeat across rows: one string each
# Columns every Common Voice release (1 to 21) writes in its split TSVs and that no manifest needs (votes)
COMMON_VOICE_COLUMNS = ("client_id", "path", "sentence", "up_votes", "down_votes")
# A day: a listed duration beyond it is another unit (milliseconds) or a typo, not a clip
MAX_CLIP_SECONDS = 86_400.0


def is_manifest_file(path: str | Path) -> bool:
    """Whether ``path`` names a manifest file (by its suffix), as opposed to a release folder or archive.

    A Common Voice split TSV also ends in ``.tsv``: :func:`is_common_voice_split` tells the two apart.
    """
    return Path(path).suffix.lower() in MANIFEST_SUFFIXES


def is_common_voice_split(path: str | Path) -> bool:
    """Whether ``path`` is a Common Voice split TSV (``train.tsv``, ``test.tsv``, ``validated.tsv``...) rather
    than a manifest: a ``.tsv`` whose header holds every one of :data:`COMMON_VOICE_COLUMNS`. Recognised by its
    columns, never by its name or a ``clips/`` folder beside it: ``path<TAB>sentence`` is a manifest whose
    paths start at its folder, wherever it lies.

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "test.tsv").write_text("client_id\\tpath\\tsentence\\tup_votes\\tdown_votes\\n")
    >>> _ = (folder / "mine.tsv").write_text("path\\tsentence\\n")
    >>> is_common_voice_split(folder / "test.tsv"), is_common_voice_split(folder / "mine.tsv")
    (True, False)
    """
    path = Path(path)
    if path.suffix.lower() != ".tsv" or not path.is_file():
        return False
    with open(path, "rb") as f:
        first = f.readline()
    try:
        header = first.decode("utf-8-sig").rstrip("\r\n").split("\t")
    except UnicodeDecodeError as error:
        raise not_utf8(path) from error
    return set(COMMON_VOICE_COLUMNS) <= {name.strip() for name in header}


class ManifestFile:
    """One manifest file as a data source.

    Args:
        path: the ``.csv``/``.tsv``/``.jsonl`` file.
        cache_dir: where durations read from audio headers are cached (default
            :func:`ptasr.data.cache.default_cache_dir`).
    """

    def __init__(self, path: str | Path, cache_dir: str | Path | None = None) -> None:
        self.path = Path(path).expanduser().resolve()
        if not self.path.is_file():
            raise MissingPathError(f"manifest {self.path} does not exist; pass a .csv, .tsv or .jsonl file with "
                                    f"an audio column (path/audio/file) and a text column (text/sentence/transcript)")
        if not is_manifest_file(self.path):
            raise SettingError(f"{self.path} is not a manifest: its name must end in {', '.join(MANIFEST_SUFFIXES)}")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        # keys are absolute paths, so one reader serves every row and ids stay distinct across manifests
        self.reader = ClipFiles("")
        self._keys: list[str] | None = None  # every row's key, as the last read_split gave them

    def __repr__(self) -> str:
        return f"ManifestFile({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    def read_split(self, split: str, normalizer: Callable[[str], str]) -> Manifest:
        """All rows with normalised texts and the listed durations (NaN where the file gives none).

        ``split`` is ignored: a manifest file is one split.
        """
        table = read_manifest_table(self.path)
        base = str(self.path.parent) + os.sep
        # plain concatenation, not os.path.join per row: a few million rows stay within a second
        keys = [p if p.startswith(os.sep) else base + p for p in table["path"]]
        durations = table["duration"]
        cached = load_cached_array(self._cache_path()) if np.isnan(durations).any() else None
        if cached is not None and len(cached) == len(durations):
            durations = np.where(np.isnan(durations), cached, durations)
        self._keys = keys
        return Manifest(ids=keys, keys=keys, texts=normalize_texts(normalizer, table["text"]), client_ids=table["speaker"], ages=table["age"],
                        genders=table["gender"], accents=table["accent"], reader=self.reader, durations=durations)

    def _cache_path(self) -> Path:
        """Header durations of this manifest's rows, valid while the manifest file is unchanged."""
        stat = self.path.stat()
        digest = hashlib.sha1(str(self.path).encode()).hexdigest()[:16]
        return self.cache_dir / "durations" / f"manifest-{digest}-{stat.st_size}-{stat.st_mtime_ns}.npy"

    def save_durations(self, keys: list[str], seconds: np.ndarray) -> Path:
        """Cache ``seconds`` of rows ``keys`` (a subset of the last :meth:`read_split`) for the next start."""
        if self._keys is None:
            raise RuntimeError("save_durations needs the rows of read_split() first")
        row = {key: i for i, key in enumerate(self._keys)}
        full = np.full(len(self._keys), np.nan)
        full[[row[key] for key in keys]] = seconds
        path = self._cache_path()
        save_array_atomically(path, full)
        return path

    def exists(self, manifest: Manifest) -> np.ndarray:
        """Boolean (N,): which audio files exist. One directory listing per folder, not a stat per file."""
        present = np.zeros(len(manifest), dtype=bool)
        listings: dict[str, set[str]] = {}
        for row, key in enumerate(manifest.keys):
            folder, _, name = key.rpartition(os.sep)
            names = listings.get(folder)
            if names is None:
                try:
                    with os.scandir(folder) as entries:
                        names = {entry.name for entry in entries}
                except OSError:  # a folder that does not exist (or cannot be listed): none of its files is there
                    names = set()
                listings[folder] = names
            present[row] = name in names
        return present

    def durations(self, manifest: Manifest) -> np.ndarray:
        """Seconds (N,): the listed ones; the rest read from audio headers, NaN if unreadable.

        Header durations are cached twice: per audio file (name, size, mtime), as for releases, and per
        manifest file, so that later starts read neither headers nor a file's stat for a million rows.
        """
        result = np.full(len(manifest), np.nan) if manifest.durations is None else manifest.durations.copy()
        unknown = np.flatnonzero(np.isnan(result))
        if len(unknown):
            cache = HeaderDurationCache(self.cache_dir / "durations", self.path.parent)
            result[unknown] = cache.durations([manifest.keys[i] for i in unknown])
            if self._keys is not None:
                self.save_durations(manifest.keys, result)
        return result


def read_manifest_table(path: Path) -> dict[str, list[str] | np.ndarray]:
    """Read a manifest column-wise: ``{"path", "text", "speaker", "age", "gender", "accent": list of str,
    "duration": float64 (N,) seconds, NaN where empty}``.

    CSV follows the usual quoting (what spreadsheets and pandas write); TSV is read verbatim like Common Voice's
    (a transcript may start with an unmatched quote); JSON lines take one object per line.

    Raises:
        DataError: not UTF-8, no audio or text column, a line that is not JSON, or a duration that is not a
            number of seconds above 0 and at most :data:`MAX_CLIP_SECONDS` (each naming the file and the line).
    """
    read = _jsonl_columns if path.suffix.lower() == ".jsonl" else _delimited_columns
    try:
        out, lines = read(path)
    except UnicodeDecodeError as error:
        raise not_utf8(path) from error
    for name in SHARED_COLUMNS:
        # speakers and the like repeat across rows: one string object per distinct value, not one per row
        shared: dict[str, str] = {}
        out[name] = [shared.setdefault(value, value) for value in out[name]]
    result: dict[str, list[str] | np.ndarray] = dict(out)
    result["duration"] = _seconds(path, out["duration"], lines)
    return result


def _seconds(path: Path, values: list[str], lines: list[int]) -> np.ndarray:
    """float64 (N,) seconds, NaN where empty; a value that is not a possible clip length is refused, not
    filtered: 1e9 s or -3 s in every row would otherwise drop every clip as "outside duration bounds"."""
    seconds = np.full(len(values), np.nan)
    for row, value in enumerate(values):
        if value in ("", None):
            continue
        try:
            seconds[row] = float(value)
        except (TypeError, ValueError):
            raise DataError(f"{path} line {lines[row]}: duration {value!r} is not a number of seconds; correct it, or "
                            f"leave it empty where unknown (it is then read from the audio header)") from None
    given = np.array([value not in ("", None) for value in values], dtype=bool)
    impossible = given & ~((seconds > 0) & (seconds <= MAX_CLIP_SECONDS))  # NaN and inf fail too
    if impossible.any():
        row = int(np.flatnonzero(impossible)[0])
        others = int(impossible.sum()) - 1
        raise DataError(f"{path} line {lines[row]}: duration {values[row]!r} is not a possible clip length (above 0 "
                        f"and at most {MAX_CLIP_SECONDS:g} s){f', nor are {others} more' if others else ''}; correct "
                        f"the values, or drop the duration column to have every duration read from the audio headers")
    return seconds


def _delimited_columns(path: Path) -> tuple[dict[str, list[str]], list[int]]:
    """The columns, and the line (1-based) each row starts on."""
    delimiter, quoting = ("\t", csv.QUOTE_NONE) if path.suffix.lower() == ".tsv" else (",", csv.QUOTE_MINIMAL)
    # newline="": "\r\n" is one line end; utf-8-sig: spreadsheets write a byte-order mark
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path} is empty: a manifest starts with a header line such as `path,text,duration`")
        rows, lines, line = [], [], reader.line_num
        for row in reader:
            if row:
                rows.append(row)
                lines.append(line + 1)
            line = reader.line_num  # a quoted field may span lines: the next row starts after this one's end
    bad = next((i for i, row in enumerate(rows) if len(row) != len(header)), None)
    if bad is not None:
        raise DataError(f"{path} line {lines[bad]} has {len(rows[bad])} fields, the header {len(header)}; quote "
                        f"fields that contain the delimiter")
    where = _positions(path, [name.strip().lower() for name in header])
    columns = {name: [row[i] for row in rows] if i is not None else [""] * len(rows) for name, i in where.items()}
    return columns, lines


def _jsonl_columns(path: Path) -> tuple[dict[str, list[str]], list[int]]:
    """The columns, and the line (1-based) of each record."""
    records, lines = [], []
    with open(path, encoding="utf-8-sig") as f:
        for line, text in enumerate(f, start=1):
            if text.strip():
                try:
                    records.append(json.loads(text))
                except json.JSONDecodeError as error:
                    raise DataError(f"{path} line {line} is not JSON: {error}") from error
                lines.append(line)
    # the first record names the columns, as a header would
    keys = list(records[0]) if records else []
    where = _positions(path, keys)
    columns = {name: [_text(r.get(keys[i])) for r in records] if i is not None else [""] * len(records)
               for name, i in where.items()}
    return columns, lines


def _text(value: object) -> str:
    return "" if value is None else value if isinstance(value, str) else str(value)


def _positions(path: Path, header: list[str]) -> dict[str, int | None]:
    positions = {name: i for i, name in enumerate(header)}
    where = {name: next((positions[a] for a in aliases if a in positions), None)
             for name, aliases in MANIFEST_COLUMNS.items()}
    for name in ("path", "text"):
        if where[name] is None:
            raise DataError(f"{path} has no {name} column (one of {'/'.join(MANIFEST_COLUMNS[name])}); its columns "
                             f"are {header}")
    return where
