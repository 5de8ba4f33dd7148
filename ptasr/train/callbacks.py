"""Callbacks that measure and report training: WER/CER, prediction samples, CTC, precision and speed health.

They only observe: none changes what the model learns. Each logs under a namespaced tag (``val/wer``,
``train/audio_seconds_per_second`` ...) and avoids host syncs inside the training step: device counters
are read back only when Lightning writes its logs.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn

from ptasr.compat import should_update_logs
from ptasr.evaluation.scoring import Scored, error_rate, score_utterance, worst


class WERMetrics(L.Callback):
    """``val/wer``, ``val/cer`` (and ``test/...``) from edit counts summed over every batch and rank.

    Never an average of per-batch WERs: long and short batches weigh by their words, as in jiwer over the
    whole set. Each evaluation also writes two TensorBoard text panels: the first ``num_samples``
    utterances (the same ones every time, so their progress is visible) and the ``num_worst`` worst.

    With several validation (test) sources (two or more in ``data.val``), counts are kept per source, each batch
    saying its clips' sources in ``sources``: ``val/wer`` and ``val/cer`` pool them (word-weighted, what
    ``ModelCheckpoint`` monitors), and ``val/<name>/wer``, ``val/<name>/cer`` score each source alone, the
    names from the data module's ``source_names``; the text panels then name each clip's source. A source with
    nothing scored (no clip of it evaluated, e.g. cut off by ``trainer.limit_val_batches``) logs no rates of its
    own, rather than a 0.0 from no words, and a warning names it. With one source only the pooled metrics are
    logged.

    Args:
        num_samples: prediction samples to show per evaluation.
        num_worst: worst utterances (most word errors) to show per evaluation.
    """

    def __init__(self, num_samples: int = 8, num_worst: int = 8) -> None:
        self.num_samples = num_samples
        self.num_worst = num_worst
        self._reset()

    def _reset(self, names: list[str] | None = None) -> None:
        self.names = names or [""]  # one per source, in the order batches number them
        # (source, words/characters, S/D/I/H); float64 holds integer sums exactly, so pooling adds no rounding
        self.source_counts = torch.zeros(len(self.names), 2, 4, dtype=torch.float64)
        self._samples: list[Scored] = []
        self._worst: list[Scored] = []  # this rank's num_worst worst so far

    @property
    def counts(self) -> torch.Tensor:
        """(2, 4) float64: (S, D, I, H) of words, of characters, over all sources."""
        return self.source_counts.sum(dim=0)

    def _update(self, outputs: dict[str, Any] | None) -> None:
        if not outputs:
            return
        sources = clip_sources(outputs, self.names, len(outputs["ids"]))
        # the text panels name each clip's source where there are several
        groups = [{"source": self.names[i]} if len(self.names) > 1 else {} for i in sources.tolist()]
        scored = [score_utterance(*row) for row in
                  zip(outputs["ids"], outputs["references"], outputs["predictions"], groups, strict=True)]
        per_clip = torch.tensor([(s.word_counts, s.char_counts) for s in scored], dtype=torch.float64)  # (B, 2, 4)
        self.source_counts.index_add_(0, sources, per_clip.view(-1, 2, 4))
        self._samples += scored[:self.num_samples - len(self._samples)]
        self._worst = worst(self._worst + scored, self.num_worst)

    def _finish(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        # every source in one collective: (sources, 2, 4)
        counts = trainer.strategy.reduce(self.source_counts.to(module.device), reduce_op="sum")
        _log_rates(module, stage, counts.sum(dim=0))
        if len(self.names) > 1:
            for name, source_counts in zip(self.names, counts, strict=True):
                if source_counts.any():
                    _log_rates(module, f"{stage}/{name}", source_counts)
                else:  # none of its clips was evaluated: a 0.0 from no words would read as a perfect score
                    rank_zero_warn(f"WERMetrics: no word of {stage} source {name!r} was scored, so {stage}/{name}/wer "
                                   f"is not logged; does trainer.limit_{stage}_batches stop before its clips?")
        worst_overall = worst(_gather_objects(self._worst), self.num_worst)
        if trainer.is_global_zero and not trainer.sanity_checking:
            step = trainer.global_step
            add_text(trainer, f"{stage}/predictions", _table(self._samples), step)
            add_text(trainer, f"{stage}/worst", _table(worst_overall), step)
        self._reset()

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset(source_names(trainer, "val"))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update(outputs)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish(trainer, pl_module, "val")

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset(source_names(trainer, "test"))

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update(outputs)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish(trainer, pl_module, "test")


class CTCHealth(L.Callback):
    """Signs of a CTC run going wrong: blank share of predictions, infeasible and non-finite losses.

    - ``{stage}/blank_share``: share of valid frames whose argmax is the blank. Near 1 early in training
      is normal (CTC first learns "say nothing"); stuck there means the model is not learning.
    - ``train/infeasible_utterances``: utterances whose labels need more frames than the audio gives
      (labels + repeated neighbours > frames): infinite loss, or 0 with ``ctc_zero_infinity``.
    - ``train/nonfinite_losses``: batches whose loss was inf or NaN (their update is skipped).
    Counts are cumulative since the start of this process.
    """

    def __init__(self) -> None:
        self._infeasible = torch.zeros((), dtype=torch.long)
        self._nonfinite = torch.zeros((), dtype=torch.long)
        self._eval_frames = torch.zeros(2)  # blank frames, valid frames

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not isinstance(outputs, dict) or "logits" not in outputs:
            return
        infeasible = ctc_infeasible(batch["labels"], batch["label_lengths"], outputs["frame_lengths"])
        self._infeasible = self._infeasible.to(pl_module.device) + infeasible.sum()
        self._nonfinite = self._nonfinite.to(pl_module.device) + (~torch.isfinite(outputs["loss"])).long()
        # Lightning writes step values only where it updates the logs; each `log` call costs host time (its
        # result collection walks its state), so the values, and the blank count, are made there only.
        if not should_update_logs(trainer):
            return
        blank = pl_module.model.config.pad_token_id
        blank_frames, frames = blank_frame_counts(outputs["logits"], outputs["frame_lengths"], blank)
        pl_module.log("train/blank_share", blank_frames / frames.clamp(min=1))
        pl_module.log("train/infeasible_utterances", self._infeasible.float())
        pl_module.log("train/nonfinite_losses", self._nonfinite.float())

    def _eval_update(self, outputs: dict[str, Any] | None, pl_module: L.LightningModule) -> None:
        if not outputs:
            return
        blank = pl_module.model.config.pad_token_id
        counts = torch.stack(blank_frame_counts(outputs["logits"], outputs["frame_lengths"], blank))
        self._eval_frames = self._eval_frames.to(pl_module.device) + counts

    def _eval_finish(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        frames = trainer.strategy.reduce(self._eval_frames.to(pl_module.device), reduce_op="sum")
        pl_module.log(f"{stage}/blank_share", frames[0] / frames[1].clamp(min=1), sync_dist=True)
        self._eval_frames = torch.zeros(2)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._eval_update(outputs, pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_finish(trainer, pl_module, "val")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._eval_update(outputs, pl_module)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_finish(trainer, pl_module, "test")


class MixedPrecisionHealth(L.Callback):
    """fp16 loss scale (``amp/loss_scale``) and updates skipped for non-finite gradients (``train/skipped_steps``).

    Under ``16-mixed`` the GradScaler skips an update whose gradients overflow and halves the scale; a scale
    that keeps falling, or many skips, means the run is unstable in fp16 (try ``bf16-mixed``). Under bf16 and
    fp32 the module itself skips non-finite updates; they are counted the same way.
    """

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if not should_update_logs(trainer):
            return
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None and scaler.is_enabled():
            pl_module.log("amp/loss_scale", scaler.get_scale())
        pl_module.log("train/skipped_steps", pl_module.skipped_steps.float())


class TrainingMonitor(L.Callback):
    """Throughput in audio seconds per second (all ranks together) and the learning rate.

    Throughput counts every clip's valid samples (padding excluded) over wall time between log points,
    so the data loader, the optimiser and the callbacks are inside the number. It shows in the progress bar.

    Args:
        sample_rate: samples per second of the waveforms in a batch.
    """

    def __init__(self, sample_rate: int = 16000) -> None:
        self.sample_rate = sample_rate
        self._samples = torch.zeros((), dtype=torch.long)
        self._start: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._start is None:
            self._start = time.perf_counter()
        self._samples = self._samples.to(batch["lengths"].device) + batch["lengths"].sum()  # no host sync

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        # Once per update (after all its accumulated batches), only when Lightning will write the logs.
        if not should_update_logs(trainer) or self._start is None:
            return
        for group in optimizer.param_groups:
            pl_module.log("lr" if group.get("name", "body") == "body" else f"lr/{group['name']}", group["lr"])
        elapsed = time.perf_counter() - self._start
        seconds = self._samples.double() / self.sample_rate
        # Every rank reaches this update at the same time, so the sum over ranks is a safe collective.
        pl_module.log("train/audio_seconds_per_second", (seconds / elapsed).float(), prog_bar=True,
                      sync_dist=True, reduce_fx="sum")
        self._samples = torch.zeros_like(self._samples)
        self._start = time.perf_counter()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Validation time is not training throughput: restart the window with the next training batch.
        self._samples = torch.zeros_like(self._samples)
        self._start = None


def blank_frame_counts(
    logits: torch.Tensor, frame_lengths: torch.Tensor, blank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(blank argmax frames, valid frames) of a batch, as float device tensors.

    >>> logits = torch.eye(3)[torch.tensor([[2, 2, 0, 2]])]  # (B=1, T=4, V=3)
    >>> blank_frame_counts(logits, torch.tensor([3]), blank=2)
    (tensor(2.), tensor(3.))
    """
    valid = torch.arange(logits.shape[1], device=logits.device) < frame_lengths[:, None]  # (B, T)
    blanks = (logits.argmax(dim=-1) == blank) & valid
    return blanks.sum().float(), valid.sum().float()


