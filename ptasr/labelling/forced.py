"""CTC forced alignment of a long transcript, sentence by sentence, with the sentences the audio lacks and the
audio the text lacks found by their scores.

Why sentence by sentence in a search window. The log-probabilities of a whole hour are small (T = 180k frames x
V), but a trellis over an hour of text is not (T x 2L states: 180k x 100k). So each sentence is aligned alone,
inside a window of frames that starts where the previous accepted sentence ended and reaches as far as the
sentence could plausibly take plus ``search_frames`` (audio the text does not cover can sit before it). Memory and
time grow with the recording's length, not its square; one window costs ``window x (2 L + 5)`` cells.

Each sentence is tried in a near window first (its plausible length plus a tenth of the search) and only when it
is rejected there in the whole window, so that a sentence the audio lacks meets the speech right after the previous
one, where it does not fit, before it could land on a look-alike far ahead and carry the search past its
neighbours.

How a sentence finds its place in the window: its tokens are framed by a wildcard, the star token of torchaudio's
"forced alignment for multilingual data" tutorial, whose log-probability at each frame is that of the frame's best
token (the free best path). The target ``[*, c_1, ..., c_L, *]`` is aligned by
``torchaudio.functional.forced_align`` (one Viterbi, CPU or CUDA); the frames before and after the sentence go to
the wildcard at no cost relative to the free path, so the sentence lands where its forced path loses least
against the free one, and its span is its first to its last token.

How a sentence is judged: its score is the mean, over the frames of its span, of the forced path's log-probability
minus the free best path's (0 when the model's own best reading is the sentence; a few nats per frame lower when
the sentence is forced onto other speech or silence). A sentence under ``min_score`` is rejected, and nothing moves:
the next sentence searches from the same place, in a window widened by the rejected sentence's own plausible
length (its audio may be there, unrecognised). Audio between accepted sentences where the free path reads words
(:func:`uncovered_audio`) is what the text does not cover.

Notation: T frames, V vocabulary size (blank included), L tokens of one sentence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torchaudio.functional as AF


@dataclass(frozen=True)
class SentenceAlignment:
    """Where one sentence lies (frames ``[first, end)`` of its first to its last token) and how well it fits.

    ``first``/``end``/``score`` are those of its best placement in its window, also when it is rejected (then
    they say where it was tried); ``accepted`` is False with a ``reason`` when it is left out.
    """

    index: int
    first: int
    end: int
    score: float
    accepted: bool
    reason: str = ""


# What a wildcard frame costs against the free best path: a hair, so that a tie goes to the sentence (a token
# held over several frames keeps all of them, and its span starts at its first frame, not its last).
WILDCARD_PENALTY = 1e-3
# The near window reaches this share of the search beyond a sentence's plausible length (3 s of a 30 s search).
NEAR_SHARE = 10
# A log-probability no path takes (finite: the Viterbi adds them up).
NEVER = -1e4


def with_wildcard(log_probs: torch.Tensor) -> torch.Tensor:
    """(T, V) log-probabilities -> (T, V + 1): the last column is each frame's best log-probability, less
    :data:`WILDCARD_PENALTY`.

    >>> with_wildcard(torch.tensor([[-0.1, -2.3], [-1.6, -0.2]]))
    tensor([[-0.1000, -2.3000, -0.1010],
            [-1.6000, -0.2000, -0.2010]])
    """
    return torch.cat([log_probs, log_probs.max(dim=-1, keepdim=True).values - WILDCARD_PENALTY], dim=-1)


def framed(window: torch.Tensor) -> torch.Tensor:
    """A window (W, V + 1) with one frame before and after it where only the wildcard can be (log-prob 0): the
    wildcard frame that each end of the target needs sits there, not on the sentence's first or last frame.
    """
    edge = torch.full((1, window.shape[1]), NEVER)
    edge[0, -1] = 0.0
    return torch.cat([edge, window, edge])  # (W + 2, V + 1)


def frames_needed(tokens: Sequence[int]) -> int:
    """Fewest frames a CTC path of ``tokens`` takes: one per token, one more (a blank) between two equal tokens.

    >>> frames_needed([1, 2, 2, 3])
    5
    """
    return len(tokens) + sum(a == b for a, b in zip(tokens, tokens[1:]))


def place(scored: torch.Tensor, best: torch.Tensor, tokens: Sequence[int], blank: int) -> tuple[int, int, float]:
    """The best placement of ``tokens`` in a window of frames: ``(first, end, score)`` relative to the window.

    Args:
        scored: (W, V + 1) the window's log-probabilities with the wildcard column (:func:`with_wildcard`).
        best: (W,) the free best path's log-probability at each frame.
        tokens: the sentence's token ids, at least one, none of them ``blank``; the window has at least
            ``frames_needed(tokens)`` frames.
        blank: the CTC blank id.

    >>> log_probs = torch.full((8, 3), -5.0)       # blank 0; token 1 spoken at frames 3-4
    >>> log_probs[:, 0] = -0.01; log_probs[3:5, 0] = -5.0; log_probs[3:5, 1] = -0.01
    >>> first, end, score = place(with_wildcard(log_probs), log_probs.max(-1).values, [1], blank=0)
    >>> first, end, round(score, 3)
    (3, 5, 0.0)
    """
    wildcard = scored.shape[-1] - 1
    targets = torch.tensor([[wildcard, *tokens, wildcard]], dtype=torch.int32)
    labels, frame_scores = AF.forced_align(framed(scored)[None], targets, blank=blank)
    labels, frame_scores = labels[0, 1:-1], frame_scores[0, 1:-1]  # (W,), (W,): the edge frames dropped
    inside = ((labels != wildcard) & (labels != blank)).nonzero().flatten()
    first, end = int(inside[0]), int(inside[-1]) + 1
    score = float((frame_scores[first:end] - best[first:end]).mean())
    return first, end, score


def align_sentences(log_probs: torch.Tensor, sentences: Sequence[Sequence[int]], blank: int, min_score: float,
                    search_frames: int) -> list[SentenceAlignment]:
    """Align each sentence's tokens in turn (see the module docstring); one result per sentence, in order.

    Args:
        log_probs: (T, V) float32 log-probabilities of the whole recording.
        sentences: each sentence's token ids (no blank); an empty one is rejected.
        blank: the CTC blank id.
        min_score: the lowest score (mean log-probability per frame against the free best path) accepted.
        search_frames: how far beyond a sentence's plausible length its window reaches.

    >>> log_probs = torch.full((12, 3), -6.0)       # blank 0; tokens 1, 2 spoken at frames 2 and 8
    >>> log_probs[:, 0] = -0.01; log_probs[2, :] = torch.tensor([-6.0, -0.01, -6.0])
    >>> log_probs[8, :] = torch.tensor([-6.0, -6.0, -0.01])
    >>> # the second sentence is not in the audio: tried where it fits least badly, rejected, and the third is found
    >>> [(a.first, a.end, a.accepted) for a in align_sentences(log_probs, [[1], [1, 1], [2]], 0, -1.0, 4)]
    [(2, 3, True), (8, 11, False), (8, 9, True)]
    """
    total_tokens = sum(len(tokens) for tokens in sentences)
    # frames per token as the recording and text say; only the windows' widths depend on it
    rate = log_probs.shape[0] / max(total_tokens, 1)
    scored = with_wildcard(log_probs)  # (T, V + 1)
    best = log_probs.max(dim=-1).values  # (T,)
    results: list[SentenceAlignment] = []
    cursor, lost = 0, 0.0  # where the search starts; plausible frames of sentences rejected since the last accepted
    for index, tokens in enumerate(sentences):
        plausible = 2 * rate * len(tokens)
        if not tokens:
            results.append(SentenceAlignment(index, cursor, cursor, float("-inf"), False, "no characters to align"))
            continue
        found = None
        # near first, then wide: a sentence the audio lacks is tried on the speech right after the cursor (and
        # rejected there) before it could land on a look-alike far ahead and carry the cursor past its neighbours
        for reach in (search_frames // NEAR_SHARE, search_frames):
            stop = min(log_probs.shape[0], cursor + int(lost + plausible) + reach)
            if stop - cursor < frames_needed(tokens):
                break
            first, end, score = place(scored[cursor:stop], best[cursor:stop], tokens, blank)
            found = SentenceAlignment(index, cursor + first, cursor + end, score, score >= min_score)
            if found.accepted:
                break
        if found is None:
            found = SentenceAlignment(index, cursor, cursor, float("-inf"), False, "the audio ended before it")
        elif not found.accepted:
            found = replace(found, reason=f"score {found.score:.2f} < {min_score:g}: not in the audio, or not "
                                          f"recognisable")
        results.append(found)
        if found.accepted:
            cursor, lost = found.end, 0.0
        else:
            lost += plausible
    return results


def uncovered_audio(log_probs: torch.Tensor, spans: Sequence[tuple[int, int]], blank: int, delimiter: int,
                    min_tokens: int) -> list[tuple[int, int, list[int]]]:
    """Stretches between (and around) the accepted ``spans`` where the free best path reads at least
    ``min_tokens`` tokens other than the word delimiter: ``(first, end, tokens)``, frames of its first to its last
    token.

    Args:
        log_probs: (T, V) log-probabilities of the whole recording.
        spans: ``(first, end)`` frames of the accepted sentences, in order and not overlapping.

    >>> log_probs = torch.full((10, 3), -6.0); log_probs[:, 0] = -0.01
    >>> log_probs[6:8, 0] = -6.0; log_probs[6, 1] = log_probs[7, 2] = -0.01
    >>> uncovered_audio(log_probs, [(0, 4)], blank=0, delimiter=2, min_tokens=1)
    [(6, 8, [1, 2])]
    """
    best = log_probs.argmax(dim=-1)  # (T,)
    edges = [0, *[frame for span in spans for frame in span], log_probs.shape[0]]
    found = []
    for start, stop in zip(edges[0::2], edges[1::2]):
        frames = best[start:stop]
        spoken = frames != blank
        emitted = spoken & torch.cat([torch.tensor([True]), frames[1:] != frames[:-1]])  # a token's first frame
        tokens = frames[emitted].tolist()
        if sum(token != delimiter for token in tokens) >= min_tokens:
            at = spoken.nonzero().flatten()
            found.append((start + int(at[0]), start + int(at[-1]) + 1, tokens))
    return found
