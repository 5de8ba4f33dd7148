"""Word confidence: the frame measures' known values, words aggregated over their own frames, the AUROC of
wrong-word detection, and ``evaluate``'s confidences, results and summary on posteriors written by hand."""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path

import pytest
import torch

from ptasr.data.text import TextNormalizer, Vocabulary
from ptasr.decoding.confidence import (
    BASELINE_MEASURE,
    DEFAULT_MEASURE,
    ConfidenceMeasure,
    frame_confidence,
    word_confidences,
)
from ptasr.errors import SettingError
from ptasr.evaluation.evaluate import EvalSet, evaluate, format_results, summarise, write_results
from ptasr.evaluation.scoring import auroc, wrong_words
from ptasr.model.config import Wav2Vec2Config
from ptasr.model.wav2vec2 import Wav2Vec2CTC
from ptasr.recognition.recognizer import Recognizer

MEASURES = [ConfidenceMeasure("max_prob"), ConfidenceMeasure("gibbs", 1.0, "lin"),
            ConfidenceMeasure("gibbs", 0.5, "exp"),
            ConfidenceMeasure("tsallis", 0.33, "lin"), ConfidenceMeasure("tsallis", 0.33, "exp")]


@pytest.mark.parametrize("measure", MEASURES, ids=lambda m: m.name)
def test_a_sure_frame_scores_one_and_a_uniform_frame_zero(measure: ConfidenceMeasure) -> None:
    sure = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0])
    uniform = torch.full((5,), 0.2)
    between = torch.tensor([0.6, 0.1, 0.1, 0.1, 0.1])
    values = frame_confidence(torch.stack([sure, uniform, between]).log(), measure)
    assert values[0].item() == pytest.approx(1.0, abs=1e-6) and values[1].item() == pytest.approx(0.0, abs=1e-6)
    assert 0.0 < values[2].item() < 1.0


def test_frame_measures_equal_their_formulas() -> None:
    p = torch.tensor([0.5, 0.3, 0.2])
    v, log_p = 3, p.log()[None]
    assert frame_confidence(log_p, ConfidenceMeasure("max_prob")).item() == pytest.approx((3 * 0.5 - 1) / 2, abs=1e-6)
    shannon = -(p * p.log()).sum().item()
    gibbs = frame_confidence(log_p, ConfidenceMeasure("gibbs", 1.0, "lin")).item()
    assert gibbs == pytest.approx(1 - shannon / math.log(v), abs=1e-6)
    a = 0.33
    tsallis, largest = (1 - (p ** a).sum().item()) / (a - 1), (1 - v ** (1 - a)) / (a - 1)
    linear = frame_confidence(log_p, ConfidenceMeasure("tsallis", a, "lin")).item()
    assert linear == pytest.approx(1 - tsallis / largest, abs=1e-6)
    exp_form = (math.exp(-tsallis) - math.exp(-largest)) / (1 - math.exp(-largest))
    assert frame_confidence(log_p, ConfidenceMeasure("tsallis", a, "exp")).item() == pytest.approx(exp_form, abs=1e-6)


def test_entropy_sees_the_doubt_that_the_top_probability_hides() -> None:
    # Both frames put 0.5 on the emitted token: max_prob cannot tell them apart; the entropy can, the frame
    # whose rest is one rival (a two-way doubt) being less sure than one whose rest is spread thin.
    two_way = torch.tensor([0.5, 0.5, 0.0, 0.0, 0.0, 0.0]).clamp(min=1e-9)
    spread = torch.tensor([0.5, 0.1, 0.1, 0.1, 0.1, 0.1])
    log_probs = torch.stack([two_way, spread]).log()
    top = frame_confidence(log_probs, ConfidenceMeasure("max_prob"))
    assert top[0].item() == pytest.approx(top[1].item(), abs=1e-6)
    entropy = frame_confidence(log_probs, DEFAULT_MEASURE)
    assert entropy[0].item() != pytest.approx(entropy[1].item(), abs=1e-3)


