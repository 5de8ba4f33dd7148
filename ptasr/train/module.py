"""The training system: a LightningModule that fine-tunes :class:`~ptasr.Wav2Vec2CTC` with CTC.

The model (``ptasr.model``) is the maths; this module is everything around it: building the model from a
preset or pretrained weights, the CTC loss, optimiser and schedule, freezing, greedy decoding for
validation, and what goes into a checkpoint. Metrics and health reports live in ``ptasr.train.callbacks``.

Every knob here is an ``__init__`` argument, so LightningCLI shows it in ``--print_config`` and the YAML
configs in ``configs/`` set it; the defaults below are plain fallbacks, the recipes are in the YAML.
"""

from __future__ import annotations

import os
import random
from typing import Any, Literal

import lightning as L
import numpy as np
import torch

from ptasr.checkpoint import ENTRY, checkpoint_entry, text_side
from ptasr.data.datamodule import check_checkpoint_vocabulary
from ptasr.data.text import TextNormalizer, Vocabulary
from ptasr.decode import greedy_decode
from ptasr.errors import SettingError, UserError
from ptasr.model.config import Wav2Vec2Config
from ptasr.model.loss import ctc_loss
from ptasr.model.wav2vec2 import Wav2Vec2CTC
from ptasr.train.schedules import ScheduleName, make_schedule

Batch = dict[str, Any]


