"""``val/wer_lm`` and ``val/cer_lm``: the validation set decoded with an n-gram LM, beside the greedy curves.

Beam search runs on the CPU and costs far more than greedy decoding, so it runs every ``every_n_validations``
validations and on at most ``max_utterances`` utterances (the first ones of the validation order, the same
every time). Enable it in a config's ``trainer.callbacks``, or on the command line::

    python train.py fit --trainer.callbacks+=ptasr.train.LMValidation \\
        --trainer.callbacks.lm=lm.arpa --trainer.callbacks.every_n_validations=4
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch

from ptasr.errors import MissingPathError, SettingError
from ptasr.scoring import error_rate, score_utterance


class LMValidation(L.Callback):
    """Beam search with an n-gram LM over the validation logits; edit counts summed over batches and ranks.

    Args:
        lm: a KenLM model (ARPA or binary), e.g. from ``ptasr lm build``.
        every_n_validations: decode on the 1st, (K+1)th, (2K+1)th ... validation (sanity checks excluded).
        max_utterances: utterances decoded per validation, over all ranks (None: all).
        lm_weight: LM weight (default: the tuned one in ``LM.json`` beside the LM, else 2).
        word_score: per-word score (default: the tuned one, else 0).
        beam_size: hypotheses kept per frame.
        unit: "word" for a word-level LM, "token" for one over the model's tokens.
    """

    def __init__(self, lm: str | Path, every_n_validations: int = 1, max_utterances: int | None = None,
                 lm_weight: float | None = None, word_score: float | None = None, beam_size: int = 50,
                 unit: str = "word") -> None:
        if every_n_validations < 1:
            raise SettingError(f"every_n_validations must be at least 1, got {every_n_validations}")
        if max_utterances is not None and max_utterances < 1:
            raise SettingError(f"max_utterances must be at least 1 (or None for all), got {max_utterances}")
        self.lm, self.every_n_validations, self.max_utterances = Path(lm), every_n_validations, max_utterances
        self.lm_weight, self.word_score, self.beam_size, self.unit = lm_weight, word_score, beam_size, unit
        self._decoder: Any = None
        self._validations = 0
        self._active = False
        self._counts = torch.zeros(2, 4, dtype=torch.float64)  # words, characters: S, D, I, H
        self._seen = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self.lm.is_file():  # fail before training starts, not at the first validation
            raise MissingPathError(f"LMValidation: no language model at {self.lm} (build one with: ptasr lm build)")

    def _decoder_for(self, pl_module: L.LightningModule) -> Any:
        if self._decoder is None:
            from ptasr.lm import BeamSearchDecoder, resolve_weights

            lm_weight, word_score, _ = resolve_weights(self.lm, self.lm_weight, self.word_score)
            self._decoder = BeamSearchDecoder(pl_module.vocab, self.lm, unit=self.unit, beam_size=self.beam_size,
                                              lm_weight=lm_weight, word_score=word_score)
        return self._decoder

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._active = not trainer.sanity_checking and self._validations % self.every_n_validations == 0
        if not trainer.sanity_checking:
            self._validations += 1
        self._counts.zero_()
        self._seen = 0

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not self._active or not outputs:
            return
        limit = None if self.max_utterances is None else -(-self.max_utterances // trainer.world_size) - self._seen
        if limit is not None and limit <= 0:
            return
        rows = slice(0, limit)
        log_probs = outputs["logits"][rows].float().log_softmax(dim=-1)  # (B, T, V)
        predictions = self._decoder_for(pl_module).decode(log_probs, outputs["frame_lengths"][rows])
        for reference, prediction in zip(outputs["references"][rows], predictions, strict=True):
            scored = score_utterance("", reference, prediction)
            self._counts += torch.tensor([scored.word_counts, scored.char_counts], dtype=torch.float64)
        self._seen += len(predictions)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._active:
            return
        counts = trainer.strategy.reduce(self._counts.to(pl_module.device), reduce_op="sum").tolist()
        # The value is already global; sync_dist only makes Lightning agree (as the greedy val/wer does).
        pl_module.log("val/wer_lm", float(error_rate(counts[0])), sync_dist=True)
        pl_module.log("val/cer_lm", float(error_rate(counts[1])), sync_dist=True)
