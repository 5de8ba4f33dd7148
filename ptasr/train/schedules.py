"""Learning-rate schedules as multipliers of the peak learning rate, for :class:`torch.optim.lr_scheduler.LambdaLR`.

``step`` counts optimiser updates (not batches: with gradient accumulation several batches make one update),
exactly as ``LambdaLR`` does when Lightning steps it with ``interval="step"``.

- :func:`linear_warmup_decay` is Hugging Face's ``get_linear_schedule_with_warmup``, the schedule of the
  reference card (``lgris/wav2vec2-xls-r-pt-cv7``: 2000 warm-up steps, 40000 steps).
- :func:`tri_stage` is fairseq's ``TriStageLRSchedule`` (``fairseq/optim/lr_scheduler/tri_stage_lr_scheduler.py``),
  the schedule of the wav2vec 2.0 / XLS-R papers' fine-tuning recipes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Literal

from ptasr.errors import SettingError

ScheduleName = Literal["linear", "tri_stage", "constant"]


def linear_warmup_decay(step: int, *, warmup_steps: int, total_steps: int) -> float:
    """Hugging Face's linear schedule: 0 -> 1 over ``warmup_steps``, then 1 -> 0 at ``total_steps``.

    Like HF, the very first update (step 0) runs with learning rate 0 when there is a warm-up.

    >>> [linear_warmup_decay(s, warmup_steps=2, total_steps=6) for s in range(8)]
    [0.0, 0.5, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    """
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def tri_stage(
    step: int,
    *,
    warmup_steps: int,
    hold_steps: int,
    decay_steps: int,
    init_lr_scale: float = 0.01,
    final_lr_scale: float = 0.05,
) -> float:
    """fairseq's tri-stage schedule: linear warm-up, hold at the peak, exponential decay, then constant.

    Warm-up rises linearly from ``init_lr_scale`` to 1; the decay falls as ``exp(-k t)`` from 1 to
    ``final_lr_scale`` over ``decay_steps``; after that the multiplier stays at ``final_lr_scale``.

    >>> [round(tri_stage(s, warmup_steps=2, hold_steps=1, decay_steps=2, init_lr_scale=0.1, final_lr_scale=0.25), 3)
    ...  for s in range(7)]
    [0.1, 0.55, 1.0, 1.0, 0.5, 0.25, 0.25]
    """
    if step < warmup_steps:
        return init_lr_scale + (1.0 - init_lr_scale) * step / warmup_steps
    step -= warmup_steps
    if step < hold_steps:
        return 1.0
    step -= hold_steps
    if step <= decay_steps and decay_steps > 0:
        # fairseq: decay_factor = -log(final_lr_scale) / decay_steps; lr = peak * exp(-decay_factor * t)
        return math.exp(math.log(final_lr_scale) * step / decay_steps)
    return final_lr_scale


def constant(step: int) -> float:
    """A constant multiplier of 1 (no schedule).

    >>> constant(123)
    1.0
    """
    return 1.0


def make_schedule(
    name: ScheduleName,
    *,
    total_steps: int,
    warmup_steps: int = 0,
    hold_steps: int = 0,
    decay_steps: int | None = None,
    init_lr_scale: float = 0.01,
    final_lr_scale: float = 0.05,
) -> Callable[[int], float]:
    """The multiplier function ``step -> float`` for ``LambdaLR``, by name.

    For ``tri_stage``, ``decay_steps=None`` decays over whatever is left after warm-up and hold, so the
    schedule ends at ``final_lr_scale`` on the last update. A ``functools.partial`` (not a lambda) keeps
    ``LambdaLR.state_dict()`` picklable.

    >>> make_schedule("linear", total_steps=10, warmup_steps=5)(5)
    1.0
    >>> round(make_schedule("tri_stage", total_steps=10, warmup_steps=2, hold_steps=3)(10), 3)
    0.05
    """
    if name == "linear":
        return functools.partial(linear_warmup_decay, warmup_steps=warmup_steps, total_steps=total_steps)
    if name == "tri_stage":
        if decay_steps is None:
            decay_steps = total_steps - warmup_steps - hold_steps
        if decay_steps < 0:
            raise SettingError(
                f"tri_stage: warmup_steps ({warmup_steps}) + hold_steps ({hold_steps}) exceed the "
                f"{total_steps} training steps; lower them or raise trainer.max_steps"
            )
        return functools.partial(
            tri_stage,
            warmup_steps=warmup_steps,
            hold_steps=hold_steps,
            decay_steps=decay_steps,
            init_lr_scale=init_lr_scale,
            final_lr_scale=final_lr_scale,
        )
    if name == "constant":
        return constant
    raise SettingError(f"unknown learning-rate schedule {name!r}; choose one of 'linear', 'tri_stage', 'constant'")
