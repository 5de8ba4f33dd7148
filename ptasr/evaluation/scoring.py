"""Word and character error rates of a corpus: the one implementation, for validation and ``ptasr evaluate``.

A corpus rate is never an average of per-utterance (or per-batch) rates: edit counts (S substitutions,
D deletions, I insertions, H hits) are summed over every utterance and divided once,
WER = (S + D + I) / (S + D + H), so long utterances weigh by their words, as jiwer over the whole set does.
Counts come from jiwer; they can be summed over batches and DDP ranks.

>>> scored = [score_utterance("1", "a b", "a  c"), score_utterance("2", "c d e f", "c d e f")]
>>> scored[0].prediction, scored[0].word_counts
('a c', (1, 0, 0, 1))
>>> error_rates(scored)
{'wer': 0.166667, 'cer': 0.1, 'utterances': 2, 'words': 6}
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import jiwer

# (substitutions, deletions, insertions, hits), in this order everywhere.
Counts = tuple[int, int, int, int]
_COUNT_NAMES = ("substitutions", "deletions", "insertions", "hits")
_OPS = {"equal": "e", "substitute": "s", "delete": "d", "insert": "i"}


def edit_counts(reference: str | Sequence[str], prediction: str | Sequence[str]) -> tuple[Counts, Counts]:
    """Word and character edit counts (S, D, I, H) of one utterance, or summed over a list of them.

    >>> edit_counts("a b c", "a c d")
    ((2, 0, 0, 1), (2, 0, 0, 3))
    >>> edit_counts(["a b", "c"], ["a b", "d"])
    ((1, 0, 0, 2), (1, 0, 0, 3))
    """
    words = jiwer.process_words(reference, prediction)
    chars = jiwer.process_characters(reference, prediction)
    return tuple(getattr(words, k) for k in _COUNT_NAMES), tuple(getattr(chars, k) for k in _COUNT_NAMES)


def error_rate(counts: Sequence[float]) -> float:
    """(S + D + I) / (S + D + H) of one (S, D, I, H) count vector; 0 when there is no reference.

    >>> error_rate([2, 0, 1, 1])
    1.0
    >>> error_rate([0, 0, 0, 0])
    0.0
    """
    substitutions, deletions, insertions, hits = counts
    return (substitutions + deletions + insertions) / max(substitutions + deletions + hits, 1)


def collapse_whitespace(text: str) -> str:
    """One space between words, none at the ends: a doubled space in a prediction is not a character error.

    >>> collapse_whitespace("  a  b ")
    'a b'
    """
    return " ".join(text.split())


@dataclass
class Scored:
    """One scored utterance: its texts, word and character edit counts (S, D, I, H), and metadata groups."""

    id: str
    reference: str
    prediction: str
    word_counts: Counts
    char_counts: Counts
    groups: dict[str, str] = field(default_factory=dict)
    # measure name -> confidence of each word of ``prediction``, in order (ptasr.decoding.confidence)
    confidences: dict[str, tuple[float, ...]] = field(default_factory=dict)

    @property
    def word_errors(self) -> int:
        return sum(self.word_counts[:3])

    @property
    def reference_words(self) -> int:
        substitutions, deletions, _, hits = self.word_counts
        return substitutions + deletions + hits


def score_utterance(id: str, reference: str, prediction: str, groups: dict[str, str] | None = None) -> Scored:
    """Edit counts of one utterance; the prediction's whitespace is collapsed first.

    >>> score_utterance("x", "o gato", "o  pato").word_errors
    1
    """
    prediction = collapse_whitespace(prediction)
    words, chars = edit_counts(reference, prediction)
    return Scored(id, reference, prediction, words, chars, groups or {})


def summed_counts(scored: Sequence[Scored]) -> tuple[Counts, Counts]:
    """Word and character counts summed over utterances.

    >>> summed_counts([score_utterance("1", "a b", "a c"), score_utterance("2", "c", "c")])
    ((1, 0, 0, 2), (1, 0, 0, 3))
    """
    words = tuple(sum(column) for column in zip(*(s.word_counts for s in scored))) or (0, 0, 0, 0)
    chars = tuple(sum(column) for column in zip(*(s.char_counts for s in scored))) or (0, 0, 0, 0)
    return words, chars  # type: ignore[return-value]


def error_rates(scored: Sequence[Scored]) -> dict[str, float | int]:
    """Corpus WER and CER (rounded to 6 digits), utterance and reference word counts.

    >>> error_rates([])
    {'wer': 0.0, 'cer': 0.0, 'utterances': 0, 'words': 0}
    """
    words, chars = summed_counts(scored)
    substitutions, deletions, _, hits = words
    return {"wer": round(error_rate(words), 6), "cer": round(error_rate(chars), 6), "utterances": len(scored),
            "words": substitutions + deletions + hits}


def breakdown(scored: Sequence[Scored], key: str) -> dict[str, dict[str, float | int]]:
    """Error rates per value of one metadata group (age, gender, accent); blank values read "(unknown)".

    Values with more utterances come first.

    >>> rows = [score_utterance("1", "a", "b", {"age": "teens"}), score_utterance("2", "a", "a", {})]
    >>> {value: rates["wer"] for value, rates in breakdown(rows, "age").items()}
    {'(unknown)': 0.0, 'teens': 1.0}
    """
    by_value: dict[str, list[Scored]] = {}
    for item in scored:
        by_value.setdefault(item.groups.get(key) or "(unknown)", []).append(item)
    ordered = sorted(by_value.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    return {value: error_rates(items) for value, items in ordered}


def _severity(item: Scored) -> tuple[int, float]:
    return item.word_errors, item.word_errors / max(item.reference_words, 1)


def worst(scored: Sequence[Scored], count: int) -> list[Scored]:
    """The ``count`` utterances with the most word errors (ties: the higher WER first), worst first.

    >>> rows = [score_utterance("1", "a b c d", "a"), score_utterance("2", "a", "b c d"),
    ...         score_utterance("3", "a b", "a b")]
    >>> [s.id for s in worst(rows, 2)]
    ['2', '1']
    """
    return heapq.nlargest(count, scored, key=_severity)


# --- which predicted words are wrong, and how well a confidence finds them ------------------------------------


def aligned_words(reference: str, prediction: str) -> list[tuple[str, str, str]]:
    """Reference and prediction aligned word by word: (op, reference word, predicted word), from jiwer's chunks.

    op is ``e`` (equal), ``s`` (substitution), ``d`` (deletion: no predicted word) or ``i`` (insertion: no
    reference word).

    >>> aligned_words("a b c", "a x c d")
    [('e', 'a', 'a'), ('s', 'b', 'x'), ('e', 'c', 'c'), ('i', '', 'd')]
    """
    if not reference.split():  # jiwer refuses an empty reference
        return [("i", "", word) for word in prediction.split()]
    result = jiwer.process_words(reference, prediction)
    ref, hyp = result.references[0], result.hypotheses[0]
    pairs = []
    for chunk in result.alignments[0]:
        op = _OPS[chunk.type]
        ref_words = ref[chunk.ref_start_idx:chunk.ref_end_idx]
        hyp_words = hyp[chunk.hyp_start_idx:chunk.hyp_end_idx]
        length = max(len(ref_words), len(hyp_words))  # equal and substitute chunks have the same on both sides
        pairs += [(op, ref_words[k] if ref_words else "", hyp_words[k] if hyp_words else "") for k in range(length)]
    return pairs


def wrong_words(reference: str, prediction: str) -> list[bool]:
    """For each word of ``prediction``: whether the alignment makes it a substitution or an insertion.

    >>> wrong_words("a b c", "a x c d")
    [False, True, False, True]
    """
    return [op in ("s", "i") for op, _, _ in aligned_words(reference, prediction) if op != "d"]


def auroc(confidences: Sequence[float], wrong: Sequence[bool]) -> float | None:
    """How well low confidence finds wrong words: the chance that a random wrong word has a lower confidence
    than a random right one (ties count half; 1 finds them all, 0.5 is chance). None without both kinds.

    Ranks, not a threshold sweep, so it is exact: the Mann-Whitney U statistic over (wrong x right) pairs.

    >>> auroc([0.1, 0.2, 0.8, 0.9], [True, True, False, False]), auroc([0.5, 0.5], [True, False])
    (1.0, 0.5)
    """
    wrong_count = sum(wrong)
    right_count = len(wrong) - wrong_count
    if not wrong_count or not right_count:
        return None
    order = sorted(range(len(confidences)), key=lambda i: -confidences[i])  # most confident first
    rank_sum, position = 0.0, 0
    while position < len(order):  # a run of equal confidences shares its mean rank
        end = position
        while end < len(order) and confidences[order[end]] == confidences[order[position]]:
            end += 1
        mean_rank = (position + end + 1) / 2  # ranks position+1 .. end
        rank_sum += mean_rank * sum(wrong[i] for i in order[position:end])
        position = end
    # wrong words ranked among the least confident: U counts (wrong, right) pairs with the wrong one lower
    return (rank_sum - wrong_count * (wrong_count + 1) / 2) / (wrong_count * right_count)


def confidence_auroc(scored: Sequence[Scored], measure: str) -> float | None:
    """AUROC of finding the wrong predicted words of ``scored`` by the confidences of ``measure`` (rounded to 4
    digits), over the utterances that have them; None without both right and wrong words."""
    rows = [s for s in scored if measure in s.confidences]
    wrong = [flag for s in rows for flag in wrong_words(s.reference, s.prediction)]
    value = auroc([c for s in rows for c in s.confidences[measure]], wrong)
    return None if value is None else round(value, 4)


def confidence_results(scored: Sequence[Scored], measure: str, baseline: str) -> dict[str, Any] | None:
    """How well the confidences of ``measure`` and of ``baseline`` find the wrong predicted words of ``scored``
    (the results' ``confidence``); None where no utterance has any."""
    rows = [s for s in scored if measure in s.confidences]
    if not rows:
        return None
    wrong = [flag for s in rows for flag in wrong_words(s.reference, s.prediction)]
    return {"measure": measure, "auroc": confidence_auroc(rows, measure), "baseline": baseline,
            "baseline_auroc": confidence_auroc(rows, baseline), "words": len(wrong), "wrong_words": sum(wrong),
            "utterances_without": len(scored) - len(rows)}
