"""Updates whose gradients are not finite: skipped on the device, counted, and ended after too many in a row.

One inf or NaN gradient would turn every weight into NaN at the next optimiser step, so such an update is
skipped (fp16's GradScaler does this itself; in bf16 and fp32 :class:`NonFiniteUpdates` does). A few skipped
updates are harmless; a long unbroken run of them means training has diverged and cannot recover, so after
``patience`` of them in a row the run ends with :class:`TrainingDiverged`, a one-line user error.

Everything is counted in device tensors, so the training step needs no host sync; :meth:`check` reads them
back and is called only where Lightning syncs anyway (when it writes its logs, at the end of an epoch).

A resumed run is held to more: a checkpoint with non-finite weights is refused before it is restored
(:func:`nonfinite_weights`), and a non-finite first update after the restore ends the run at once (bf16 and fp32,
where a non-finite gradient is no routine event), so that no "best" checkpoint is saved from a broken state.
"""

from __future__ import annotations

import torch
from lightning.pytorch.core.optimizer import LightningOptimizer

from ptasr.compat import skip_fused_step
from ptasr.errors import UserError

StateDict = dict[str, torch.Tensor]


class TrainingDiverged(UserError, RuntimeError):
    """Too many consecutive updates had non-finite gradients (``nonfinite_patience``): the run cannot recover."""


class NonFiniteUpdates(torch.nn.Module):
    """Counts of skipped updates, kept as (non-persistent) buffers so they follow the module's device.

    Args:
        patience: consecutive skipped updates that end the run; ``None`` or 0 never ends it.

    >>> guard = NonFiniteUpdates(patience=2)
    >>> for update, finite in enumerate([False, True, False, False, False]):
    ...     guard.record(torch.tensor(not finite), update)
    >>> int(guard.skipped), int(guard.streak), int(guard.diverged_at)
    (4, 3, 4)
    """

    def __init__(self, patience: int | None) -> None:
        super().__init__()
        self.patience = patience
        # Updates skipped in all; the current run of consecutive skipped updates; the update (1-based) at which
        # a run first reached the patience (-1: never).
        self.register_buffer("skipped", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("streak", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("diverged_at", torch.full((), -1, dtype=torch.long), persistent=False)
        self._first_after_resume = False

    def resumed(self) -> None:
        """A checkpoint was restored: the next update is checked at once (one host sync), see :meth:`update`."""
        self._first_after_resume = True

    def record(self, nonfinite: torch.Tensor, update: int) -> None:
        """Count update ``update`` (0-based), non-finite or not (a 0-dim bool tensor), on the device."""
        self.skipped += nonfinite
        self.streak.copy_((self.streak + 1) * nonfinite)  # back to 0 after a finite update
        if self.patience:
            first = (self.streak == self.patience) & (self.diverged_at < 0)
            self.diverged_at.copy_(torch.where(first, update + 1, self.diverged_at))

    def update(self, grad_norm: torch.Tensor, update: int, optimizer: torch.optim.Optimizer | LightningOptimizer,
               skip: bool, check: bool) -> None:
        """Count update ``update`` by its final gradients' norm, skip it when that is not finite, and check.

        Args:
            skip: make the step a no-op here (not under fp16: the GradScaler skips the step itself and lowers
                the scale).
            check: look at the counts now (:meth:`check`). Reading a device value stalls the host until the
                device catches up, so look only where Lightning reads the logged values anyway. The gradients
                were all-reduced, so every DDP rank holds the same counts and raises at the same update: no
                rank is left waiting in a collective.
        """
        nonfinite = ~torch.isfinite(grad_norm)
        if self._first_after_resume:
            self._first_after_resume = False
            # Not under fp16, whose GradScaler may overflow at its restored scale and lower it, as it does anyway.
            if self.patience and skip and bool(nonfinite):
                raise TrainingDiverged(
                    f"the first update after resuming (update {update + 1}) had non-finite (inf/NaN) gradients: the "
                    f"restored state is broken (saved from a diverging run, or damaged); resume an earlier "
                    f"checkpoint of the run, or lower model.lr")
        self.record(nonfinite, update)
        if skip:
            skip_update_if(nonfinite, optimizer)
        if check:
            self.check()

    def check(self) -> None:
        """Raise :class:`TrainingDiverged` if a run of skipped updates reached the patience (a host sync)."""
        update = int(self.diverged_at)
        if update < 0:
            return
        raise TrainingDiverged(
            f"training diverged: the {self.patience} updates up to update {update} all had non-finite (inf/NaN) "
            f"gradients and were skipped ({int(self.skipped)} skipped in all). Lower model.lr (or lengthen "
            f"model.warmup_steps), use trainer.precision=bf16-mixed instead of 16-mixed, or check the data for "
            f"broken clips; model.nonfinite_patience sets how many skipped updates in a row end a run"
        )


def nonfinite_weights(state_dict: StateDict) -> list[str]:
    """The names of the floating-point tensors of ``state_dict`` that hold an inf or NaN.

    >>> nonfinite_weights({"a": torch.ones(2), "b": torch.tensor([1.0, float("nan")]), "c": torch.zeros(1).long()})
    ['b']
    """
    return [name for name, tensor in state_dict.items()
            if torch.is_tensor(tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all()]


def skip_update_if(nonfinite: torch.Tensor, optimizer: torch.optim.Optimizer | LightningOptimizer) -> None:
    """Make the coming optimiser step a no-op when ``nonfinite`` (a 0-dim bool tensor) is true.

    A fused optimiser skips on the device (:func:`ptasr.compat.skip_fused_step`); an unfused one loses its
    gradients, which costs one host sync, and Adam leaves parameters without gradients untouched.
    """
    if isinstance(optimizer, LightningOptimizer):
        optimizer = optimizer.optimizer
    if optimizer.defaults.get("fused"):
        skip_fused_step(optimizer, nonfinite)
    elif nonfinite:  # host sync, only on the unfused path
        optimizer.zero_grad(set_to_none=True)
