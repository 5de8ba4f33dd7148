"""Text side of the data: the transcript normaliser and the CTC character vocabulary.

Both follow the Hugging Face reference (``run_speech_recognition_ctc.py`` as used for
``lgris/wav2vec2-xls-r-pt-cv7``) so that a vocabulary built here is the vocab.json that script would write,
and both serialise to plain dicts that travel inside checkpoints and exports.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ptasr.errors import DataError, MissingPathError, SettingError

# The robust-speech-event README's list (the reference model card's script uses it verbatim): TextNormalizer's
# default, so that checkpoints and folders saved without a normaliser read as they were trained. The data
# module's default keeps words whole instead (data.text.strip_punctuation; see ptasr.data.settings.TextSettings).
DEFAULT_CHARS_TO_IGNORE = ',?.!-;:"“%‘”�—’…–'

WORD_DELIMITER = "|"
UNK_TOKEN = "[UNK]"
PAD_TOKEN = "[PAD]"
# kept by strip_punctuation between two word characters ("d'água", "guarda-chuva", Catalan "col·legi"):
# apostrophes, hyphens and the middle dot
WORD_INTERNAL_PUNCTUATION = "'’‐‑-·"


class TextNormalizer:
    """Turns a raw transcript into the text the model learns to emit.

    Steps, in order: Unicode NFC (so "ã" typed as "a" + combining tilde is one character), remove every
    character of ``chars_to_ignore`` (replaced by nothing, as in the reference: "guarda-chuva" ->
    "guardachuva"), optionally replace every Unicode punctuation character by a space (``strip_punctuation``;
    apostrophes, hyphens and middle dots between two word characters stay), lower-case, optionally strip accents,
    collapse runs of whitespace and trim.

    >>> TextNormalizer()('  "Olá,  João!" — disse a mãe… ')
    'olá joão disse a mãe'
    >>> TextNormalizer(strip_accents=True)("Ação à vista")
    'acao a vista'
    >>> TextNormalizer("", strip_punctuation=True)("«Ele disse: 'd'água'», o guarda-chuva—¿não?")
    "ele disse d'água o guarda-chuva não"
    """

    def __init__(
        self, chars_to_ignore: str = DEFAULT_CHARS_TO_IGNORE, lowercase: bool = True, strip_accents: bool = False,
        strip_punctuation: bool = False,
    ) -> None:
        self.chars_to_ignore = chars_to_ignore
        self.lowercase = lowercase
        self.strip_accents = strip_accents
        self.strip_punctuation = strip_punctuation
        # a character class, not alternation: one pass over the text whatever the list length
        self._ignore = re.compile(f"[{re.escape(chars_to_ignore)}]") if chars_to_ignore else None
        self._punctuation = _punctuation_pattern() if strip_punctuation else None

    def __call__(self, text: str) -> str:
        return " ".join(self._steps(text).split())

    def many(self, texts: Iterable[str], chunk: int = 4096) -> list[str]:
        """``[self(t) for t in texts]``, in a fraction of the time for millions of transcripts.

        Each step but the last runs once over a chunk of texts joined by NUL, which no step changes or
        matches (it is neither a letter, a space nor punctuation); the whitespace collapse stays per text.

        >>> TextNormalizer().many(["Olá, João!", "  A  mãe… "])
        ['olá joão', 'a mãe']
        """
        out: list[str] = []
        iterator = iter(texts)
        while batch := list(itertools.islice(iterator, chunk)):
            joined = "\0".join(batch)
            if joined.count("\0") != len(batch) - 1:  # a text holds NUL itself: one at a time
                out += [self(t) for t in batch]
                continue
            out += [" ".join(t.split()) for t in self._steps(joined).split("\0")]
        return out

    def _steps(self, text: str) -> str:
        """Every step but the whitespace collapse."""
        text = unicodedata.normalize("NFC", text)
        if self._ignore is not None:
            text = self._ignore.sub("", text)
        if self._punctuation is not None:
            # a space, not nothing: "a—b" and "fim.Outro" are two words
            text = self._punctuation.sub(_space_unless_word_internal, text)
        if self.lowercase:
            text = text.lower()
        if self.strip_accents:
            text = _strip_accents(text)
        return text

    def to_dict(self) -> dict[str, Any]:
        d = {"chars_to_ignore": self.chars_to_ignore, "lowercase": self.lowercase, "strip_accents": self.strip_accents}
        if self.strip_punctuation:  # only when set: normalizer.json files and checkpoints without it stay equal
            d["strip_punctuation"] = True
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TextNormalizer:
        return cls(**d)

    def save(self, directory: str | Path) -> Path:
        """Write ``normalizer.json`` into ``directory`` and return its path."""
        path = Path(directory) / "normalizer.json"
        path.write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> TextNormalizer:
        """Read a ``normalizer.json`` file (or the one inside a folder)."""
        path = Path(path)
        if path.is_dir():
            path = path / "normalizer.json"
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))

    def __repr__(self) -> str:
        return (f"TextNormalizer(chars_to_ignore={self.chars_to_ignore!r}, lowercase={self.lowercase}, "
                f"strip_accents={self.strip_accents}, strip_punctuation={self.strip_punctuation})")


def normalize_texts(normalizer: Callable[[str], str], texts: list[str]) -> list[str]:
    """Normalised ``texts``: in chunks where the normaliser can (:meth:`TextNormalizer.many`), else one by one."""
    many = getattr(normalizer, "many", None)
    return many(texts) if many is not None else [normalizer(t) for t in texts]


@lru_cache(maxsize=1)
def _punctuation_pattern() -> re.Pattern[str]:
    """Every Unicode punctuation character (categories P*), as one character class."""
    punctuation = "".join(chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)).startswith("P"))
    return re.compile(f"[{re.escape(punctuation)}]")


def _space_unless_word_internal(match: re.Match[str]) -> str:
    """A space for a punctuation match, except an apostrophe, hyphen or middle dot between two word characters
    (``\\w``: letters, digits, ``_``), which stays: ``l'eau``, ``covid-19``, ``col·legi``.

    (A class pattern with this check scans ten times faster than a look-behind alternation would.)
    """
    char, text, i = match.group(), match.string, match.start()
    if char in WORD_INTERNAL_PUNCTUATION and 0 < i < len(text) - 1 and _is_word_char(text[i - 1]) \
            and _is_word_char(text[i + 1]):
        return char
    return " "


def _is_word_char(char: str) -> bool:
    """What the regex class ``\\w`` matches (letters, digits, ``_``), without a regex per character."""
    return char.isalnum() or char == "_"


def _strip_accents(text: str) -> str:
    # NFD splits "ç" into "c" + U+0327; dropping the combining marks (category Mn) leaves the base letters
    decomposed = unicodedata.normalize("NFD", text)
    return unicodedata.normalize("NFC", "".join(c for c in decomposed if unicodedata.category(c) != "Mn"))


class Vocabulary:
    """Character vocabulary for CTC in Hugging Face ``vocab.json`` order.

    ``Vocabulary.build`` reproduces the reference script: the sorted set of characters, space renamed to
    ``"|"`` in place (so it keeps the space's id, 0 for ordinary text), then ``[UNK]``, then ``[PAD]``, which
    is the last id and the CTC blank. Vocabularies loaded from other HF folders may name their specials
    ``<pad>``/``<unk>`` and put them anywhere; ``pad_id``/``unk_id`` follow the names.

    >>> vocab = Vocabulary.build(["olá mãe", "pão"])
    >>> vocab.tokens
    ['|', 'e', 'l', 'm', 'o', 'p', 'á', 'ã', '[UNK]', '[PAD]']
    >>> vocab.encode("mão!")
    [3, 7, 4, 8]
    >>> vocab.decode([3, 7, 4, 0, 5, 7, 4, 9])
    'mão pão'
    """

    def __init__(
        self,
        tokens: Sequence[str],
        pad_token: str = PAD_TOKEN,
        unk_token: str = UNK_TOKEN,
        word_delimiter: str = WORD_DELIMITER,
    ) -> None:
        self.tokens = list(tokens)
        self._ids = {token: i for i, token in enumerate(self.tokens)}
        if len(self._ids) != len(self.tokens):
            duplicates = sorted(t for t, n in Counter(self.tokens).items() if n > 1)
            raise DataError(f"vocabulary tokens must be unique; duplicated: {duplicates}")
        for name, token in (("pad_token", pad_token), ("unk_token", unk_token), ("word_delimiter", word_delimiter)):
            if token not in self._ids:
                raise SettingError(f"{name} {token!r} is not among the {len(self.tokens)} tokens; add it or pass the "
                                 f"token this vocabulary uses (e.g. pad_token='<pad>')")
        self.pad_token, self.unk_token, self.word_delimiter = pad_token, unk_token, word_delimiter
        self.pad_id = self._ids[pad_token]
        self.unk_id = self._ids[unk_token]
        self.word_delimiter_id = self._ids[word_delimiter]

    def __len__(self) -> int:
        return len(self.tokens)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} tokens, pad_id={self.pad_id}, unk_id={self.unk_id})"

    @classmethod
    def build(cls, texts: Iterable[str]) -> Vocabulary:
        """The reference vocabulary of already-normalised ``texts``."""
        chars = set(char_counts(texts))
        if WORD_DELIMITER in chars:
            raise DataError(f"the texts contain {WORD_DELIMITER!r}, the word delimiter token; add it to the "
                             f"normaliser's chars_to_ignore")
        # a single-word corpus has no space; "|" still gets the id a space would have (0)
        chars.add(" ")
        tokens = [WORD_DELIMITER if c == " " else c for c in sorted(chars)]
        return cls(tokens + [UNK_TOKEN, PAD_TOKEN])

    def encode(self, text: str) -> list[int]:
        """Token ids of a normalised text; spaces become the word delimiter, unknown characters ``unk_id``."""
        ids, unk, space = self._ids, self.unk_id, self.word_delimiter_id
        return [space if c == " " else ids.get(c, unk) for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ids that are already CTC-collapsed: drops ``pad_id``, turns the delimiter into spaces."""
        tokens = self.tokens
        text = "".join(" " if i == self.word_delimiter_id else tokens[i] for i in ids if i != self.pad_id)
        return " ".join(text.split())

    def unknown_chars(self, texts: Iterable[str]) -> Counter[str]:
        """How often each character outside the vocabulary occurs in ``texts`` (they would encode as ``[UNK]``)."""
        known = set(self._ids) | {" "}
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(c for c in text if c not in known)
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {"tokens": list(self.tokens), "pad_token": self.pad_token, "unk_token": self.unk_token,
                "word_delimiter": self.word_delimiter}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Vocabulary:
        return cls(**d)

    def save(self, directory: str | Path) -> Path:
        """Write HF's ``vocab.json`` (``{token: id}`` in id order) into ``directory`` and return its path."""
        path = Path(directory) / "vocab.json"
        path.write_text(json.dumps(self._ids, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        """Read an HF ``vocab.json`` (or the one inside a folder); ``<pad>``/``<unk>`` names are recognised."""
        path = Path(path)
        if path.is_dir():
            path = path / "vocab.json"
        if not path.is_file():
            raise MissingPathError(f"no vocabulary at {path}: expected an HF vocab.json (or a folder holding one)")
        mapping: dict[str, int] = json.loads(path.read_text(encoding="utf-8"))
        if sorted(mapping.values()) != list(range(len(mapping))):
            raise DataError(f"{path}: token ids must be 0..{len(mapping) - 1} without gaps")
        return cls.from_tokens(sorted(mapping, key=mapping.__getitem__))

    @classmethod
    def from_tokens(cls, tokens: Sequence[str]) -> Vocabulary:
        """The vocabulary of ``tokens`` in id order; ``<pad>``/``<unk>`` are recognised as the specials' names.

        >>> Vocabulary.from_tokens(["<unk>", "|", "a", "<pad>"])
        Vocabulary(4 tokens, pad_id=3, unk_id=0)
        """
        pad = PAD_TOKEN if PAD_TOKEN in tokens else "<pad>"
        unk = UNK_TOKEN if UNK_TOKEN in tokens else "<unk>"
        return cls(tokens, pad_token=pad, unk_token=unk)


# ---------------------------------------------------------------------------------------------------------
# The alphabet report: what the CTC head will learn to emit, with what is usually a mistake flagged
# ---------------------------------------------------------------------------------------------------------

FLAGS = {"P": "punctuation", "S": "symbol", "D": "digit", "X": "letter of another script", "R": "rare"}


def char_counts(texts: Iterable[str], chunk: int = 65536) -> Counter[str]:
    """How often each character occurs in ``texts``.

    Counted as code points with ``np.bincount`` over chunks of texts: millions of transcripts in a second or
    two, where a ``Counter`` over every character takes ten times as long.

    >>> char_counts(["aba", "c"])
    Counter({'a': 2, 'b': 1, 'c': 1})
    """
    counts = np.zeros(0, dtype=np.int64)
    iterator = iter(texts)
    while batch := list(itertools.islice(iterator, chunk)):
        codes = np.frombuffer("".join(batch).encode("utf-32-le"), dtype=np.uint32)
        found = np.bincount(codes)
        if len(found) > len(counts):
            counts = np.pad(counts, (0, len(found) - len(counts)))
        counts[: len(found)] += found
    return Counter({chr(c): int(counts[c]) for c in np.flatnonzero(counts)})


def script_of(char: str) -> str | None:
    """The script a letter or mark belongs to, from its Unicode name (``"CYRILLIC SMALL LETTER A"`` ->
    ``"CYRILLIC"``); ``None`` for other characters and for combining marks shared by all scripts.

    >>> script_of("ж"), script_of("a"), script_of("क"), script_of("\\u0301"), script_of("1")
    ('CYRILLIC', 'LATIN', 'DEVANAGARI', None, None)
    """
    if unicodedata.category(char)[0] not in "LM":
        return None
    word = unicodedata.name(char, "").split(" ", 1)[0]
    return None if word in ("", "COMBINING", "MODIFIER") else word


@dataclass
class AlphabetReport:
    """The characters of a corpus's normalised transcripts, their counts, and flags for likely mistakes.

    Rare means fewer than ``rare_below`` occurrences, in corpora of at least a thousand times as many
    characters (in smaller ones ``rare_below`` is 0: nothing is flagged rare, and the legend says so).

    ``counts`` is in descending order of count; ``flags[c]`` holds letters of :data:`FLAGS`;
    ``suggested_chars_to_ignore`` is ``data.text.chars_to_ignore`` plus the punctuation flagged, the one kind of
    symbol nobody speaks, less apostrophes, hyphens and middle dots (deleting them joins words). Digits, other symbols (``%``, ``€``) and letters of another script stand for spoken
    words: deleting them would make a label disagree with its audio ("dos 20 anos" -> "dos anos" while the
    audio says "vinte"), so the advice is to spell them out or leave those clips out; ``spoken`` counts the
    transcripts that hold them and ``spoken_example`` shows the first. ``script`` is the majority script.
    """

    counts: list[tuple[str, int]]
    flags: dict[str, str]
    script: str | None
    rare_below: int
    chars_to_ignore: str
    suggested_chars_to_ignore: str
    spoken: int = 0
    spoken_example: str = ""

    @classmethod
    def build(cls, texts: Iterable[str], chars_to_ignore: str = "", rare_below: int = 10) -> AlphabetReport:
        texts = texts if isinstance(texts, list) else list(texts)  # read twice: counts, then the spoken symbols
        counts = char_counts(texts)
        del counts[" "]
        scripts: Counter[str] = Counter()
        for char, n in counts.items():
            if (script := script_of(char)) is not None:
                scripts[script] += n
        majority = scripts.most_common(1)[0][0] if scripts else None
        if sum(counts.values()) < 1000 * rare_below:
            rare_below = 0  # in a corpus this small every symbol is rare: the flag would say nothing
        flags = {}
        for char, n in counts.items():
            category = unicodedata.category(char)[0]
            script = script_of(char)
            flags[char] = "".join(flag for flag, hit in (
                ("P", category == "P"), ("S", category == "S"), ("D", category == "N"),
                ("X", script is not None and script != majority), ("R", n < rare_below)) if hit)
        ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        # apostrophes and hyphens stay out of the advice: deleting them joins words ("primeiro-ministro")
        added = [char for char, _ in ordered if "P" in flags[char] and char not in chars_to_ignore
                 and char not in WORD_INTERNAL_PUNCTUATION]
        spoken_chars = {char for char, flag in flags.items() if set(flag) & set("SDX") and "P" not in flag}
        holds = re.compile(f"[{re.escape(''.join(sorted(spoken_chars)))}]").search if spoken_chars else None
        holding = [text for text in texts if holds(text)] if holds is not None else []
        return cls(ordered, flags, majority, rare_below, chars_to_ignore, chars_to_ignore + "".join(added),
                   len(holding), holding[0] if holding else "")

    @property
    def flagged(self) -> list[str]:
        return [char for char, _ in self.counts if self.flags[char]]

    def table(self, columns: int = 4) -> str:
        """The report as a few lines of text: symbols in columns, then the legend and the advice."""
        cells = [f"{_shown(char):>3} {count:>10,} {self.flags[char]:<3}" for char, count in self.counts]
        lines = [f"alphabet: {len(self.counts)} symbols besides the space (majority script {self.script}); "
                 f"{len(self.flagged)} flagged"]
        lines += ["  " + " | ".join(cells[i: i + columns]) for i in range(0, len(cells), columns)]
        if self.flagged:
            legend = [f"{flag} {FLAGS[flag]}" for flag in "PSD"]
            legend += [f"R {FLAGS['R']} (fewer than {self.rare_below})"] if self.rare_below else []
            legend += [f"X {FLAGS['X']} than {self.script}"]
            # a small corpus has no R: its legend says why rather than "fewer than 0"
            none_rare = "" if self.rare_below else "; none is flagged rare: too few characters to tell"
            lines.append(f"  flags: {', '.join(legend)}{none_rare}")
            if self.suggested_chars_to_ignore != self.chars_to_ignore:
                lines.append("  punctuation is not spoken; to remove the flagged punctuation, set in the config:")
                lines.append(f"    data.text.chars_to_ignore: {json.dumps(self.suggested_chars_to_ignore, ensure_ascii=False)}")
            if any("P" in self.flags[c] for c in self.flagged):
                lines.append("  or, for any Unicode punctuation: data.text.strip_punctuation: true")
            if self.spoken:
                lines.append(f"  digits, symbols and letters of another script are spoken as words: {self.spoken} "
                             f"transcripts hold them (e.g. {json.dumps(self.spoken_example, ensure_ascii=False)}); "
                             f"spell them out as the audio says them, or leave those clips out of the data. Do not "
                             f"put them in data.text.chars_to_ignore: the labels would then disagree with the audio")
        return "\n".join(lines)


def _shown(char: str) -> str:
    """A character as the table shows it: combining marks on a dotted circle, invisible ones escaped."""
    if unicodedata.category(char).startswith("M"):
        return "◌" + char
    return char if char.isprintable() else repr(char)[1:-1]
