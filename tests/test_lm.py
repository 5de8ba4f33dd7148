"""n-gram LM beam search: hand-made emissions where greedy decoding and the LM disagree."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from helpers import word_arpa

from ptasr.data.text import Vocabulary
from ptasr.decoding.greedy import greedy_decode

pytest.importorskip("flashlight.lib.text.decoder", reason="flashlight-text (pip install 'ptasr[lm]') is not installed")

from ptasr.decoding.lm import BeamSearchDecoder, LMUnavailableError, arpa_words, lm_words  # noqa: E402

VOCAB = Vocabulary.build(["casa mesa caza"])  # ['|', 'a', 'c', 'e', 'm', 's', 'z', '[UNK]', '[PAD]']

# The word bigram model: knows "casa" and "mesa" but not "caza".
WORD_BIGRAMS = {"<s> casa": -0.2, "<s> mesa": -0.4, "casa mesa": -0.3, "mesa casa": -0.5,
                "casa </s>": -0.2, "mesa </s>": -0.2}


def char_arpa() -> str:
    """A token-level bigram model: letters are 'words', '|' separates real words; 's' follows 'a', 'z' rarely."""
    unigrams = ["<s>", "</s>", "<unk>", "|", "a", "c", "e", "m", "s", "z"]
    bigrams = {("a", "s"): -0.1, ("a", "z"): -3.0, ("c", "a"): -0.1, ("s", "a"): -0.1, ("z", "a"): -0.1,
               ("<s>", "c"): -0.3, ("a", "</s>"): -0.3}
    lines = ["\\data\\", f"ngram 1={len(unigrams)}", f"ngram 2={len(bigrams)}", "", "\\1-grams:"]
    lines += [f"-1.0\t{u}\t-0.5" for u in unigrams]
    lines += ["", "\\2-grams:"] + [f"{p}\t{a} {b}" for (a, b), p in bigrams.items()] + ["", "\\end\\", ""]
    return "\n".join(lines)


def emissions(frames: list[dict[str, float]]) -> torch.Tensor:
    """(1, T, V) log-probabilities from per-frame {token: probability}; '_' is the blank; the rest share 1e-4."""
    rows = []
    for frame in frames:
        probs = torch.full((len(VOCAB),), 1e-4)
        for token, p in frame.items():
            probs[VOCAB.pad_id if token == "_" else VOCAB.tokens.index(token)] = p
        rows.append(probs / probs.sum())
    return torch.stack(rows).log()[None]


def spoken(text_with_doubt: list[dict[str, float]]) -> list[dict[str, float]]:
    """Each symbol followed by a blank frame, as CTC models emit."""
    return [frame for symbol in text_with_doubt for frame in (symbol, {"_": 0.9})]


# "caza": the acoustic model slightly prefers 'z' over 's' in the third letter.
CAZA = emissions(spoken([{"c": 0.9}, {"a": 0.9}, {"z": 0.55, "s": 0.45}, {"a": 0.9}]))
# "caza meza": the same doubt in the second word.
CAZA_MEZA = emissions(spoken([{"c": 0.9}, {"a": 0.9}, {"z": 0.55, "s": 0.45}, {"a": 0.9}, {"|": 0.9},
                              {"m": 0.9}, {"e": 0.9}, {"z": 0.55, "s": 0.45}, {"a": 0.9}]))


def greedy(log_probs: torch.Tensor) -> str:
    ids = greedy_decode(log_probs, torch.tensor([log_probs.shape[1]]), VOCAB.pad_id)[0]
    return VOCAB.decode(ids)


def frames_of(log_probs: torch.Tensor) -> torch.Tensor:
    return torch.tensor([log_probs.shape[1]])


@pytest.fixture
def word_lm(tmp_path: Path) -> Path:
    return word_arpa(tmp_path / "words.arpa", WORD_BIGRAMS)


def test_word_lm_picks_the_in_lm_word_where_greedy_does_not(word_lm: Path) -> None:
    assert greedy(CAZA) == "caza"
    decoder = BeamSearchDecoder(VOCAB, word_lm, lm_weight=1.0)
    assert decoder.decode(CAZA, frames_of(CAZA)) == ["casa"]
    assert decoder.decode(CAZA_MEZA, frames_of(CAZA_MEZA)) == ["casa mesa"]


def test_without_lm_or_with_zero_weight_the_beam_agrees_with_greedy(word_lm: Path) -> None:
    assert BeamSearchDecoder(VOCAB).decode(CAZA, frames_of(CAZA)) == ["caza"]
    assert BeamSearchDecoder(VOCAB, word_lm, lm_weight=0.0).decode(CAZA_MEZA, frames_of(CAZA_MEZA)) == ["caza meza"]


def test_token_level_lm(tmp_path: Path) -> None:
    path = tmp_path / "chars.arpa"
    path.write_text(char_arpa(), encoding="utf-8")
    decoder = BeamSearchDecoder(VOCAB, path, unit="token", lm_weight=1.0)
    assert decoder.decode(CAZA, frames_of(CAZA)) == ["casa"]


def test_batch_with_padding_and_timesteps(word_lm: Path) -> None:
    # Two utterances of different lengths in one padded batch; frames past an utterance's length are ignored.
    batch = torch.cat([CAZA_MEZA, torch.cat([CAZA, CAZA_MEZA[:, CAZA.shape[1]:]], dim=1)])
    decoder = BeamSearchDecoder(VOCAB, word_lm, lm_weight=1.0)
    first, second = decoder(batch, torch.tensor([CAZA_MEZA.shape[1], CAZA.shape[1]]))
    assert VOCAB.decode(second.tokens) == "casa"
    # Letters sit on the even frames (each is followed by a blank frame): c a s a.
    assert second.timesteps == [0, 2, 4, 6]
    assert VOCAB.decode(first.tokens) == "casa mesa"
    assert len(first.timesteps) == len(first.tokens)


def test_word_lists(word_lm: Path, tmp_path: Path) -> None:
    assert arpa_words(word_lm) == ["casa", "mesa"]
    binary = tmp_path / "5gram.bin"
    binary.write_bytes(b"mmap lm http://kheafield.com/code format version 5\n\0\0")
    with pytest.raises(FileNotFoundError, match="unigrams.txt"):
        lm_words(binary)
    (tmp_path / "unigrams.txt").write_text("casa\nmesa\n<s>\n", encoding="utf-8")
    assert lm_words(binary) == ["casa", "mesa"]


def test_not_an_lm_file_is_refused_before_kenlm_sees_it(tmp_path: Path) -> None:
    junk = tmp_path / "lm.arpa"
    junk.write_text("hello\n", encoding="utf-8")
    with pytest.raises(ValueError, match="neither an ARPA"):
        BeamSearchDecoder(VOCAB, junk)
    with pytest.raises(FileNotFoundError, match="no language model"):
        BeamSearchDecoder(VOCAB, tmp_path / "missing.arpa")


def test_missing_flashlight_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes the import fail as if the package were absent.
    monkeypatch.setitem(sys.modules, "flashlight.lib.text.decoder", None)
    with pytest.raises(LMUnavailableError, match=r"pip install 'ptasr\[lm\]'"):
        BeamSearchDecoder(VOCAB)


# --- the weight search --------------------------------------------------------------------------------------


def test_search_weights_reuses_emissions_and_finds_the_lm_helps(word_lm: Path) -> None:
    from ptasr.decoding.lm import best_trial, search_weights
    from ptasr.evaluation.scoring import error_rates, score_utterance

    references = ["casa mesa", "casa"]
    emissions = [CAZA_MEZA[0], CAZA[0]]  # (T_i, V) each, different lengths

    def score(predictions: list[str]) -> dict:
        return error_rates([score_utterance(str(i), r, p) for i, (r, p) in enumerate(zip(references, predictions))])

    trials = search_weights(BeamSearchDecoder(VOCAB, word_lm), emissions, score, lm_weights=[0.0, 1.0],
                            word_scores=[0.0, 0.5])
    assert [(t.lm_weight, t.word_score) for t in trials] == [(0.0, 0.0), (0.0, 0.5), (1.0, 0.0), (1.0, 0.5)]
    assert trials[0].predictions == ["caza meza", "caza"] and trials[0].wer == 1.0  # no LM: greedy's answer
    assert trials[2].predictions == ["casa mesa", "casa"] and trials[2].wer == 0.0
    best = best_trial(trials)
    assert (best.lm_weight, best.word_score) == (1.0, 0.0)  # ties go to the smaller change


def test_tuned_weights_round_trip(tmp_path: Path) -> None:
    from ptasr.decoding.lm import Trial, load_weights, save_weights, weights_path

    lm = tmp_path / "lm.arpa"
    assert load_weights(lm) is None
    saved = save_weights(lm, Trial(1.5, -1.0, 0.2, 0.05, []), split="dev")
    assert saved == weights_path(lm) == tmp_path / "lm.arpa.json"
    assert load_weights(lm) == {"lm_weight": 1.5, "word_score": -1.0, "wer": 0.2, "cer": 0.05, "split": "dev"}
    saved.write_text('{"alpha": 1}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"lm\.arpa\.json lacks lm_weight"):
        load_weights(lm)


def test_a_word_cut_short_pays_the_unknown_word_penalty(word_lm: Path) -> None:
    # "cas" is a prefix of "casa" (never charged while spelled) but no LM word: closing it must cost as much
    # as any out-of-vocabulary word, or the beam prefers dropping the last letters of a word it doubts.
    cas_a = emissions(spoken([{"c": 0.9}, {"a": 0.9}, {"s": 0.9}, {"a": 0.2, "_": 0.8}]))
    assert greedy(cas_a) == "cas"
    assert BeamSearchDecoder(VOCAB, word_lm, lm_weight=0.5).decode(cas_a, frames_of(cas_a)) == ["casa"]
    assert BeamSearchDecoder(VOCAB, word_lm, lm_weight=0.5, unk_score=0.0).decode(cas_a, frames_of(cas_a)) == ["cas"]


def test_log_add_sums_alignments_where_the_maximum_deletes() -> None:
    # Two frames, each "a" 0.4 / blank 0.6. "a" by any alignment: 0.4 (aa, _a) + 0.24 (a_) in two beam states;
    # the all-blank path alone: 0.36, more than any single alignment of "a" (0.24).
    doubt = emissions([{"a": 0.4, "_": 0.6}, {"a": 0.4, "_": 0.6}])
    assert BeamSearchDecoder(VOCAB).decode(doubt, frames_of(doubt)) == ["a"]
    assert BeamSearchDecoder(VOCAB, log_add=False).decode(doubt, frames_of(doubt)) == [""]


def test_beam_spans_cover_each_tokens_repeated_frames() -> None:
    # "ca" said over five frames: c c _ a a; the spans give each letter both of its frames, as greedy's do
    log_probs = emissions([{"c": 0.9}, {"c": 0.9}, {"_": 0.9}, {"a": 0.9}, {"a": 0.9}])
    hypothesis = BeamSearchDecoder(VOCAB)(log_probs, frames_of(log_probs))[0]
    c, a = VOCAB.tokens.index("c"), VOCAB.tokens.index("a")
    assert hypothesis.spans == [(c, 0, 2), (a, 3, 5)] and hypothesis.timesteps == [0, 3]
