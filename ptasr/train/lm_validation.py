"""``val/wer_lm`` and ``val/cer_lm``: the validation set decoded with an n-gram LM, beside the greedy curves.

Beam search runs on the CPU and costs far more than greedy decoding, so it runs every ``every_n_validations``
validations and on at most ``max_utterances`` utterances of each validation source (the first ones of the
validation order, the same every time). With several sources (two or more in ``data.val``) it also logs
``val/<name>/wer_lm`` and ``val/<name>/cer_lm``, as ``WERMetrics`` logs ``val/<name>/wer``. Enable it in a
config's ``trainer.callbacks``, or on the command line::

    python train.py fit --trainer.callbacks+=ptasr.train.LMValidation \\
        --trainer.callbacks.lm=lm.arpa --trainer.callbacks.every_n_validations=4
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from ptasr.errors import MissingPathError, SettingError
from ptasr.evaluation.scoring import error_rate, score_utterance
from ptasr.train.callbacks import clip_sources, source_names


class LMValidation(L.Callback):
    """Beam search with an n-gram LM over the validation logits; edit counts summed over batches and ranks.

    The subset decoded is fixed: of each validation source, up to ``max_utterances`` clips; each rank decodes
    the first ``max_utterances / world size`` (rounded up) of that source's clips in the batches it validates
    (longest first), so the subset is the same every time but depends on the number of ranks. A
    quota per source, not one over all: the pooled order is by duration, so one overall cap could take every
    clip from the source of the longest clips and none from another. ``val/wer_lm`` and ``val/cer_lm`` pool
    the subset (word- and character-weighted, as ``val/wer`` pools the whole set); with several sources,
    ``val/<name>/wer_lm`` and ``val/<name>/cer_lm`` score each source's part of it alone, all in one reduce
    over ranks. A source of which no clip was decoded (e.g. ``trainer.limit_val_batches`` stopped before its
    clips) logs no ``val/<name>/..._lm`` rather than a 0.0 from no words, and a warning names it.

    Args:
        lm: a KenLM model (ARPA or binary), e.g. from ``ptasr lm build``.
        every_n_validations: decode on the 1st, (K+1)th, (2K+1)th ... validation (sanity checks excluded).
        max_utterances: utterances decoded per validation and source, over all ranks (None: all).
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
        self._names = [""]  # the validation sources, in the order batches number them
        self._counts = torch.zeros(1, 2, 4, dtype=torch.float64)  # (source, words/characters, S/D/I/H)
        self._decoded = [0]  # clips decoded per source, this rank, this validation
        self._warned: set[str] = set()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self.lm.is_file():  # fail before training starts, not at the first validation
            raise MissingPathError(f"LMValidation: no language model at {self.lm} (build one with: ptasr lm build)")

    def _decoder_for(self, pl_module: L.LightningModule) -> Any:
        if self._decoder is None:
            from ptasr.decoding.lm import BeamSearchDecoder, resolve_weights

            lm_weight, word_score, _ = resolve_weights(self.lm, self.lm_weight, self.word_score)
            self._decoder = BeamSearchDecoder(pl_module.vocab, self.lm, unit=self.unit, beam_size=self.beam_size,
                                              lm_weight=lm_weight, word_score=word_score)
        return self._decoder

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._active = not trainer.sanity_checking and self._validations % self.every_n_validations == 0
        if not trainer.sanity_checking:
            self._validations += 1
        self._names = source_names(trainer, "val")
        # float64 holds integer sums exactly, so pooling and the reduce add no rounding
        self._counts = torch.zeros(len(self._names), 2, 4, dtype=torch.float64)
        self._decoded = [0] * len(self._names)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not self._active or not outputs:
            return
        sources = clip_sources(outputs, self._names, len(outputs["references"])).tolist()
        quota = None if self.max_utterances is None else -(-self.max_utterances // trainer.world_size)
        rows = within_quota(sources, self._decoded, quota)
        if not rows:
            return
        index = torch.tensor(rows, device=outputs["logits"].device)
        log_probs = outputs["logits"][index].float().log_softmax(dim=-1)  # (B', T, V): the rows within quota
        predictions = self._decoder_for(pl_module).decode(log_probs, outputs["frame_lengths"][index])
        for row, prediction in zip(rows, predictions, strict=True):
            scored = score_utterance("", outputs["references"][row], prediction)
            self._counts[sources[row]] += torch.tensor([scored.word_counts, scored.char_counts], dtype=torch.float64)
            self._decoded[sources[row]] += 1

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._active:
            return
        # every source's counts and clips decoded in one collective: (sources, 2 * 4 + 1)
        packed = torch.cat([self._counts.flatten(1), torch.tensor(self._decoded, dtype=torch.float64)[:, None]], 1)
        reduced = trainer.strategy.reduce(packed.to(pl_module.device), reduce_op="sum").cpu()
        counts, decoded = reduced[:, :8].view(-1, 2, 4), reduced[:, 8]
        self._log(pl_module, "val", counts.sum(dim=0))
        if len(self._names) == 1:
            return
        for name, source_counts, clips in zip(self._names, counts, decoded.tolist(), strict=True):
            if clips > 0:
                self._log(pl_module, f"val/{name}", source_counts)
            elif name not in self._warned:  # every rank sees the same reduced counts, so all skip alike
                self._warned.add(name)
                rank_zero_warn(f"LMValidation: no clip of validation source {name!r} was decoded, so "
                               f"val/{name}/wer_lm is not logged; does trainer.limit_val_batches stop before its "
                               f"clips? (val/wer_lm pools the sources that were decoded)")

    @staticmethod
    def _log(pl_module: L.LightningModule, prefix: str, counts: torch.Tensor) -> None:
        """``<prefix>/wer_lm`` and ``<prefix>/cer_lm`` of counts (2, 4): (S, D, I, H) of words, of characters."""
        # The value is already global; sync_dist only makes Lightning agree (as the greedy val/wer does).
        pl_module.log(f"{prefix}/wer_lm", float(error_rate(counts[0].tolist())), sync_dist=True)
        pl_module.log(f"{prefix}/cer_lm", float(error_rate(counts[1].tolist())), sync_dist=True)


def within_quota(sources: list[int], decoded: list[int], quota: int | None) -> list[int]:
    """The rows of a batch to decode: those whose source has had fewer than ``quota`` clips decoded (counting the
    rows taken before them); ``decoded`` (per source) is not changed.

    >>> within_quota([0, 1, 0, 0, 1], decoded=[1, 0], quota=2)
    [0, 1, 4]
    >>> within_quota([0, 0], decoded=[5], quota=None)
    [0, 1]
    """
    taken = list(decoded)
    rows = []
    for row, source in enumerate(sources):
        if quota is None or taken[source] < quota:
            taken[source] += 1
            rows.append(row)
    return rows