def test_a_word_is_scored_on_its_own_tokens_frames_only() -> None:
    # frames: a a _ | b _ ; the blank (frame 2) and the delimiter (frame 3) are uncertain but belong to no word
    sure, doubt = [0.97, 0.01, 0.01, 0.01], [0.25, 0.25, 0.25, 0.25]  # over (a, b, |, blank)
    frames = torch.tensor([sure, sure, doubt, doubt, [0.01, 0.58, 0.01, 0.4], sure]).log()
    spans = [(0, 0, 2), (2, 3, 4), (1, 4, 5)]
    for aggregate in ("min", "mean"):
        first, second = word_confidences(frames, spans, delimiter=2,
                                         measure=ConfidenceMeasure("max_prob", aggregate=aggregate))
        assert first == pytest.approx((4 * 0.97 - 1) / 3) and second == pytest.approx((4 * 0.58 - 1) / 3)
    min_of_two = word_confidences(torch.tensor([sure, [0.7, 0.1, 0.1, 0.1]]).log(), [(0, 0, 2)], 2,
                                  ConfidenceMeasure("max_prob", aggregate="min"))
    assert min_of_two == [pytest.approx((4 * 0.7 - 1) / 3)]


def test_a_measure_refuses_an_alpha_it_cannot_use() -> None:
    with pytest.raises(SettingError, match="alpha 1.0 for tsallis"):
        ConfidenceMeasure("tsallis", 1.0)
    with pytest.raises(SettingError, match="alpha 0"):
        ConfidenceMeasure("gibbs", 0.0)


# --- wrong words and the AUROC ------------------------------------------------------------------------------


def test_wrong_words_are_substitutions_and_insertions_of_the_prediction() -> None:
    assert wrong_words("o gato preto", "o pato preto sim") == [False, True, False, True]
    assert wrong_words("o gato preto", "o preto") == [False, False]  # a deletion has no predicted word
    assert wrong_words("", "eco") == [True]


def test_auroc_of_a_perfect_a_reversed_and_a_useless_score() -> None:
    wrong = [True, False, True, False, False]
    assert auroc([0.1, 0.9, 0.2, 0.8, 0.7], wrong) == 1.0
    assert auroc([0.9, 0.1, 0.8, 0.2, 0.3], wrong) == 0.0
    assert auroc([0.5] * 5, wrong) == 0.5
    assert auroc([0.5, 0.6], [False, False]) is None and auroc([], []) is None


@pytest.mark.parametrize("seed", range(3))
def test_auroc_counts_every_wrong_right_pair(seed: int) -> None:
    rng = random.Random(seed)
    confidences = [rng.choice([0.1, 0.3, 0.5, 0.7]) for _ in range(40)]  # many ties
    wrong = [rng.random() < 0.3 for _ in range(40)]
    pairs = [(w, r) for w, r in itertools.product(range(40), range(40)) if wrong[w] and not wrong[r]]
    expected = sum(1.0 if confidences[w] < confidences[r] else 0.5 if confidences[w] == confidences[r] else 0.0
                   for w, r in pairs) / len(pairs)
    assert auroc(confidences, wrong) == pytest.approx(expected)


# --- evaluate on posteriors written by hand -----------------------------------------------------------------


VOCAB = Vocabulary.build(["ab c"])  # ['|', 'a', 'b', 'c', '[UNK]', '[PAD]']


def scripted(frames: list[tuple[str, float]]) -> torch.Tensor:
    """(T, V) log-probabilities: each frame puts ``p`` on its token ('_' the blank) and shares the rest evenly."""
    rows = []
    for token, p in frames:
        row = torch.full((len(VOCAB),), (1 - p) / (len(VOCAB) - 1))
        row[VOCAB.pad_id if token == "_" else VOCAB.tokens.index(token)] = p
        rows.append(row)
    return torch.stack(rows).log()


def recognizer_saying(frames: list[tuple[str, float]], monkeypatch: pytest.MonkeyPatch) -> Recognizer:
    """A recognizer whose network outputs ``frames`` (padded with sure blanks) for any 0.5 s clip."""
    model = Wav2Vec2CTC(Wav2Vec2Config.preset("tiny", vocab_size=len(VOCAB), pad_token_id=VOCAB.pad_id))
    recognizer = Recognizer(model, VOCAB, TextNormalizer())
    log_probs = scripted(frames + [("_", 0.99)] * (25 - len(frames)))  # 8000 samples -> 25 frames of 20 ms
    monkeypatch.setattr(recognizer, "log_probs", lambda waveforms, batch_size=8: [log_probs for _ in waveforms])
    return recognizer


