"""The training system: a LightningModule that fine-tunes :class:`~ptasr.Wav2Vec2CTC` with CTC.

The model (``ptasr.model``) is the maths; this module is the run around it, top-down: set-up, the steps (CTC
loss, greedy decoding for validation), the optimiser step, checkpoints. Its pieces sit beside it in
``ptasr.train``: ``build`` (the model), ``optim`` (optimiser, schedule), ``speed`` (speed perturbation),
``step_randomness`` (LayerDrop's, SpecAugment's and the speeds' generators), ``gradients`` (skipped layers,
clipping), ``nonfinite`` (skipped updates, divergence), ``empty_batches``, ``data_match`` (data against model
and checkpoint), ``random_state`` and ``sharding`` (the sharded strategy, which ``configure_model`` applies).
Metrics and health reports live in ``ptasr.train.callbacks``.

Every knob here is an ``__init__`` argument, so LightningCLI shows it in ``--print_config`` and the YAML
configs in ``configs/`` set it; the defaults below are plain fallbacks, the recipes are in the YAML.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch

from ptasr import compat
from ptasr.compat import should_update_logs
from ptasr.data.text import TextNormalizer, Vocabulary
from ptasr.decoding.greedy import greedy_decode
from ptasr.errors import CheckpointError
from ptasr.model.loss import config_ctc_loss
from ptasr.recognition.trained_model import ENTRY, checkpoint_entry
from ptasr.train.build import build_model
from ptasr.train.cpu_threads import CPUThreadsUnderLoad
from ptasr.train.data_match import check_data_fits_model, text_side_after_loading
from ptasr.train.empty_batches import empty_training_loss, log_empty_evaluation_loss
from ptasr.train.gradients import clip_with_norm, drop_skipped_layer_gradients, dropped_layers
from ptasr.train.low_precision import LowPrecisionProbe
from ptasr.train.nonfinite import NonFiniteUpdates, TrainingDiverged, nonfinite_weights
from ptasr.train.optim import drop_gradients, optimizer_and_schedule
from ptasr.train.random_state import RandomStateCheckpoint
from ptasr.train.schedules import ScheduleName
from ptasr.train.sharding import ShardedStrategy, full_norm
from ptasr.train.speed import check_speeds, draw_speeds, perturb_speed
from ptasr.train.step_randomness import layerdrop_generator, spec_augment_generator, speed_generator

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
        speed_perturbation: speeds each training clip is played at, one drawn per clip and update (e.g.
            ``[0.9, 1.0, 1.1]``, Kaldi's and NeMo's choice; see ``ptasr.train.speed``); ``None``: off. Training
            only: validation, test and transcription hear the clips as they are.
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
        # the model
        vocab_size: int, pad_token_id: int, preset: str = "tiny", pretrained: str | None = None,
        vocab_tokens: list[str] | None = None, config_overrides: dict[str, Any] | None = None,
        speed_perturbation: list[float] | None = None,
        freeze_feature_encoder: bool = True, freeze_transformer_steps: int = 0,
        gradient_checkpointing: bool = False, compile: bool = False,
        # the optimiser
        optimizer: Literal["adamw", "adam"] = "adamw", lr: float = 1e-4, head_lr: float | None = None,
        betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
        fused: bool | None = None,
        # the learning-rate schedule
        schedule: ScheduleName = "linear", warmup_steps: int = 0, hold_steps: int = 0,
        decay_steps: int | None = None, init_lr_scale: float = 0.01, final_lr_scale: float = 0.05,
        total_steps: int | None = None,
        # the divergence guard
        nonfinite_patience: int | None = 100,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.speeds = check_speeds(speed_perturbation)
        self.model = build_model(vocab_size, pad_token_id, preset, pretrained, vocab_tokens, config_overrides,
                                 freeze_feature_encoder, gradient_checkpointing)
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
        check_data_fits_model(self.vocab, getattr(datamodule, "filters", None), self.model.config)

    def configure_model(self) -> None:
        # Lightning's hook for model-changing set-up, called before the strategy wraps the model (DDP).
        if self.hparams.compile and not self._compiled:
            self.model.compile_blocks()  # in place, so checkpoints keep plain parameter names
            self._compiled = True
        # load_from_checkpoint calls this hook too, with no Trainer: nothing to shard then
        trainer = compat.attached_trainer(self)
        strategy = trainer.strategy if trainer is not None else None
        if isinstance(strategy, ShardedStrategy):  # its mesh exists from here on
            strategy.shard(self.model)

    def configure_callbacks(self) -> list[L.Callback]:
        # Part of every run, whatever the config's callbacks: the random streams in its checkpoints;
        # in bf16/fp16 on a CPU, the kernels this machine computes wrongly run in float32; on a CPU whose cores
        # other processes take later, a thread team no larger than the CPUs they leave.
        return [RandomStateCheckpoint(), LowPrecisionProbe(), CPUThreadsUnderLoad()]

    def configure_optimizers(self) -> dict[str, Any]:
        total_steps = self.hparams.total_steps or int(self.trainer.estimated_stepping_batches)
        return optimizer_and_schedule(self.model, self.hparams, total_steps, self._scaled())

    def _scaled(self) -> bool:  # fp16 loss scaling is active (its GradScaler)
        return getattr(self.trainer.precision_plugin, "scaler", None) is not None

    # --- steps ---------------------------------------------------------------------------------------------

    def forward(
        self, waveforms: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S) float waveforms, (B,) int64 samples -> logits (B, T, V), frame lengths (B,)."""
        return self.model(waveforms, lengths, generator)

    def transfer_batch_to_device(self, batch: Batch, device: torch.device, dataloader_idx: int) -> Batch:
        moved = super().transfer_batch_to_device(batch, device, dataloader_idx)
        # The lengths stay on the host too: the model plans its packed frames from them there, so its forward
        # pass never waits for the device (ptasr.model.packing).
        if isinstance(batch, dict) and "lengths" in batch:
            moved["host_lengths"] = batch["lengths"]
        return moved

    def training_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor] | None:
        batch_size = batch["waveforms"].shape[0]
        if batch_size == 0:
            return empty_training_loss(self)
        # LayerDrop the same on every DDP rank (their gradients meet in one all-reduce); SpecAugment per rank.
        layers = self.model.draw_layers(self._step_generator(batch_idx))
        waveforms, lengths = self._perturbed(batch, batch_idx)
        logits, frame_lengths = self.model(waveforms, lengths, self._mask_generator(batch_idx), layers=layers)
        # Layers LayerDrop skipped in every batch of this update: their all-zero gradients are dropped before
        # the optimiser step (see on_before_optimizer_step).
        dropped = dropped_layers(layers)
        self._dropped_layers = dropped if self._dropped_layers is None else self._dropped_layers & dropped
        loss = config_ctc_loss(self.model.config, logits, frame_lengths, batch["labels"], batch["label_lengths"])
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
        if batch_size == 0:  # no readable clip, or a spare DDP rank's share
            log_empty_evaluation_loss(self, f"{stage}/loss")
            return None
        logits, frame_lengths = self(batch["waveforms"], _lengths(batch))
        loss = config_ctc_loss(self.model.config, logits, frame_lengths, batch["labels"], batch["label_lengths"])
        self.log(f"{stage}/loss", loss, batch_size=batch_size, sync_dist=True)
        return {"loss": loss, "logits": logits, "frame_lengths": frame_lengths, "ids": batch["ids"],
                "predictions": self.decode(logits, frame_lengths), "references": batch["texts"],
                "sources": batch.get("sources")}  # which of several validation sources (WERMetrics)

    def decode(self, logits: torch.Tensor, frame_lengths: torch.Tensor) -> list[str]:
        """Greedy CTC transcripts of a batch of logits (B, T, V)."""
        if self.vocab is None:
            raise RuntimeError(
                "no vocabulary to decode with: run through a Trainer with the data module, or load a checkpoint"
            )
        blank = self.model.config.pad_token_id
        return [self.vocab.decode(ids) for ids in greedy_decode(logits, frame_lengths, blank)]

    def _perturbed(self, batch: Batch, batch_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's waveforms (B, S') and host lengths (B,), each clip at its drawn speed (if any)."""
        if not self.speeds:
            return batch["waveforms"], _lengths(batch)
        config = self.model.config
        generator = speed_generator(self.global_step, batch_idx, self.global_rank)
        speeds = draw_speeds(self.speeds, batch["texts"], _lengths(batch), config.conv_kernel, config.conv_stride,
                             generator)
        return perturb_speed(batch["waveforms"], _lengths(batch), speeds)

    def _step_generator(self, batch_idx: int) -> torch.Generator:  # LayerDrop's: the same on every rank
        return layerdrop_generator(self.global_step, batch_idx)

    def _mask_generator(self, batch_idx: int) -> torch.Generator:  # SpecAugment's: each rank its own
        return spec_augment_generator(self.global_step, batch_idx, self.global_rank)

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
        grad_norm = full_norm(torch.nn.utils.get_total_norm(grads))  # before clipping, as HF logs it
        if should_update_logs(self.trainer):  # where Lightning writes step values: each `log` costs host time
            self.log("train/grad_norm", grad_norm)
        self._grad_norm = grad_norm  # reused by the clipping that follows
        # Skipped if not finite (fp16: by its GradScaler); checked where Lightning syncs for its logs anyway.
        self.nonfinite.update(grad_norm, self.global_step, optimizer, skip=not self._scaled(),
                              check=should_update_logs(self.trainer))

    def on_train_epoch_end(self) -> None:
        self.nonfinite.check()  # also when logging is off (log_every_n_steps=0)

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Clip by global norm (Trainer's ``gradient_clip_val``) with the norm measured just before
        (``ptasr.train.gradients`` says why not Lightning's own clipping)."""
        if not gradient_clip_val:
            return
        if gradient_clip_algorithm not in (None, "norm") or self._grad_norm is None:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        parameters = [p for p in self.parameters() if p.grad is not None]
        clip_with_norm(parameters, optimizer, gradient_clip_val, self._grad_norm, self._scaled())
        self._grad_norm = None

    def _drop_skipped_layer_gradients(self) -> None:
        drop_skipped_layer_gradients(self.model.wav2vec2.encoder.layers, self._dropped_layers)
        self._dropped_layers = None  # the next update starts afresh

    # --- checkpoints ---------------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Everything needed to rebuild the model and its text side from the .ckpt alone (transcribe, export).
        # (RandomStateCheckpoint adds the random streams to the same entry.)
        checkpoint.setdefault(ENTRY, {}).update(checkpoint_entry(self.model.config, self.vocab, self.normalizer))

    def _attached_trainer(self) -> L.Trainer | None:
        try:
            return self.trainer
        except RuntimeError:  # not attached: load_from_checkpoint outside a fit
            return None

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainer = self._attached_trainer()
        broken = nonfinite_weights(checkpoint.get("state_dict", {}))
        if broken:  # resumed, it would train on NaN and save its "best" from them
            source = trainer.ckpt_path if trainer is not None else "the checkpoint"
            raise CheckpointError(f"{source} holds non-finite (inf/NaN) weights in {len(broken)} tensors "
                                  f"({', '.join(broken[:3])}{' ...' if len(broken) > 3 else ''}): it was saved from "
                                  f"a diverged run or damaged; use an earlier checkpoint of the run")
        if trainer is not None and trainer.state.fn == "fit":
            self.nonfinite.resumed()
        # The checkpoint's text side outside a Trainer (inference); inside one, the data's, checked against it.
        entry = checkpoint.get(ENTRY) or {}
        self.vocab, self.normalizer = text_side_after_loading(entry, self.vocab, self.normalizer)


def _lengths(batch: Batch) -> torch.Tensor:
    """(B,) samples of a batch, on the host where ``transfer_batch_to_device`` kept them (no wait in the model)."""
    return batch.get("host_lengths", batch["lengths"])
