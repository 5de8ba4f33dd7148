"""Build word n-gram language models: interpolated modified Kneser-Ney, written as an ARPA file.

This is what KenLM's ``lmplz`` estimates (Heafield et al. 2013, following Chen & Goodman 1998), in numpy,
for the corpus sizes a fine-tuning run has (transcripts, a few million words). No PyPI package builds
modified Kneser-Ney into ARPA: the ``kenlm`` module only queries, and the small ARPA builders there use one
discount per order.

Conventions, as ``lmplz`` has them:

- Each sentence is ``<s> w1 ... wk </s>`` with a single ``<s>``: n-grams near the start are shorter.
- Adjusted counts ``a``: the raw count for the highest order and for n-grams that start with ``<s>`` (nothing
  can precede them); otherwise the number of distinct words seen before the n-gram (its continuation count).
- Three discounts per order from the counts of adjusted counts t1..t4: ``Y = t1 / (t1 + 2 t2)``,
  ``D_k = k - (k + 1) Y t_{k+1} / t_k`` for k = 1, 2 and 3+ (``D(a)`` below).
- Interpolation: ``p(w | h) = (a(hw) - D(a(hw))) / sum_x a(hx) + gamma(h) p(w | h')``, with ``h'`` the context
  without its first word and ``gamma(h) = (D1 N1(h) + D2 N2(h) + D3+ N3+(h)) / sum_x a(hx)`` (N_k(h): words seen
  after ``h`` with adjusted count k, 3 or more for N3+). Unigrams interpolate with the uniform distribution
  over the vocabulary (``</s>`` and ``<unk>`` included, ``<s>`` left out: it is never predicted).
- The ARPA file stores ``log10 p`` of every n-gram seen and ``log10 gamma(h)`` as the back-off weight of each
  context ``h``: for an interpolated model the back-off weight is the interpolation weight. ``<s>`` has
  ``log10 p = 0`` (lmplz's choice; KenLM never asks for it) and ``<unk>`` only the uniform share.

Notation: V vocabulary size, G n-grams of one order.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ptasr.errors import DataError, MissingPathError, SettingError

log = logging.getLogger(__name__)

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
BOS_ID, EOS_ID, UNK_ID = 0, 1, 2
# lmplz --discount_fallback: used for an order whose counts of counts give no valid discounts (tiny corpora)
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)


@dataclass
class NGramOrder:
    """The n-grams of one order n as rows of a table, sorted by (prefix row, last word).

    Attributes:
        prefix: (G,) row of the first n-1 words in the table of order n-1 (-1 for unigrams).
        word: (G,) id of the last word.
        suffix: (G,) row of the last n-1 words in the table of order n-1 (-1 for unigrams).
        count: (G,) raw count.
        adjusted: (G,) adjusted count (raw or continuation count, see the module docstring).
        discounts: D1, D2, D3+ of this order.
        log10_prob: (G,) log10 p(word | prefix).
        log10_backoff: (G,) log10 gamma of the n-gram as a context; NaN where it is never a context.
    """

    prefix: np.ndarray
    word: np.ndarray
    suffix: np.ndarray
    count: np.ndarray
    adjusted: np.ndarray | None = None
    discounts: tuple[float, float, float] = FALLBACK_DISCOUNTS
    log10_prob: np.ndarray | None = None
    log10_backoff: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.word)


@dataclass
class NGramModel:
    """An estimated model: the vocabulary (ids 0, 1, 2 are ``<s>``, ``</s>``, ``<unk>``) and one table per order."""

    vocab: list[str]
    orders: list[NGramOrder]

    @property
    def order(self) -> int:
        return len(self.orders)

    def words(self) -> list[str]:
        """The words of the vocabulary, sentence markers and ``<unk>`` left out (the ``unigrams.txt`` list)."""
        return self.vocab[3:]

    def write_arpa(self, path: str | Path) -> Path:
        """Write the model as an ARPA text file (what KenLM, flashlight and pyctcdecode read)."""
        path = Path(path)
        with open(path, "w", encoding="utf-8") as f:
            f.write("\\data\\\n")
            f.writelines(f"ngram {n}={len(level)}\n" for n, level in enumerate(self.orders, start=1))
            texts = list(self.vocab)
            for n, level in enumerate(self.orders, start=1):
                if n > 1:  # each n-gram's words: its prefix row's words and its last word
                    texts = [f"{texts[p]} {self.vocab[w]}" for p, w in zip(level.prefix.tolist(), level.word.tolist())]
                f.write(f"\n\\{n}-grams:\n")
                f.write(_arpa_lines(level, texts))
            f.write("\n\\end\\\n")
        return path

    def write_unigrams(self, path: str | Path) -> Path:
        """``unigrams.txt``: one word per line, the list pyctcdecode and ``ptasr.decoding.lm`` read beside a binary LM."""
        path = Path(path)
        path.write_text("".join(f"{word}\n" for word in self.words()), encoding="utf-8")
        return path


def _arpa_lines(level: NGramOrder, texts: list[str]) -> str:
    probs = map("{:.7g}".format, level.log10_prob.tolist())
    if level.log10_backoff is None:  # the highest order carries no back-off weights
        return "".join(map("{}\t{}\n".format, probs, texts))
    backoffs = ("" if math.isnan(b) else f"\t{b:.7g}" for b in level.log10_backoff.tolist())
    return "".join(map("{}\t{}{}\n".format, probs, texts, backoffs))


# --- counting -----------------------------------------------------------------------------------------------


def encode(sentences: Iterable[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Word ids of whitespace-split sentences, each wrapped in ``<s> ... </s>``.

    Returns the vocabulary (``<s>``, ``</s>``, ``<unk>``, then words in order of appearance), the id stream
    (L,) and the sentence index of every stream position (L,). Empty sentences are skipped.

    >>> vocab, stream, sentence = encode(["a b", "", "b"])
    >>> vocab, stream.tolist(), sentence.tolist()
    (['<s>', '</s>', '<unk>', 'a', 'b'], [0, 3, 4, 1, 0, 4, 1], [0, 0, 0, 0, 1, 1, 1])
    """
    ids = {BOS: BOS_ID, EOS: EOS_ID, UNK: UNK_ID}
    stream: list[int] = []
    lengths: list[int] = []
    for sentence in sentences:
        # markers typed in the text are not words; everything else is, "<unk>" included
        words = [w for w in sentence.split() if w != BOS and w != EOS]
        if not words:
            continue
        stream.append(BOS_ID)
        stream += [ids.setdefault(w, len(ids)) for w in words]
        stream.append(EOS_ID)
        lengths.append(len(words) + 2)
    sentence_of = np.repeat(np.arange(len(lengths)), lengths)
    return list(ids), np.asarray(stream, dtype=np.int64), sentence_of


