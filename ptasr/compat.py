"""The private or undocumented torch, Lightning and datasets names ptasr relies on, each in one place with its
reason. Everything else in ptasr uses public API.

A library upgrade may rename any of these without notice; ``tests/test_compat.py`` calls each one on real
objects of the installed versions, so a rename fails there, loudly and by name, rather than changing
behaviour silently somewhere in a training run.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint


def should_update_logs(trainer: L.Trainer) -> bool:
    """Whether Lightning writes this update's step metrics to the loggers.

    Callbacks and the module read device counters back (a host sync) only at these updates. Lightning has no
    public flag for it; re-deriving the rule from public values would hard-code its arithmetic
    (``log_every_n_steps``, ``should_stop``, the active loop's batch counter) and drift from it.
    """
    return trainer._logger_connector.should_update_logs


def skip_fused_step(optimizer: torch.optim.Optimizer, skip: torch.Tensor) -> None:
    """Make the next ``step`` of a fused Adam/AdamW a no-op where ``skip`` (a 0-dim device bool) is true.

    Fused Adam reads ``optimizer.found_inf`` (the attribute ``torch.amp.GradScaler`` sets) and leaves
    parameters, moments and step counts unchanged when it is non-zero; setting it skips an update on the
    device, with no host sync. The attribute is undocumented.
    """
    optimizer.found_inf = skip.float()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 matrix products natively (AVX512-BF16 or AMX tiles).

    torch has no public query for these instruction sets (``torch.backends.cpu.get_cpu_capability`` names
    only the vector width).
    """
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def conv_with(
    conv: torch.nn.Conv1d | torch.nn.Conv2d | torch.nn.Conv3d,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """``conv``'s computation (stride, padding and padding mode, dilation, groups) with other weights.

    ``_conv_forward`` is the one place where torch applies a non-zero padding mode before ``F.convNd``; the
    precision probe calls it to run a module's configuration in another dtype without touching its parameters.
    """
    return conv._conv_forward(x, weight, bias)


def dataset_fingerprint(dataset: Any) -> str:
    """The content hash 🤗 datasets keeps for a ``Dataset`` (changes whenever its data or transforms do).

    Used as a cache key. ``datasets.fingerprint.generate_fingerprint`` is public but hashes something else
    (the object's state and file times), so it would not match the library's own caching.
    """
    return dataset._fingerprint


def save_checkpoint_now(callback: ModelCheckpoint, trainer: L.Trainer) -> None:
    """Make a ``ModelCheckpoint`` save now, as when it is due: its file name, top-k rule and saved state.

    ``LastCheckpoint`` saves at the end of whatever ends a run (max_steps between validations, a signal), a
    moment ``ModelCheckpoint`` has no public entry for; these two methods are what its own
    ``on_validation_end`` calls.
    """
    callback._save_topk_checkpoint(trainer, callback._monitor_candidates(trainer))


def last_saved_step(callback: ModelCheckpoint) -> int:
    """The update at which a ``ModelCheckpoint`` last saved (0 before it ever did)."""
    return callback._last_global_step_saved


def take_over_sigterm(trainer: L.Trainer) -> None:
    """Clear Lightning's "SIGTERM received" flag: a callback that handles SIGTERM itself has taken it over.

    Lightning's loops raise ``SIGTERMException`` (a ``SystemExit`` with status 0) at the next batch end while the
    flag is set, a sanity check's included; ``LastCheckpoint`` ends such a run itself, with a checkpoint and
    status 143. The flag is ``Trainer.received_sigterm``, a read-only property over the signal connector.
    """
    trainer._signal_connector.received_sigterm = False


def take_launched_ranks(trainer: L.Trainer) -> list[Any]:
    """The ``subprocess.Popen`` of each rank Lightning's DDP launcher started from this process (ranks 1..N-1 of
    a plain ``--trainer.strategy=ddp``), taken over from the launcher; ``[]`` under torchrun or SLURM, or on a
    rank the launcher started.

    Rank 0 ends them when it fails (they would wait in their next collective until the timeout). Lightning
    exposes neither the launcher's class nor its process list; its watcher thread reads that same list, and
    must stop reading it so that it does not kill rank 0 before rank 0 has printed its line.
    """
    from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher

    launcher = trainer.strategy.launcher
    if not isinstance(launcher, _SubprocessScriptLauncher):
        return []
    processes = list(launcher.procs)
    launcher.procs.clear()
    return processes



def is_sharded_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a checkpoint folder the sharded strategy wrote (``ptasr.train.sharding``): one
    ``torch.distributed.checkpoint`` shard per rank plus Lightning's file of everything else, whose name
    (``meta.pt``) Lightning keeps private."""
    from lightning.fabric.utilities.load import _METADATA_FILENAME

    return path.is_dir() and (path / _METADATA_FILENAME).is_file()


def load_sharded_checkpoint(folder: Path) -> dict[str, Any]:
    """A sharded checkpoint folder whole, in this process's memory, as the dict a ``.ckpt`` file holds
    (``state_dict`` with full tensors, ``ptasr``, ``global_step`` ...; the optimiser's as ``optimizer_0``).

    Lightning's consolidation (``python -m lightning.fabric.utilities.consolidate_checkpoint``) is this
    function; torch's public ``dcp_to_torch_save`` would need a second copy on disk.
    """
    from lightning.fabric.utilities.load import _load_distributed_checkpoint

    return _load_distributed_checkpoint(folder)


def shard_over_every_rank(strategy: Any, ranks: int) -> None:
    """Make a Lightning ``ModelParallelStrategy`` build its mesh with all ``ranks`` in the data-parallel
    (sharding) dimension. Its ``data_parallel_size="auto"`` means one rank per node, and the world size a fixed
    number would need is known only once the processes have started (``setup_environment``), where this is called.
    """
    strategy._data_parallel_size = ranks


def paths_are_values(parser: Any, dests: tuple[str, ...]) -> None:
    """jsonargparse reads a file path given for an argument whose type holds dataclasses as the file's content
    (a sub-config); for ``dests`` a path is the value itself. Through the private ``_enable_path`` of each
    argparse action (jsonargparse 4.x) until it has a public switch."""
    for action in parser._actions:
        if action.dest in dests:
            action._enable_path = False


def attached_trainer(module: L.LightningModule) -> L.Trainer | None:
    """The module's Trainer, or ``None`` where it has none (``load_from_checkpoint`` calls ``configure_model``
    outside any fit), where ``module.trainer`` raises. Lightning's private ``_trainer`` (2.x)."""
    return module._trainer


def process_group_store() -> torch.distributed.Store:
    """The key-value store the default process group was set up with (torchrun's agent store, or rank 0's
    ``MASTER_PORT`` store): reachable by every rank, with no collective. torch keeps its getter private."""
    from torch.distributed.distributed_c10d import _get_default_store

    return _get_default_store()
