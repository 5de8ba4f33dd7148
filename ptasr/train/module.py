"""The training system: a LightningModule that fine-tunes :class:`~ptasr.Wav2Vec2CTC` with CTC.

The model (``ptasr.model``) is the maths; this module is everything around it: building the model from a
preset or pretrained weights, the CTC loss, optimiser and schedule, freezing, greedy decoding for
validation, and what goes into a checkpoint. Metrics and health reports live in ``ptasr.train.callbacks``.

Every knob here is an ``__init__`` argument, so LightningCLI shows it in ``--print_config`` and the YAML
configs in ``configs/`` set it; the defaults below are plain fallbacks, the recipes are in the YAML.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import lightning as L
import torch

from ptasr.checkpoint import ENTRY, checkpoint_entry, text_side
from ptasr.data.datamodule import check_checkpoint_vocabulary
from ptasr.data.text import TextNormalizer, Vocabulary
from ptasr.decode import greedy_decode
from ptasr.compat import should_update_logs
from ptasr.errors import SettingError
from ptasr.model.config import Wav2Vec2Config
from ptasr.model.loss import ctc_loss
from ptasr.model.wav2vec2 import Wav2Vec2CTC
from ptasr.train.nonfinite import NonFiniteUpdates, TrainingDiverged, skip_update_if
from ptasr.train.optim import drop_gradients, parameter_groups
from ptasr.train.random_state import RandomStateCheckpoint
from ptasr.train.schedules import ScheduleName, make_schedule

__all__ = ["TrainingDiverged", "Wav2Vec2CTCModule"]  # TrainingDiverged: where train.py and callers import it

Batch = dict[str, Any]


class Wav2Vec2CTCModule(L.LightningModule):
    """Fine-tunes (or trains from scratch) a wav2vec 2.0 / XLS-R model with a CTC head.

    Args:
        vocab_size: CTC head size, blank included. Linked from ``data.vocab_size`` by the CLI.
        pad_token_id: the CTC blank (``[PAD]``, as in the HF script). Linked from ``data.pad_token_id``.
        preset: architecture name for ``Wav2Vec2Config.preset`` (ignored when ``pretrained`` is set).
        pretrained: a Hugging Face folder, hub id, fairseq checkpoint or ptasr ``.ckpt``. Its CTC head is kept
            only when it outputs the very symbols of ``vocab_tokens``; otherwise a head for them replaces it,
            with the rows of symbols both have carried over when the source names its symbols (a ptasr
            checkpoint, a folder with vocab.json), see ``Wav2Vec2CTC.from_pretrained``.
        vocab_tokens: the data's vocabulary, in head order; linked from the data module by the CLI.
        config_overrides: ``Wav2Vec2Config`` fields applied on top of the preset or pretrained config:
            SpecAugment (``mask_time_prob`` ...), LayerDrop, dropouts, CTC ``ctc_loss_reduction`` ("mean" or
            "sum") and ``ctc_zero_infinity`` -- these travel with the model config into every export.
        freeze_feature_encoder: do not train the conv stack and run it without autograd (HF script, fairseq).
        freeze_transformer_steps: for the first N optimiser updates only the CTC head learns (fairseq's
            ``freeze_finetune_updates``), so a random head does not wreck the pretrained encoder.
        gradient_checkpointing: keep only each transformer layer's input and recompute the layer in the backward
            pass: activation memory no longer grows with the depth, for one more forward pass of the layers
            (``benchmarks/train_memory.py``).
        compile: ``torch.compile`` each transformer layer and the conv stack in place (``compile_blocks``).
        optimizer: "adamw" (decoupled weight decay, HF Trainer's choice) or "adam".
        lr: peak learning rate of the encoder (and of the head unless ``head_lr`` is set).
        head_lr: a separate peak learning rate for the CTC head, or ``None`` for ``lr``.
        betas, eps: Adam moments and epsilon.
        weight_decay: applied to matrices only; biases and norm parameters never decay (as HF Trainer).
        fused: fused Adam kernel; ``None`` picks it unless fp16 loss scaling is active (gradients that a
            fused optimiser unscales internally cannot be clipped before the step).
        schedule: "linear" (HF warm-up then linear decay to 0), "tri_stage" (fairseq), or "constant".
        warmup_steps: updates of linear warm-up (both schedules).
        hold_steps: tri_stage: updates held at the peak after warm-up.
        decay_steps: tri_stage: updates of exponential decay; ``None`` decays over the rest of training.
        init_lr_scale, final_lr_scale: tri_stage: start and end multipliers of the peak learning rate.
        total_steps: updates the schedule spans; ``None`` uses the Trainer's (``max_steps`` or epochs).
        nonfinite_patience: end the run with :class:`TrainingDiverged` once this many consecutive updates had
            non-finite gradients (each is skipped, see ``train/skipped_steps``); ``None`` or 0 never ends it.
            Checked when Lightning writes its logs (every ``trainer.log_every_n_steps`` updates) and at the end
            of each epoch, so the run stops at the first such point after the patience ran out.
    """

    def __init__(
        self,
        vocab_size: int,
        pad_token_id: int,
        preset: str = "tiny",
        pretrained: str | None = None,
        vocab_tokens: list[str] | None = None,
        config_overrides: dict[str, Any] | None = None,
        freeze_feature_encoder: bool = True,
        freeze_transformer_steps: int = 0,
        gradient_checkpointing: bool = False,
        compile: bool = False,
        optimizer: Literal["adamw", "adam"] = "adamw",
        lr: float = 1e-4,
        head_lr: float | None = None,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        fused: bool | None = None,
        schedule: ScheduleName = "linear",
        warmup_steps: int = 0,
        hold_steps: int = 0,
        decay_steps: int | None = None,
        init_lr_scale: float = 0.01,
        final_lr_scale: float = 0.05,
        total_steps: int | None = None,
        nonfinite_patience: int | None = 100,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        overrides = dict(config_overrides or {}, pad_token_id=pad_token_id)
        if pretrained:
            self.model = Wav2Vec2CTC.from_pretrained(pretrained, vocab_size=vocab_size, vocab=vocab_tokens,
                                                     **overrides)
        else:
            self.model = Wav2Vec2CTC(Wav2Vec2Config.preset(preset, vocab_size=vocab_size, **overrides))
        if freeze_feature_encoder:
            self.model.freeze_feature_encoder()
        if gradient_checkpointing:
            self.model.set_gradient_checkpointing(True)
        # Text side, needed to decode predictions and saved in every checkpoint. Set in `setup` from the
        # data module, or restored from a checkpoint by `on_load_checkpoint`.
        self.vocab: Vocabulary | None = None
        self.normalizer: TextNormalizer | None = None
        # Updates skipped for non-finite gradients, counted on device; ends the run after nonfinite_patience in a row.
        self.nonfinite = NonFiniteUpdates(nonfinite_patience)
        self._compiled = False
        self._grad_norm: torch.Tensor | None = None
        self._dropped_layers: set[int] | None = None  # skipped by LayerDrop in all batches of this update so far

    @property
    def skipped_steps(self) -> torch.Tensor:
        """Optimiser updates skipped for non-finite gradients (a 0-dim device tensor; logged by MixedPrecisionHealth)."""
        return self.nonfinite.skipped

    # --- set-up --------------------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None:
            self.vocab, self.normalizer = datamodule.vocab, datamodule.normalizer
        if self.vocab is not None and len(self.vocab) != self.model.config.vocab_size:
            raise SettingError(
                f"the data's vocabulary has {len(self.vocab)} tokens but the CTC head has "
                f"{self.model.config.vocab_size}; link data.vocab_size to model.vocab_size (train.py does)"
            )
        filters, config = getattr(datamodule, "filters", None), self.model.config
        if filters is not None and (filters.conv_kernel, filters.conv_stride) != (config.conv_kernel, config.conv_stride):
            raise SettingError(
                f"the data filtered clips for a conv stack with kernels {filters.conv_kernel} and strides "
                f"{filters.conv_stride}, but the model has {config.conv_kernel} and {config.conv_stride}; "
                f"train.py links them from the model (a pretrained model's config.json must be readable when "
                f"the arguments are parsed: a local folder, or a hub id already downloaded)"
            )

    def configure_model(self) -> None:
        # Lightning's hook for model-changing set-up, called before the strategy wraps the model (DDP).
        if self.hparams.compile and not self._compiled:
            self.model.compile_blocks()  # in place, so checkpoints keep plain parameter names
            self._compiled = True

    def configure_callbacks(self) -> list[L.Callback]:
        # Part of what this module's checkpoints are, whatever the config's callbacks: the random streams.
        return [RandomStateCheckpoint()]

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer_class = torch.optim.AdamW if hp.optimizer == "adamw" else torch.optim.Adam
        optimizer = optimizer_class(parameter_groups(self.model, hp.lr, hp.head_lr, hp.weight_decay),
                                    betas=tuple(hp.betas), eps=hp.eps, fused=self._use_fused())
        schedule = {k: hp[k] for k in ("warmup_steps", "hold_steps", "decay_steps", "init_lr_scale", "final_lr_scale")}
        total_steps = hp.total_steps or int(self.trainer.estimated_stepping_batches)
        multiplier = make_schedule(hp.schedule, total_steps=total_steps, **schedule)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _use_fused(self) -> bool:
        if self.hparams.fused is not None:
            return self.hparams.fused
        # Fused Adam is fastest on GPU and CPU and can skip a step on device (`found_inf`), but with fp16
        # loss scaling it unscales inside `step`, after clipping would have to happen.
        return self._grad_scaler() is None

    def _grad_scaler(self) -> torch.amp.GradScaler | None:
        return getattr(self.trainer.precision_plugin, "scaler", None)

    # --- steps ---------------------------------------------------------------------------------------------

    def forward(
        self, waveforms: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S) float waveforms, (B,) int64 samples -> logits (B, T, V), frame lengths (B,)."""
        return self.model(waveforms, lengths, generator)

    def training_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor] | None:
        batch_size = batch["waveforms"].shape[0]
        if batch_size == 0:
            return self._empty_batch_loss()
        # LayerDrop the same on every DDP rank (their gradients meet in one all-reduce); SpecAugment per rank.
        layers = self.model.draw_layers(self._step_generator(batch_idx))
        logits, frame_lengths = self.model(batch["waveforms"], batch["lengths"], self._mask_generator(batch_idx),
                                           layers=layers)
        # Layers LayerDrop skipped in every batch of this update: their all-zero gradients are dropped before
        # the optimiser step (see on_before_optimizer_step).
        dropped = {index for index, runs in enumerate(layers) if not runs}
        self._dropped_layers = dropped if self._dropped_layers is None else self._dropped_layers & dropped
        loss = self._ctc_loss(logits, frame_lengths, batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        # Extra outputs go to the callbacks (CTC health); Lightning detaches them.
        return {"loss": loss, "logits": logits, "frame_lengths": frame_lengths, "dropped_layers": sorted(dropped)}

    def validation_step(self, batch: Batch, batch_idx: int) -> dict[str, Any] | None:
        return self._evaluate(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> dict[str, Any] | None:
        return self._evaluate(batch, "test")

    def predict_step(self, batch: Batch, batch_idx: int) -> list[dict[str, str]]:
        if batch["waveforms"].shape[0] == 0:
            return []
        logits, frame_lengths = self(batch["waveforms"], batch["lengths"])
        return [{"id": i, "text": text} for i, text in zip(batch["ids"], self.decode(logits, frame_lengths))]

    def _evaluate(self, batch: Batch, stage: str) -> dict[str, Any] | None:
        batch_size = batch["waveforms"].shape[0]
        if batch_size == 0:
            # No readable clip (or a spare rank's empty batch). Under DDP the epoch-end all-reduce of the loss
            # needs it logged on every rank, so log it with weight 0, which leaves the weighted mean unchanged.
            if self.trainer.world_size > 1:
                self.log(f"{stage}/loss", torch.zeros((), device=self.device), batch_size=0, sync_dist=True)
            return None
        logits, frame_lengths = self(batch["waveforms"], batch["lengths"])
        loss = self._ctc_loss(logits, frame_lengths, batch)
        self.log(f"{stage}/loss", loss, batch_size=batch_size, sync_dist=True)
        return {"loss": loss, "logits": logits, "frame_lengths": frame_lengths, "ids": batch["ids"],
                "predictions": self.decode(logits, frame_lengths), "references": batch["texts"]}

    def decode(self, logits: torch.Tensor, frame_lengths: torch.Tensor) -> list[str]:
        """Greedy CTC transcripts of a batch of logits (B, T, V)."""
        if self.vocab is None:
            raise RuntimeError(
                "no vocabulary to decode with: run through a Trainer with the data module, or load a checkpoint"
            )
        blank = self.model.config.pad_token_id
        return [self.vocab.decode(ids) for ids in greedy_decode(logits, frame_lengths, blank)]

    def _ctc_loss(self, logits: torch.Tensor, frame_lengths: torch.Tensor, batch: Batch) -> torch.Tensor:
        config = self.model.config
        return ctc_loss(logits, frame_lengths, batch["labels"], batch["label_lengths"], blank=config.pad_token_id,
                        reduction=config.ctc_loss_reduction, zero_infinity=config.ctc_zero_infinity)

    def _empty_batch_loss(self) -> torch.Tensor | None:
        # Every clip of the batch was unreadable. Alone, skip it (Lightning skips backward and the update).
        # Under DDP the other ranks wait in the gradient all-reduce, so join it with zero gradients instead.
        if self.trainer.world_size == 1:
            return None
        return sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0

    def _step_generator(self, batch_idx: int) -> torch.Generator:
        # LayerDrop's randomness, derived from (seed, update, batch), never from global RNG state: identical on
        # every DDP rank (they must drop the same layers) and after a resume.
        # A CPU generator: the model draws on the generator's device and copies, so no host sync.
        # The seed is the CLI's `seed_everything` (which exports PL_GLOBAL_SEED to every rank).
        return _generator(int(os.environ.get("PL_GLOBAL_SEED", 0)), self.global_step, batch_idx)

    def _mask_generator(self, batch_idx: int) -> torch.Generator:
        # SpecAugment's randomness, from (seed, update, batch, rank): exact after a resume like LayerDrop's, but
        # each DDP rank masks its own spans (ranks whose batches have equal lengths would otherwise mask alike).
        return _generator(int(os.environ.get("PL_GLOBAL_SEED", 0)), self.global_step, batch_idx, self.global_rank)

    # --- around the optimiser step -------------------------------------------------------------------------

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Gradients here are final: accumulated, all-reduced across ranks, and unscaled under fp16.
        if self.global_step < self.hparams.freeze_transformer_steps:  # only the CTC head learns
            drop_gradients(p for name, p in self.model.named_parameters() if not name.startswith("lm_head."))
        self._drop_skipped_layer_gradients()
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        self._grad_norm = None
        if not grads:
            return
        grad_norm = torch.nn.utils.get_total_norm(grads)  # before clipping, as HF logs it
        self.log("train/grad_norm", grad_norm)
        self._grad_norm = grad_norm  # reused by the clipping that follows
        nonfinite = ~torch.isfinite(grad_norm)
        self.nonfinite.record(nonfinite, self.global_step)
        if self._grad_scaler() is None:  # fp16: the GradScaler skips the step itself and lowers the scale
            skip_update_if(nonfinite, optimizer)
        # Reading a device value stalls the host until the device catches up, so look only where Lightning
        # reads the logged values anyway. The gradients were all-reduced, so every DDP rank holds the same
        # counts and raises at the same update: no rank is left waiting in a collective.
        if should_update_logs(self.trainer):
            self.nonfinite.check()

    def on_train_epoch_end(self) -> None:
        self.nonfinite.check()  # also when logging is off (log_every_n_steps=0)

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip by global norm (Trainer's ``gradient_clip_val``) with the norm measured just before.

        Lightning's own clipping refuses fused optimisers under any mixed precision, since it cannot tell bf16
        (no loss scale) from fp16 (scaled gradients that a fused step unscales itself). Here the gradients are
        always unscaled: fp16 runs use the unfused optimiser, whose gradients Lightning unscales before this.
        """
        if not gradient_clip_val:
            return
        if gradient_clip_algorithm not in (None, "norm") or self._grad_norm is None:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        if self._grad_scaler() is not None and optimizer.defaults.get("fused"):
            raise SettingError("model.fused=true cannot clip fp16-scaled gradients; use precision bf16-mixed or fused=null")
        parameters = [p for p in self.parameters() if p.grad is not None]
        torch.nn.utils.clip_grads_with_norm_(parameters, gradient_clip_val, self._grad_norm)  # no host sync
        self._grad_norm = None

    def _drop_skipped_layer_gradients(self) -> None:
        """A layer LayerDrop skipped in the whole update got all-zero gradients (so that DDP needs no
        ``find_unused_parameters``); remove them, so that AdamW neither decays nor moves it with its momentum,
        as for a layer that got no gradient at all. Every rank drops the same layers."""
        layers = self.model.wav2vec2.encoder.layers
        drop_gradients(p for index in self._dropped_layers or () for p in layers[index].parameters())
        self._dropped_layers = None

    # --- checkpoints ---------------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Everything needed to rebuild the model and its text side from the .ckpt alone (transcribe, export).
        # (RandomStateCheckpoint adds the random streams to the same entry.)
        checkpoint.setdefault(ENTRY, {}).update(checkpoint_entry(self.model.config, self.vocab, self.normalizer))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Outside a Trainer (``load_from_checkpoint`` for inference) take the text side from the checkpoint.
        # Inside one, a checkpoint whose vocabulary differs from the data's is refused.
        saved = checkpoint.get(ENTRY) or {}
        vocab, normalizer = text_side(saved)
        if self.vocab is not None and vocab is not None:
            # Before Lightning loads the weights: a head of another size would fail there with a bare shape error.
            check_checkpoint_vocabulary(vocab, self.vocab)
        if self.vocab is None and vocab is not None:
            self.vocab, self.normalizer = vocab, normalizer


def _generator(*key: int) -> torch.Generator:
    """A CPU generator seeded by a tuple of ints (hashing ints is the same in every process)."""
    return torch.Generator().manual_seed(hash(key) & 0x7FFF_FFFF_FFFF_FFFF)
