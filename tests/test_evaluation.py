"""``ptasr.evaluation.evaluate`` from Python, without the command: an in-memory set scored, and the weight search's choice."""

from __future__ import annotations

from pathlib import Path

import jiwer
import pytest
import torch

from ptasr.data.audio import AudioDecodeError
from ptasr.data.text import TextNormalizer, Vocabulary
from ptasr.decoding.confidence import BASELINE_MEASURE
from ptasr.decoding.lm import Hypothesis, can_choose
from ptasr.errors import DataError
from ptasr.evaluation.evaluate import EvalSet, evaluate, summarise, transcribe_once, tune, write_results
from ptasr.model.config import Wav2Vec2Config
from ptasr.model.wav2vec2 import Wav2Vec2CTC
from ptasr.recognition.recognizer import Recognizer


@pytest.fixture(scope="module")
def recognizer() -> Recognizer:
    torch.manual_seed(0)
    vocab = Vocabulary.build(["ab c"])
    model = Wav2Vec2CTC(Wav2Vec2Config.preset("tiny", vocab_size=len(vocab), pad_token_id=vocab.pad_id))
    return Recognizer(model, vocab, TextNormalizer())


def _eval_set(missing: Path) -> EvalSet:
    """Two waveforms and, between them, a clip that does not exist."""
    return EvalSet("set", ["one", "gone", "two"], [torch.randn(8000), str(missing), torch.randn(4000)],
                   ["ab c", "c", "ab"], [{"gender": "female"}, {}, {}], source="memory", split="test")


def test_evaluate_scores_the_readable_rows_as_jiwer_does(recognizer: Recognizer, tmp_path: Path) -> None:
    data = _eval_set(tmp_path / "gone.wav")
    evaluation = evaluate(recognizer, data)
    assert [s.id for s in evaluation.scored] == ["one", "two"]
    assert len(evaluation.skipped) == 1 and evaluation.skipped[0].startswith("gone: ")
    assert evaluation.seconds == pytest.approx(0.75)
    predictions = [" ".join(recognizer.normalizer(t.text).split()) for t in recognizer.transcribe(data.audio[::2])]
    results = summarise(evaluation, recognizer, model="tiny", worst_count=1)
    assert results["wer"] == pytest.approx(jiwer.wer(["ab c", "ab"], predictions), abs=1e-6)
    assert (results["data"], results["split"], results["decoder"]) == ("memory", "test", "greedy")
    assert (results["utterances"], results["words"], results["skipped"]) == (2, 3, 1)
    assert set(results["by"]["gender"]) == {"female", "(unknown)"} and len(results["worst"]) == 1
    write_results(tmp_path / "out", data.name, results, evaluation.scored)
    rows = (tmp_path / "out" / "set_predictions.tsv").read_text(encoding="utf-8").splitlines()[1:]
    assert [row.split("\t")[4] for row in rows] == predictions


def test_evaluate_refuses_a_set_with_nothing_to_score(recognizer: Recognizer, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"memory \(test\) has no utterances"):
        evaluate(recognizer, _eval_set(tmp_path / "gone.wav").take(0))
    unreadable = EvalSet("set", ["gone"], [str(tmp_path / "gone.wav")], ["c"], [{}], source="memory")
    with pytest.raises(AudioDecodeError, match="none of the 1 clips of memory could be read; first: gone: "):
        evaluate(recognizer, unreadable)


class ScriptedDecoder:
    """Decodes to the references under one (LM weight, word score) pair and to a wrong word under every other:
    the search's answer is known whatever the random model emits. A batch of the whole set gets every reference;
    a batch of one (the best pair decoded again, row by row) the next reference in turn."""

    def __init__(self, vocab: Vocabulary, references: list[str], right: tuple[float, float],
                 weights: tuple[float, float] = (0, 0)):
        self.vocab, self.references, self.right, self.weights = vocab, references, right, weights
        self.next = 0

    def with_weights(self, lm_weight: float, word_score: float) -> ScriptedDecoder:
        return ScriptedDecoder(self.vocab, self.references, self.right, (lm_weight, word_score))

    def __call__(self, log_probs: torch.Tensor, frame_lengths: torch.Tensor) -> list[Hypothesis]:
        assert log_probs.shape[0] == frame_lengths.shape[0]
        if log_probs.shape[0] == len(self.references):
            texts = list(self.references)
        else:
            assert log_probs.shape[0] == 1
            texts, self.next = [self.references[self.next]], self.next + 1
        if self.weights != self.right:
            texts = ["b"] * len(texts)
        # one frame per token: a path whose spans word confidence can read
        return [Hypothesis(ids, list(range(len(ids))), 0.0, [(t, i, i + 1) for i, t in enumerate(ids)])
                for ids in (self.vocab.encode(text) for text in texts)]

    def decode(self, log_probs: torch.Tensor, frame_lengths: torch.Tensor) -> list[str]:
        return [self.vocab.decode(h.tokens) for h in self(log_probs, frame_lengths)]


@pytest.mark.parametrize(("right", "edges"), [((1.0, 0.0), []), ((2.0, -1.0), ["LM weight 2", "word score -1"])])
def test_tune_picks_the_pair_that_decodes_right(recognizer: Recognizer, tmp_path: Path,
                                                right: tuple[float, float], edges: list[str]) -> None:
    emissions = transcribe_once(recognizer, _eval_set(tmp_path / "gone.wav"))
    assert emissions.rows == [0, 2]
    seen = []
    decoder = ScriptedDecoder(recognizer.vocab, ["ab c", "ab"], right)
    tuning = tune(emissions, decoder, [0.0, 1.0, 2.0], [-1.0, 0.0, 1.0], on_trial=seen.append)
    assert [(t.lm_weight, t.word_score) for t in seen] == [(w, s) for w in (0, 1, 2) for s in (-1, 0, 1)]
    assert (tuning.best.lm_weight, tuning.best.word_score) == right and tuning.best.wer == 0.0
    assert can_choose(tuning.trials) and tuning.edges() == edges
    assert [s.prediction for s in tuning.evaluation.scored] == ["ab c", "ab"]
    # the best pair's words carry their confidences, under the recognizer's measure and the baseline, as evaluate's
    for scored in tuning.evaluation.scored:
        assert set(scored.confidences) == {recognizer.confidence.name, BASELINE_MEASURE.name}
        assert all(len(c) == len(scored.prediction.split()) and all(0 <= x <= 1 for x in c)
                   for c in scored.confidences.values())
    assert len(tuning.evaluation.skipped) == 1 and tuning.evaluation.seconds == pytest.approx(0.75)
    greedy = [" ".join(recognizer.normalizer(emissions.transcripts[i].text).split()) for i in (0, 2)]
    assert tuning.greedy["wer"] == pytest.approx(jiwer.wer(["ab c", "ab"], greedy), abs=1e-6)