def count(stream: np.ndarray, sentence_of: np.ndarray, vocab_size: int, order: int) -> list[NGramOrder]:
    """Raw counts of every n-gram up to ``order`` that lies inside one sentence.

    Order 1 has one row per vocabulary id. Order n numbers each n-gram by (row of its first n-1 words in the
    table of order n-1, last word), one int64, so finding an n-gram's prefix or suffix is integer arithmetic
    and ``np.unique`` does the counting.
    """
    length = len(stream)
    unigrams = np.arange(vocab_size)
    tables = [NGramOrder(np.full(vocab_size, -1), unigrams, np.full(vocab_size, -1),
                         np.bincount(stream, minlength=vocab_size))]
    rows = stream  # (L,) row, in the table of the previous order, of the n-gram starting at each position
    for n in range(2, order + 1):
        starts = np.arange(length - n + 1)
        starts = starts[sentence_of[starts] == sentence_of[starts + n - 1]]  # windows inside one sentence
        if len(starts) == 0:
            break
        keys = rows[starts] * vocab_size + stream[starts + n - 1]
        unique, first, inverse, counts = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
        first_start = starts[first]
        # the last n-1 words of the n-gram at `start` are the (n-1)-gram at start + 1
        tables.append(NGramOrder(unique // vocab_size, unique % vocab_size, rows[first_start + 1], counts))
        next_rows = np.full(length, -1, dtype=np.int64)
        next_rows[starts] = inverse
        rows = next_rows
    return tables


# --- estimation ---------------------------------------------------------------------------------------------


def adjust_counts(tables: list[NGramOrder]) -> None:
    """Fill ``adjusted``: raw counts at the highest order and for n-grams opening with ``<s>``, else the
    number of distinct words seen before the n-gram (the rows of the next order whose suffix it is)."""
    first_word = tables[0].word
    for n, level in enumerate(tables):
        if n > 0:
            first_word = first_word[level.prefix]
        if n == len(tables) - 1:
            level.adjusted = level.count.copy()
            continue
        continuation = np.bincount(tables[n + 1].suffix, minlength=len(level))
        level.adjusted = np.where(first_word == BOS_ID, level.count, continuation)


def discounts(adjusted: np.ndarray) -> tuple[float, float, float] | None:
    """D1, D2, D3+ from the counts of adjusted counts 1..4; None when they are not all in (0, k).

    >>> discounts(np.array([1] * 8 + [2] * 4 + [3] * 2 + [4]))  # t = 8, 4, 2, 1 -> Y = 1/2
    (0.5, 1.25, 2.0)
    """
    t = [int(np.count_nonzero(adjusted == k)) for k in (1, 2, 3, 4)]
    if 0 in t:
        return None
    y = t[0] / (t[0] + 2 * t[1])
    result = tuple(k - (k + 1) * y * t[k] / t[k - 1] for k in (1, 2, 3))
    return result if all(0 < d < k for d, k in zip(result, (1, 2, 3))) else None  # type: ignore[return-value]


def _discount_of(adjusted: np.ndarray, d: tuple[float, float, float]) -> np.ndarray:
    """D(a) per n-gram: 0 for a = 0, D1, D2, else D3+."""
    return np.select([adjusted == 0, adjusted == 1, adjusted == 2], [0.0, d[0], d[1]], d[2])


def _gamma(context: np.ndarray, adjusted: np.ndarray, d: tuple[float, float, float], size: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """Per context row: the total adjusted count and the interpolation weight gamma (0 where the total is 0)."""
    total = np.bincount(context, weights=adjusted, minlength=size)
    mass = sum(dk * np.bincount(context[mask], minlength=size)
               for dk, mask in zip(d, (adjusted == 1, adjusted == 2, adjusted >= 3)))
    return total, np.divide(mass, total, out=np.zeros(size), where=total > 0)


def estimate(tables: list[NGramOrder], fallback: tuple[float, float, float] = FALLBACK_DISCOUNTS) -> None:
    """Fill discounts, probabilities and back-off weights (interpolated modified Kneser-Ney)."""
    adjust_counts(tables)
    unigrams = tables[0]
    predicted = unigrams.word != BOS_ID  # <s> is never predicted
    for n, level in enumerate(tables, start=1):
        counted = level.adjusted[predicted] if n == 1 else level.adjusted
        found = discounts(counted)
        if found is None:
            log.warning("order %d: too few n-grams for Kneser-Ney discounts (counts of counts 1-4: %s); "
                        "using lmplz's fallback %s", n, [int(np.count_nonzero(counted == k)) for k in (1, 2, 3, 4)],
                        fallback)
        level.discounts = found or fallback
    # unigrams: interpolated with the uniform distribution over the predicted words
    a = np.where(predicted, unigrams.adjusted, 0).astype(np.float64)
    d = unigrams.discounts
    total, gamma = _gamma(np.zeros(len(a), dtype=np.int64), a, d, 1)
    prob = (a - _discount_of(a, d)) / total[0] + gamma[0] / np.count_nonzero(predicted)
    prob[~predicted] = 1.0  # log10 p(<s>) = 0, as lmplz writes it
    unigrams.log10_prob = np.log10(prob)
    for lower, level in zip(tables, tables[1:]):
        a = level.adjusted.astype(np.float64)
        total, gamma = _gamma(level.prefix, a, level.discounts, len(lower))
        lower_prob = 10.0 ** lower.log10_prob[level.suffix]
        prob = (a - _discount_of(a, level.discounts)) / total[level.prefix] + gamma[level.prefix] * lower_prob
        level.log10_prob = np.log10(prob)
        lower.log10_backoff = np.where(total > 0, np.log10(np.maximum(gamma, 1e-300)), np.nan)


def build(sentences: Iterable[str], order: int = 4) -> NGramModel:
    """Estimate an interpolated modified Kneser-Ney model of ``order`` from whitespace-tokenised sentences."""
    if order < 1:
        raise SettingError(f"--order must be at least 1, got {order}")
    vocab, stream, sentence_of = encode(sentences)
    if len(stream) == 0:
        raise DataError("no words to build a language model from: every sentence is empty")
    tables = count(stream, sentence_of, len(vocab), order)
    estimate(tables)
    return NGramModel(vocab, tables)


# --- from text files ----------------------------------------------------------------------------------------

TEXT_COLUMNS = ("sentence", "text", "transcript")


def read_sentences(path: str | Path) -> list[str]:
    """The sentences of a text file (one per line) or of a manifest's text column.

    A ``.tsv`` (Common Voice split; read without quoting, as Common Voice needs), ``.csv`` or ``.jsonl``
    manifest gives its ``sentence``, ``text`` or ``transcript`` column; any other file is plain text.
    """
    import csv
    import json

    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingPathError(f"no text file or manifest at {path}")
    suffix = path.suffix.lower()
    try:
        with open(path, encoding="utf-8", newline="") as f:
            if suffix == ".jsonl":
                rows = [json.loads(line) for line in f if line.strip()]
            elif suffix in (".tsv", ".csv"):
                rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if suffix == ".tsv"
                            else csv.DictReader(f))
            else:
                return f.read().splitlines()
    except UnicodeDecodeError as error:  # one line naming the line and the fix, as training and evaluate say it
        from ptasr.data.table import not_utf8

        raise not_utf8(path) from error
    column = next((c for c in TEXT_COLUMNS if rows and c in rows[0]), None)
    if column is None:
        found = sorted(rows[0]) if rows else "no rows"
        raise DataError(f"{path} has no text column ({', '.join(TEXT_COLUMNS)}); its columns: {found}")
    return [str(row[column] or "") for row in rows]


@dataclass
class BuildReport:
    """What went into a built LM: sentences read, dropped by ``--exclude``, kept; words; n-grams per order."""

    sentences: int
    excluded: int
    words: int
    vocabulary: int
    ngrams: list[int]
    discounts: list[tuple[float, float, float]]


def build_from_files(
    texts: Iterable[str | Path], output: str | Path, order: int = 4, normalizer: Callable[[str], str] = str,
    exclude: Iterable[str | Path] = (),
) -> BuildReport:
    """Normalise the sentences of ``texts``, drop those of ``exclude``, write ``output`` (ARPA) and
    ``unigrams.txt`` beside it.

    ``normalizer`` is the model's transcript normaliser, so the LM's words are the words the model spells.
    Excluded sentences are compared after normalisation (Common Voice repeats sentences across splits).
    """
    sentences = [normalizer(s) for path in texts for s in read_sentences(path)]
    held_out = {normalizer(s) for path in exclude for s in read_sentences(path)} - {""}
    kept = [s for s in sentences if s and s not in held_out]
    model = build(kept, order)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    model.write_arpa(output)
    model.write_unigrams(output.parent / "unigrams.txt")
    return BuildReport(sentences=len(sentences), excluded=sum(1 for s in sentences if s and s in held_out),
                       words=sum(len(s.split()) for s in kept), vocabulary=len(model.words()),
                       ngrams=[len(level) for level in model.orders],
                       discounts=[level.discounts for level in model.orders])