def ctc_infeasible(labels: torch.Tensor, label_lengths: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
    """(B,) bool: CTC cannot align the labels to the frames (each repeated neighbour needs a blank between).

    >>> labels = torch.tensor([[1, 1, 2], [1, 2, -100]])
    >>> ctc_infeasible(labels, torch.tensor([3, 2]), torch.tensor([3, 2])).tolist()
    [True, False]
    """
    valid = torch.arange(labels.shape[1], device=labels.device) < label_lengths[:, None]  # (B, L)
    repeats = ((labels[:, 1:] == labels[:, :-1]) & valid[:, 1:]).sum(dim=1)
    return frame_lengths.to(labels.device) < label_lengths + repeats


def _log_rates(module: L.LightningModule, prefix: str, counts: torch.Tensor) -> None:
    """``<prefix>/wer`` and ``<prefix>/cer`` of counts (2, 4): (S, D, I, H) of words, of characters."""
    # The value is already global; sync_dist only makes Lightning agree (and keeps it quiet about DDP).
    module.log(f"{prefix}/wer", error_rate(counts[0].tolist()), sync_dist=True)
    module.log(f"{prefix}/cer", error_rate(counts[1].tolist()), sync_dist=True)


def clip_sources(outputs: dict[str, Any], names: list[str], count: int) -> torch.Tensor:
    """int64 (B,): the source of each of an evaluation step's ``count`` clips, ``outputs["sources"]``, checked
    against the ``names`` of the sources known (all 0 where there is one source and outputs do not say it)."""
    sources = outputs.get("sources")
    if sources is None and len(names) == 1:
        return torch.zeros(count, dtype=torch.int64)
    # else a source's clips would be counted as another's, or dropped: refuse rather than log wrong rates
    if sources is None:
        raise ValueError(f"the evaluation step's outputs carry no `sources`, but the data names {len(names)} "
                         f"sources {names}: return the batch's `sources` with the ids and predictions")
    if max(sources, default=0) >= len(names):
        raise ValueError(f"a batch names evaluation source {max(sources)}, but only {len(names)} are known "
                         f"({names}): evaluate through the data module, whose source_names() lists them")
    return torch.tensor(sources, dtype=torch.int64)


def source_names(trainer: L.Trainer, stage: str) -> list[str]:
    """The evaluation sources' names as the data module gives them (one unnamed source without one)."""
    names = getattr(getattr(trainer, "datamodule", None), "source_names", None)
    return names(stage) if callable(names) else [""]


def _gather_objects(items: list[Any]) -> list[Any]:
    """All ranks' lists joined (just ``items`` outside DDP)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(items)
    gathered: list[list[Any]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]


def _table(rows: list[Scored]) -> str:
    """A Markdown table for TensorBoard's text panel."""
    lines = ["| id | word errors | reference | prediction |", "|---|---|---|---|"]
    for row in rows:
        clip = row.id.rsplit("/", 1)[-1]
        cells = [f"{row.groups['source']}: {clip}" if "source" in row.groups else clip,
                 f"{row.word_errors} / {row.reference_words}", row.reference, row.prediction]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)


def add_text(trainer: L.Trainer, tag: str, text: str, step: int) -> None:
    """Write ``text`` (Markdown) to TensorBoard's text panel under ``tag``, at ``step``."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_text(tag, text, global_step=step)
