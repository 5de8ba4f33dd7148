"""Text side of the data: the transcript normaliser and the CTC character vocabulary.

Both follow the Hugging Face reference (``run_speech_recognition_ctc.py`` as used for
``lgris/wav2vec2-xls-r-pt-cv7``) so that a vocabulary built here is the vocab.json that script would write,
and both serialise to plain dicts that travel inside checkpoints and exports.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ptasr.errors import DataError, MissingPathError, SettingError

# The robust-speech-event README's list (the reference model card's script uses it verbatim).
DEFAULT_CHARS_TO_IGNORE = ',?.!-;:"“%‘”�—’…–'

WORD_DELIMITER = "|"
UNK_TOKEN = "[UNK]"
PAD_TOKEN = "[PAD]"


class TextNormalizer:
    """Turns a raw transcript into the text the model learns to emit.

    Steps, in order: Unicode NFC (so "ã" typed as "a" + combining tilde is one character), remove every
    character of ``chars_to_ignore`` (replaced by nothing, as in the reference: "guarda-chuva" ->
    "guardachuva"), lower-case, optionally strip accents, collapse runs of whitespace and trim.

    >>> TextNormalizer()('  "Olá,  João!" — disse a mãe… ')
    'olá joão disse a mãe'
    >>> TextNormalizer(strip_accents=True)("Ação à vista")
    'acao a vista'
    """

    def __init__(
        self, chars_to_ignore: str = DEFAULT_CHARS_TO_IGNORE, lowercase: bool = True, strip_accents: bool = False
    ) -> None:
        self.chars_to_ignore = chars_to_ignore
        self.lowercase = lowercase
        self.strip_accents = strip_accents
        # a character class, not alternation: one pass over the text whatever the list length
        self._ignore = re.compile(f"[{re.escape(chars_to_ignore)}]") if chars_to_ignore else None

    def __call__(self, text: str) -> str:
        text = unicodedata.normalize("NFC", text)
        if self._ignore is not None:
            text = self._ignore.sub("", text)
        if self.lowercase:
            text = text.lower()
        if self.strip_accents:
            text = _strip_accents(text)
        return " ".join(text.split())

    def to_dict(self) -> dict[str, Any]:
        return {"chars_to_ignore": self.chars_to_ignore, "lowercase": self.lowercase,
                "strip_accents": self.strip_accents}

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
                f"strip_accents={self.strip_accents})")


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
        chars: set[str] = set()
        for text in texts:
            chars.update(text)
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
        tokens = sorted(mapping, key=mapping.__getitem__)
        pad = PAD_TOKEN if PAD_TOKEN in mapping else "<pad>"
        unk = UNK_TOKEN if UNK_TOKEN in mapping else "<unk>"
        return cls(tokens, pad_token=pad, unk_token=unk)
