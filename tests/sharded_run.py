"""A short fit of the small model (or of XLS-R 1B's shape with 2 layers, ``--shape=xls-r-1b``) on fixed synthetic
batches, in 1 process or under ``torchrun`` with the sharded strategy; each update's loss (averaged over the ranks)
and every gradient (gathered whole) go to ``<out>/updates.pt``, and the final weights to ``<out>/weights.pt``. Run
by ``tests/test_train_sharded.py``.

Every update's global batch is the same clips (4, or ``--clips``) of equal length whichever the world size; rank R
of W takes its 1/W of them, so the ranks' mean loss and averaged gradient are the single process's (CTC "mean").
SpecAugment and dropout are off: SpecAugment masks per rank by design, so no rank count could match another.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import lightning as L
import torch
import torch.distributed.checkpoint
from helpers import small_module
from lightning.pytorch.callbacks import ModelCheckpoint

from ptasr.data.text import TextNormalizer, Vocabulary
from ptasr.train.module import Wav2Vec2CTCModule
from ptasr.train.sharding import ShardedStrategy

VOCAB = Vocabulary(["|", "a", "e", "o", "[UNK]", "[PAD]"])
SAMPLES, LABELS = 6000, 4
UPDATES_PER_EPOCH = 5


def global_batch(index: int, clips: int) -> dict:
    """The ``clips`` clips of batch ``index``: seeded, so every process builds the same."""
    generator = torch.Generator().manual_seed(1000 + index)
    return {"waveforms": torch.randn(clips, SAMPLES, generator=generator),
            "lengths": torch.full((clips,), SAMPLES, dtype=torch.int64),
            "labels": torch.randint(0, 4, (clips, LABELS), generator=generator),
            "label_lengths": torch.full((clips,), LABELS, dtype=torch.int64),
            "ids": [f"clip{index}-{i}" for i in range(clips)], "texts": ["a" * LABELS] * clips}


def rank_share(batch: dict, rank: int, world: int) -> dict:
    clips = len(batch["ids"])
    share = slice(rank * clips // world, (rank + 1) * clips // world)
    return {key: value[share] for key, value in batch.items()}


def full(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """A gradient or weight whole on every rank (a DTensor is gathered: every rank must call this)."""
    if tensor is None:
        return None
    return (tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor).detach().clone()


class Recorder(L.Callback):
    """Each update's mean loss over the ranks and its gradients (after clipping and LayerDrop's dropping)."""

    def __init__(self, out: Path, weights: bool) -> None:
        self.out, self.weights, self.updates = out, weights, {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = trainer.strategy.reduce(outputs["loss"].detach(), reduce_op="mean")
        grads = {name: full(p.grad) for name, p in pl_module.model.named_parameters()}
        self.updates[trainer.global_step] = {"loss": float(loss), "grads": grads,
                                             "dropped": outputs["dropped_layers"]}

    def on_train_end(self, trainer, pl_module) -> None:
        weights = {name: full(p) for name, p in pl_module.model.named_parameters()} if self.weights else None
        if trainer.global_rank == 0:
            torch.save(self.updates, self.out / "updates.pt")
            if weights is not None:
                torch.save(weights, self.out / "weights.pt")


def poison_loss(module: L.LightningModule, update: int) -> None:
    """Make the loss of ``update`` NaN on every rank, as a diverging batch would (its update is skipped)."""
    training_step = module.training_step

    def poisoned(batch: dict, batch_idx: int) -> dict:
        outputs = training_step(batch, batch_idx)
        if module.global_step + 1 == update:
            outputs["loss"] = outputs["loss"] * float("nan")
        return outputs

    module.training_step = poisoned


def stall_in_save(name: str, save: int, out: Path) -> None:
    """Stop every rank inside the ``save``-th save of checkpoint ``name``, once its shards are written and before
    the save ends: each rank writes its pid to ``<out>/in-save-<rank>`` and sleeps, for the test to kill it there
    (torchrun starts its workers in sessions of their own: killing torchrun's process group leaves them)."""
    original, saves = torch.distributed.checkpoint.save, []

    def save_then_stall(state: dict, *args, checkpoint_id=None, **kwargs):
        result = original(state, *args, checkpoint_id=checkpoint_id, **kwargs)
        saves.extend([checkpoint_id] if name in Path(checkpoint_id).name else [])
        if len(saves) == save:
            marker = out / f"in-save-{torch.distributed.get_rank()}"
            marker.with_suffix(".tmp").write_text(str(os.getpid()))
            marker.with_suffix(".tmp").rename(marker)  # whole when the test sees it
            time.sleep(3600)
        return result

    torch.distributed.checkpoint.save = save_then_stall  # Lightning imports it at each save


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument("--layerdrop", type=float, default=0.0)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--shape", choices=["small", "xls-r-1b"], default="small",
                        help="the small model's widths, or the xls-r-1b preset's (with --layers layers)")
    parser.add_argument("--clips", type=int, default=4, help="clips per update, over all ranks")
    parser.add_argument("--checkpoints", action=argparse.BooleanOptionalAction, default=True,
                        help="save checkpoints and the final weights (weights.pt)")
    parser.add_argument("--resume", default=None, help="a checkpoint to resume from")
    parser.add_argument("--nan-update", type=int, default=0, help="this update's loss is NaN (0: none)")
    parser.add_argument("--stall-in-last-save", type=int, default=0,
                        help="stall every rank inside this save of last.ckpt (0: none)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    L.seed_everything(7)
    overrides = dict(
        num_hidden_layers=args.layers, layerdrop=args.layerdrop, mask_time_prob=0.0, mask_feature_prob=0.0,
        hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
        final_dropout=0.0)
    if args.shape == "small":
        module = small_module(VOCAB, config_overrides=overrides, lr=1e-3, warmup_steps=2, freeze_transformer_steps=2,
                              gradient_checkpointing=True)
    else:
        # Every layer trains from the first update. A small rate: Adam's normalised step turns the ranks' ~1e-7
        # rounding differences in a near-zero gradient into whole steps of size lr (at 1e-3 the losses of the
        # 1- and 2-process runs of this width part by 1e-4 at the fourth update).
        module = Wav2Vec2CTCModule(len(VOCAB), VOCAB.pad_id, preset=args.shape, lr=1e-5, warmup_steps=2,
                                   config_overrides={**overrides, "ctc_loss_reduction": "mean"},
                                   gradient_checkpointing=True)
    module.vocab, module.normalizer = VOCAB, TextNormalizer()
    if args.nan_update:
        poison_loss(module, args.nan_update)
    if args.stall_in_last_save:
        stall_in_save("last.ckpt", args.stall_in_last_save, args.out)
    batches = [rank_share(global_batch(i, args.clips), rank, world) for i in range(UPDATES_PER_EPOCH)]
    strategy = ShardedStrategy(param_dtype="float32", reduce_dtype="float32") if world > 1 else "auto"
    trainer = L.Trainer(
        accelerator="cpu", devices=int(os.environ.get("LOCAL_WORLD_SIZE", 1)), strategy=strategy,
        num_nodes=world // int(os.environ.get("LOCAL_WORLD_SIZE", 1)), max_steps=args.updates,
        precision="32-true", gradient_clip_val=0.5, logger=False, enable_progress_bar=False,
        enable_model_summary=False, use_distributed_sampler=False, limit_val_batches=0,
        enable_checkpointing=args.checkpoints, callbacks=[
            Recorder(args.out, weights=args.checkpoints),
            # epoch=E-step=S.ckpt at each epoch's end, and last.ckpt overwritten after each
            *([ModelCheckpoint(dirpath=args.out / "checkpoints", every_n_train_steps=UPDATES_PER_EPOCH,
                               save_top_k=-1, save_last=True)] if args.checkpoints else [])])
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    trainer.fit(module, train_dataloaders=loader, ckpt_path=args.resume)


if __name__ == "__main__":
    main()
