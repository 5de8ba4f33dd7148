"""The ``val/wer_lm`` callback in real ``Trainer.validate`` runs, on hand-made emissions where the LM helps."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

pytest.importorskip("flashlight.lib.text.decoder", reason="flashlight-text (pip install 'ptasr[lm]') is not installed")

from helpers import word_arpa  # noqa: E402

from ptasr.data.text import Vocabulary  # noqa: E402
from ptasr.train.lm_validation import LMValidation  # noqa: E402

VOCAB = Vocabulary.build(["casa mesa caza"])
# The word bigram model: knows "casa" and "mesa" but not "caza".
WORD_BIGRAMS = {"<s> casa": -0.2, "casa mesa": -0.3, "casa </s>": -0.2, "mesa </s>": -0.2}


def spoken(letters: str, doubt: dict[str, dict[str, float]]) -> torch.Tensor:
    """(1, T, V) log-probabilities: each letter (0.9, or the ``doubt`` split) then a blank frame (0.9)."""
    rows = []
    for letter in letters:
        for frame in (doubt.get(letter, {letter: 0.9}), {VOCAB.pad_token: 0.9}):
            probs = torch.full((len(VOCAB),), 1e-4)
            for token, p in frame.items():
                probs[VOCAB.tokens.index(token)] = p
            rows.append(probs / probs.sum())
    return torch.stack(rows).log()[None]


# The acoustic model slightly prefers "z" where "s" is said: greedy reads "caza meza" and "caza".
CAZA_MEZA = spoken("caZa|meZa", {"Z": {"z": 0.55, "s": 0.45}, "|": {"|": 0.9}})
CAZA = spoken("caZa", {"Z": {"z": 0.55, "s": 0.45}})


class Emitter(L.LightningModule):
    """Returns fixed emissions as its validation logits, as ptasr's module returns the model's."""

    def __init__(self) -> None:
        super().__init__()
        self.vocab = VOCAB
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> dict:
        logits = [CAZA_MEZA, CAZA][batch_idx][0]  # (T, V) log-probabilities: log-softmax leaves them unchanged
        return {"logits": logits[None], "frame_lengths": torch.tensor([logits.shape[0]]),
                "references": [["casa mesa", "casa"][batch_idx]], "predictions": [""], "ids": [str(batch_idx)]}


def validate(callback: LMValidation, times: int) -> list[dict[str, float]]:
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[callback])
    module, data = Emitter(), torch.utils.data.DataLoader(torch.zeros(2, 1), batch_size=1)
    return [{k: float(v) for k, v in trainer.validate(module, data, verbose=False)[0].items()} for _ in range(times)]


@pytest.fixture
def lm(tmp_path: Path) -> Path:
    return word_arpa(tmp_path / "words.arpa", WORD_BIGRAMS)


def test_lm_fixes_what_greedy_gets_wrong_every_k_validations(lm: Path) -> None:
    runs = validate(LMValidation(lm, every_n_validations=2, lm_weight=1.0), times=3)
    assert runs[0] == {"val/wer_lm": 0.0, "val/cer_lm": 0.0}  # "casa mesa", "casa": all right
    assert runs[1] == {}  # the 2nd validation is skipped
    assert runs[2] == runs[0]


def test_zero_weight_gives_the_acoustic_answer_and_the_subset_is_fixed(lm: Path) -> None:
    # Without the LM the beam says "caza meza" (2 of 2 words wrong); only the first utterance is decoded.
    runs = validate(LMValidation(lm, max_utterances=1, lm_weight=0.0), times=2)
    assert runs[0] == pytest.approx({"val/wer_lm": 1.0, "val/cer_lm": 2 / 9}) and runs[1] == runs[0]


def test_a_missing_lm_stops_before_training(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no language model at .*ptasr lm build"):
        validate(LMValidation(tmp_path / "missing.arpa"), times=1)