class TrainingDiverged(UserError, RuntimeError):
    """Too many consecutive updates had non-finite gradients (``nonfinite_patience``): the run cannot recover."""


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
            pass: XLS-R 300m at 16 clips peaks at 4.9 GiB instead of 8.8 (``benchmarks/train_memory.py``), for
            one more forward pass of the layers.
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
        # Optimiser updates whose gradients were not finite (and were therefore skipped); a device tensor so
        # counting needs no host sync. Logged by the MixedPrecisionHealth callback.
        self.register_buffer("skipped_steps", torch.zeros((), dtype=torch.long), persistent=False)
        # The current run of consecutive skipped updates, and the update (1-based) at which a run first reached
        # nonfinite_patience (-1: never). Kept on device like skipped_steps; read only by the lazy check.
        self.register_buffer("nonfinite_streak", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("diverged_at", torch.full((), -1, dtype=torch.long), persistent=False)
        self._compiled = False
        self._grad_norm: torch.Tensor | None = None
        self._dropped_layers: set[int] | None = None  # skipped by LayerDrop in all batches of this update so far
        self._rng_to_restore: dict[str, Any] | None = None  # from a checkpoint, for the first resumed update

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

    def configure_model(self) -> None:
        # Lightning's hook for model-changing set-up, called before the strategy wraps the model (DDP).
        if self.hparams.compile and not self._compiled:
            self.model.compile_blocks()  # in place, so checkpoints keep plain parameter names
            self._compiled = True

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        head = {id(p) for p in self.model.lm_head.parameters()}
        # Group parameters by (learning rate, weight decay); groups with equal settings merge.
        groups: dict[tuple[str, float], list[torch.nn.Parameter]] = {}
        for name, parameter in self.model.named_parameters():
            if not parameter.requires_grad:
                continue
            part = "head" if id(parameter) in head and hp.head_lr is not None else "body"
            decay = 0.0 if _is_bias_or_norm(name, parameter) else hp.weight_decay
            groups.setdefault((part, decay), []).append(parameter)
        param_groups = [
            {"params": params, "name": part, "lr": hp.head_lr if part == "head" else hp.lr, "weight_decay": decay}
            for (part, decay), params in groups.items()
        ]
        optimizer_class = torch.optim.AdamW if hp.optimizer == "adamw" else torch.optim.Adam
        optimizer = optimizer_class(param_groups, betas=tuple(hp.betas), eps=hp.eps, fused=self._use_fused())
        total_steps = hp.total_steps or int(self.trainer.estimated_stepping_batches)
        multiplier = make_schedule(
            hp.schedule,
            total_steps=total_steps,
            warmup_steps=hp.warmup_steps,
            hold_steps=hp.hold_steps,
            decay_steps=hp.decay_steps,
            init_lr_scale=hp.init_lr_scale,
            final_lr_scale=hp.final_lr_scale,
        )
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
        return {
            "loss": loss,
            "logits": logits,
            "frame_lengths": frame_lengths,
            "predictions": self.decode(logits, frame_lengths),
            "references": batch["texts"],
            "ids": batch["ids"],
        }

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
        return ctc_loss(
            logits,
            frame_lengths,
            batch["labels"],
            batch["label_lengths"],
            blank=config.pad_token_id,
            reduction=config.ctc_loss_reduction,
            zero_infinity=config.ctc_zero_infinity,
        )

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
        if self.global_step < self.hparams.freeze_transformer_steps:
            self._drop_body_gradients()
        self._drop_skipped_layer_gradients()
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        self._grad_norm = None
        if not grads:
            return
        grad_norm = torch.nn.utils.get_total_norm(grads)  # before clipping, as HF logs it
        self.log("train/grad_norm", grad_norm)
        self._grad_norm = grad_norm  # reused by the clipping that follows
        nonfinite = ~torch.isfinite(grad_norm)
        self.skipped_steps += nonfinite
        self._count_nonfinite_streak(nonfinite)
        self._skip_update_if(nonfinite, optimizer)
        # Reading a device value stalls the host until the device catches up, so look only where Lightning
        # reads the logged values anyway. The gradients were all-reduced, so every DDP rank holds the same
        # counts and raises at the same update: no rank is left waiting in a collective.
        if self.trainer._logger_connector.should_update_logs:
            self._check_nonfinite_patience()

    def on_train_epoch_end(self) -> None:
        self._check_nonfinite_patience()  # also when logging is off (log_every_n_steps=0)

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
        if self._grad_scaler() is not None and getattr(optimizer, "_step_supports_amp_scaling", False):
            raise SettingError("model.fused=true cannot clip fp16-scaled gradients; use precision bf16-mixed or fused=null")
        parameters = [p for p in self.parameters() if p.grad is not None]
        torch.nn.utils.clip_grads_with_norm_(parameters, gradient_clip_val, self._grad_norm)  # no host sync
        self._grad_norm = None

    def _drop_skipped_layer_gradients(self) -> None:
        """A layer LayerDrop skipped in the whole update got all-zero gradients (so that DDP needs no
        ``find_unused_parameters``); remove them, so that AdamW neither decays nor moves it with its momentum,
        as for a layer that got no gradient at all. Every rank drops the same layers."""
        layers = self.model.wav2vec2.encoder.layers
        for index in self._dropped_layers or ():
            for parameter in layers[index].parameters():
                parameter.grad = None
        self._dropped_layers = None

    def _drop_body_gradients(self) -> None:
        # Adam leaves parameters without a gradient untouched (no moment update, no decay): frozen.
        head = {id(p) for p in self.model.lm_head.parameters()}
        for parameter in self.model.parameters():
            if id(parameter) not in head:
                parameter.grad = None

    def _count_nonfinite_streak(self, nonfinite: torch.Tensor) -> None:
        """Advance the streak of skipped updates on device, and note the update at which it hit the patience."""
        self.nonfinite_streak.copy_((self.nonfinite_streak + 1) * nonfinite)  # back to 0 after a finite update
        patience = self.hparams.nonfinite_patience
        if patience:
            first = (self.nonfinite_streak == patience) & (self.diverged_at < 0)
            self.diverged_at.copy_(torch.where(first, self.global_step + 1, self.diverged_at))

    def _check_nonfinite_patience(self) -> None:
        update = int(self.diverged_at)  # host sync
        if update < 0:
            return
        patience = self.hparams.nonfinite_patience
        raise TrainingDiverged(
            f"training diverged: the {patience} updates up to update {update} all had non-finite (inf/NaN) "
            f"gradients and were skipped ({int(self.skipped_steps)} skipped in all). Lower model.lr (or lengthen "
            f"model.warmup_steps), use trainer.precision=bf16-mixed instead of 16-mixed, or check the data for "
            f"broken clips; model.nonfinite_patience sets how many skipped updates in a row end a run"
        )

    def _skip_update_if(self, nonfinite: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Skip this update when the gradients are not finite, on device where possible."""
        if self._grad_scaler() is not None:
            return  # fp16: the GradScaler skips the step itself and lowers the scale
        optimizer = getattr(optimizer, "_optimizer", optimizer)  # unwrap a LightningOptimizer
        if optimizer.defaults.get("fused"):
            # Fused Adam reads `found_inf` and leaves parameters, moments and step counts unchanged when it
            # is non-zero: the GradScaler's own mechanism, with no host sync.
            optimizer.found_inf = nonfinite.float()
        elif nonfinite:  # host sync, only on the unfused path
            optimizer.zero_grad(set_to_none=True)

    # --- checkpoints ---------------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Everything needed to rebuild the model and its text side from the .ckpt alone (transcribe, export).
        checkpoint[ENTRY] = {
            **checkpoint_entry(self.model.config, self.vocab, self.normalizer),
            # Lightning saves no RNG state, and resuming re-seeds from `seed_everything`: without these the
            # dropout masks after a resume would differ from those of an uninterrupted run.
            "rng": _rng_states(),
        }

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
        # Only a Trainer resuming a fit continues the random streams; inference loading leaves them alone.
        if self._trainer is not None and self.trainer.state.fn == "fit" and saved.get("rng") is not None:
            self._rng_to_restore = saved["rng"]

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        # The saved random states are restored just before the first update after a resume, not on loading:
        # between the two, Lightning starts a new iterator over the train loader, and torch's DataLoader
        # draws its worker base seed from the global RNG -- a draw the uninterrupted run made at the start
        # of the epoch, before a mid-epoch checkpoint was taken. (From a checkpoint at the very end of an
        # epoch the uninterrupted run draws again before its next update and the resumed one does not,
        # until the train loader gets a generator of its own; tests/test_resume.py marks that case.)
        if self._rng_to_restore is not None:
            _set_rng_states(self._rng_to_restore)
            self._rng_to_restore = None


def _generator(*key: int) -> torch.Generator:
    """A CPU generator seeded by a tuple of ints (hashing ints is the same in every process)."""
    return torch.Generator().manual_seed(hash(key) & 0x7FFF_FFFF_FFFF_FFFF)


def _rng_states() -> dict[str, Any]:
    """The global random states (torch CPU and CUDA, ``random``, numpy) as tensors, ints and lists only,
    so that the checkpoint still loads with ``torch.load(weights_only=True)``."""
    numpy_state = np.random.get_state(legacy=False)
    states = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {**numpy_state, "state": {"key": numpy_state["state"]["key"].tolist(),
                                           "pos": numpy_state["state"]["pos"]}},
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    numpy_state = states["numpy"]
    key = np.asarray(numpy_state["state"]["key"], dtype=np.uint32)
    np.random.set_state({**numpy_state, "state": {"key": key, "pos": numpy_state["state"]["pos"]}})
    # One state per device: restored only onto the same number of GPUs (a resume on other hardware cannot
    # reproduce the GPU streams anyway).
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def _is_bias_or_norm(name: str, parameter: torch.nn.Parameter) -> bool:
    """Parameters exempt from weight decay: biases, norm gains and other vectors (as HF Trainer), plus the
    magnitude ``g`` of the positional conv's weight norm, which is a gain too.

    >>> _is_bias_or_norm("lm_head.bias", torch.nn.Parameter(torch.zeros(3)))
    True
    >>> _is_bias_or_norm("encoder.pos_conv_embed.conv.parametrizations.weight.original0",
    ...                  torch.nn.Parameter(torch.zeros(1, 1, 3)))
    True
    >>> _is_bias_or_norm("encoder.layers.0.attention.q_proj.weight", torch.nn.Parameter(torch.zeros(3, 3)))
    False
    """
    return (
        parameter.ndim < 2
        or name.endswith((".bias", ".weight_g", ".parametrizations.weight.original0"))
        or "norm" in name
    )
