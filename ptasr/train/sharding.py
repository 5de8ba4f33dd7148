"""Sharded data parallel training: weights, gradients and optimiser state split across the ranks (FSDP2).

XLS-R 1B and 2B carry 16 bytes of training state per parameter (fp32 weights, gradients, AdamW's two moments):
15 GB and 35 GB before any activation. DDP keeps all of it on every rank; here each of R ranks keeps 1/R of it
and gathers one transformer layer's weights at a time, only while that layer runs (fairseq's 2B recipe did the
same, with activation checkpointing per layer: ``model.gradient_checkpointing``).

Why FSDP2 (``torch.distributed.fsdp.fully_shard``) and not FSDP1 (``FullyShardedDataParallel``):
- its parameters stay ``nn.Parameter``\\ s of the original modules (DTensors), under their own names, so the
  weight-normed positional conv keeps its parametrisation (``original0``/``original1``), frozen and trainable
  parameters share a unit, and checkpoints keep the plain names ``ptasr.recognition`` loads;
- a unit whose forward did not run gathers and reduces nothing: a layer LayerDrop skipped (the same draw on every
  rank, ``ptasr.train.step_randomness``) costs no collective and its shard gets no gradient;
- it takes an explicit device mesh, so the same code runs on CPU processes over gloo (the suite's proof) and on
  GPUs over NCCL; Lightning's ``ModelParallelStrategy`` drives it (``configure_model``, sharded checkpoints
  through ``torch.distributed.checkpoint``). FSDP1 flattens each unit into one parameter, which breaks the
  first two points, and Lightning's ``FSDPStrategy`` is FSDP1.

Units: each transformer layer is its own; the conv stack, projection, positional conv, norms and CTC head form
the root unit. Compute runs in ``param_dtype`` (bf16: the gathered weights are cast once per gather) and the
gradients are averaged across ranks in ``reduce_dtype`` (fp32 by default: a sum of R bf16 gradients loses
precision); the sharded master weights and AdamW's moments stay fp32. Use ``trainer.precision: 32-true`` with it:
the policy, not autocast, sets the compute dtype.

A sharded checkpoint is a folder, and Lightning writes it in place: a kill during the save would leave a mix of
new and old shards under the name ``last.ckpt``. Here every rank writes into a hidden sibling folder, and rank 0
puts it in the checkpoint's place only once every rank has finished (``ptasr.train.checkpoint_io``, whose
``RunLock`` clean-up removes a killed save's folder at the next start).
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from ptasr.compat import shard_over_every_rank
from ptasr.model.wav2vec2 import Wav2Vec2CTC
from ptasr.train.checkpoint_io import partial_name, replace_folder

DtypeName = Literal["bfloat16", "float32"]


class ShardedStrategy(ModelParallelStrategy):
    """Lightning's ``ModelParallelStrategy`` with every rank in one data-parallel (sharding) mesh dimension.

    Select it in a config as ``trainer.strategy: {class_path: ptasr.train.sharding.ShardedStrategy}``; the
    training module shards its model in ``configure_model`` (:func:`shard_model`).

    Args:
        param_dtype: the dtype the gathered weights compute in.
        reduce_dtype: the dtype gradients are averaged across ranks in.
        save_distributed_checkpoint: each rank writes its own shard into a checkpoint folder (``True``), or
            rank 0 gathers the full weights and optimiser state into one file (``False``).
        process_group_backend: ``None`` picks NCCL on GPUs, gloo on CPUs.
        timeout: how long a collective waits for the other ranks.
    """

    def __init__(self, param_dtype: DtypeName = "bfloat16", reduce_dtype: DtypeName = "float32",
                 save_distributed_checkpoint: bool = True, process_group_backend: str | None = None,
                 timeout: timedelta = timedelta(minutes=30)) -> None:
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1,
                         save_distributed_checkpoint=save_distributed_checkpoint,
                         process_group_backend=process_group_backend, timeout=timeout)
        self.policy = MixedPrecisionPolicy(param_dtype=getattr(torch, param_dtype),
                                           reduce_dtype=getattr(torch, reduce_dtype))
        self.sharded_checkpoints = save_distributed_checkpoint

    def setup_environment(self) -> None:
        # Every rank of every node shards along one dimension ("auto" would make it one rank per node).
        shard_over_every_rank(self, self.num_nodes * self.num_processes)
        super().setup_environment()

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: str | Path,
                        storage_options: Any | None = None) -> None:
        """Write a checkpoint folder atomically: the old one at ``filepath`` stays whole until the new one is.

        (A full-weights file, ``save_distributed_checkpoint=False``, goes through the trainer's checkpoint I/O
        plugin on rank 0: ``AtomicCheckpointIO`` makes that one atomic.)
        """
        if not self.sharded_checkpoints:
            super().save_checkpoint(checkpoint, filepath, storage_options)
            return
        path = Path(self.broadcast(filepath))  # rank 0's name and token: one folder for every rank
        partial = path.parent / partial_name(path.name, self.broadcast(uuid.uuid4().hex[:12]))
        super().save_checkpoint(checkpoint, partial, storage_options)
        self.barrier("sharded checkpoint written")  # every rank's shard is on disk
        if self.is_global_zero:
            replace_folder(partial, path)

    def shard(self, model: Wav2Vec2CTC) -> None:
        """Shard ``model`` in place across this run's ranks (once; a second call leaves it as it is)."""
        if not isinstance(model, FSDPModule):
            shard_model(model, self.device_mesh["data_parallel"], self.policy)


def shard_model(model: Wav2Vec2CTC, mesh: DeviceMesh, policy: MixedPrecisionPolicy) -> None:
    """Apply ``fully_shard`` to each transformer layer, then to ``model`` (the root unit holds the rest).

    A layer's gathered weights are freed after its forward pass and gathered again for its backward; the root's
    (conv stack, positional conv, head: small) stay gathered in between, as FSDP2 keeps a root's.
    """
    for layer in model.wav2vec2.encoder.layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)


def full_norm(norm: torch.Tensor) -> torch.Tensor:
    """A 0-dim norm as a plain tensor: the global norm when ``norm`` was measured over sharded gradients.

    The norm of DTensor shards is a partial one (each rank's share of the sum of squares); completing it is one
    all-reduce of a scalar, the only collective that clipping by global norm and the non-finite check need.
    """
    return norm.full_tensor() if isinstance(norm, DTensor) else norm