def one_clip() -> EvalSet:
    return EvalSet("set", ["one"], [torch.zeros(8000)], ["ab c"], [{}], source="memory", split="test")


SURE, UNSURE = 0.98, 0.3


def test_an_unsure_wrong_word_is_found_and_written(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # "ab" said surely and right, then "b" (the reference says "c") said with doubt
    recognizer = recognizer_saying([("a", SURE), ("b", SURE), ("|", SURE), ("b", UNSURE)], monkeypatch)
    evaluation = evaluate(recognizer, one_clip())
    (scored,) = evaluation.scored
    assert scored.prediction == "ab b"
    right, wrong = scored.confidences[DEFAULT_MEASURE.name]
    assert right > wrong
    results = summarise(evaluation, recognizer, model="scripted")
    confidence = results["confidence"]
    assert (confidence["auroc"], confidence["baseline_auroc"]) == (1.0, 1.0)
    assert (confidence["words"], confidence["wrong_words"], confidence["measure"], confidence["baseline"]) == (
        2, 1, DEFAULT_MEASURE.name, BASELINE_MEASURE.name)
    assert f"word confidence AUROC (finding the 1 wrong of 2 predicted words): 1.0000 with {DEFAULT_MEASURE.name}" \
        in format_results(results)
    write_results(tmp_path, "set", results, evaluation.scored)
    header, row = (tmp_path / "set_predictions.tsv").read_text(encoding="utf-8").splitlines()
    assert header.split("\t")[-2:] == ["prediction", "confidence"]
    assert [float(c) for c in row.split("\t")[-1].split()] == pytest.approx([right, wrong], abs=1e-3)


def test_a_confidently_wrong_word_scores_an_auroc_of_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    # now the right word is the unsure one and the wrong one sure: confidence points the wrong way
    recognizer = recognizer_saying([("a", UNSURE), ("b", UNSURE), ("|", SURE), ("b", SURE)], monkeypatch)
    results = summarise(evaluate(recognizer, one_clip()), recognizer, model="scripted")
    assert (results["confidence"]["auroc"], results["confidence"]["baseline_auroc"]) == (0.0, 0.0)


def test_transcribe_gives_every_word_its_confidence(monkeypatch: pytest.MonkeyPatch) -> None:
    recognizer = recognizer_saying([("a", SURE), ("b", SURE), ("|", SURE), ("b", UNSURE)], monkeypatch)
    (transcript,) = recognizer.transcribe([torch.zeros(8000)], word_timestamps=True)
    first, second = transcript.to_dict()["words"]
    assert (first["word"], first["start"], first["end"]) == ("ab", 0.0, 0.04)
    assert 1 >= first["confidence"] > second["confidence"] >= 0
    (plain,) = recognizer.transcribe([torch.zeros(8000)])
    assert plain.words is None and "words" not in plain.to_dict()


def test_beam_search_words_carry_the_confidence_of_their_own_path(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("flashlight.lib.text.decoder")
    from ptasr.decoding.lm import BeamSearchDecoder

    # "ab" spoken over repeated frames, then a doubtful "b": without an LM the beam keeps greedy's path, so its
    # words, times and confidences are greedy's (spans cover each letter's repeats, not its first frame only)
    recognizer = recognizer_saying([("a", SURE), ("a", SURE), ("b", SURE), ("|", SURE), ("b", UNSURE)], monkeypatch)
    greedy, = recognizer.transcribe([torch.zeros(8000)], word_timestamps=True)
    beam, = recognizer.transcribe([torch.zeros(8000)], word_timestamps=True, decoder=BeamSearchDecoder(VOCAB))
    assert beam.words == greedy.words and beam.words[0].confidence > beam.words[1].confidence
    assert (beam.words[0].start, beam.words[0].end) == (0.0, 0.06)
