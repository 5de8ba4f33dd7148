"""The optimiser and its schedule: parameter groups (the CTC head's own learning rate, no weight decay on gains
and biases), fused or not, and the learning-rate schedule stepped every update."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from ptasr.model.wav2vec2 import Wav2Vec2CTC
from ptasr.train.schedules import make_schedule


def optimizer_and_schedule(model: Wav2Vec2CTC, hparams: Mapping[str, Any], total_steps: int,
                           scaled: bool) -> dict[str, Any]:
    """Adam(W) over :func:`parameter_groups` and its schedule, as ``configure_optimizers`` returns them.

    Args:
        hparams: the module's hyperparameters (``optimizer``, ``lr``, ``head_lr``, ``betas``, ``eps``,
            ``weight_decay``, ``fused``, ``schedule`` and the schedule's arguments).
        total_steps: updates the schedule spans.
        scaled: fp16 loss scaling is active (see :func:`use_fused`).
    """
    hp = hparams
    optimizer_class = torch.optim.AdamW if hp["optimizer"] == "adamw" else torch.optim.Adam
    optimizer = optimizer_class(parameter_groups(model, hp["lr"], hp["head_lr"], hp["weight_decay"]),
                                betas=tuple(hp["betas"]), eps=hp["eps"], fused=use_fused(hp["fused"], scaled))
    schedule = {k: hp[k] for k in ("warmup_steps", "hold_steps", "decay_steps", "init_lr_scale", "final_lr_scale")}
    multiplier = make_schedule(hp["schedule"], total_steps=total_steps, **schedule)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def parameter_groups(model: Wav2Vec2CTC, lr: float, head_lr: float | None, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters grouped by (learning rate, weight decay); groups with equal settings merge.

    Each group is named ``"body"`` or ``"head"`` (the CTC head, when ``head_lr`` is set), which is how the
    learning rates are logged (``lr``, ``lr/head``).
    """
    head = {id(p) for p in model.lm_head.parameters()}
    groups: dict[tuple[str, float], list[torch.nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        part = "head" if id(parameter) in head and head_lr is not None else "body"
        decay = 0.0 if is_bias_or_norm(name, parameter) else weight_decay
        groups.setdefault((part, decay), []).append(parameter)
    return [{"params": params, "name": part, "lr": head_lr if part == "head" else lr, "weight_decay": decay}
            for (part, decay), params in groups.items()]


def is_bias_or_norm(name: str, parameter: torch.nn.Parameter) -> bool:
    """Parameters exempt from weight decay: biases, norm gains and other vectors (as HF Trainer), plus the
    magnitude ``g`` of the positional conv's weight norm, which is a gain too.

    >>> is_bias_or_norm("lm_head.bias", torch.nn.Parameter(torch.zeros(3)))
    True
    >>> is_bias_or_norm("encoder.pos_conv_embed.conv.parametrizations.weight.original0",
    ...                 torch.nn.Parameter(torch.zeros(1, 1, 3)))
    True
    >>> is_bias_or_norm("encoder.layers.0.attention.q_proj.weight", torch.nn.Parameter(torch.zeros(3, 3)))
    False
    """
    return (
        parameter.ndim < 2
        or name.endswith((".bias", ".weight_g", ".parametrizations.weight.original0"))
        or "norm" in name
    )


def drop_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Remove the gradients of ``parameters``: Adam then leaves them untouched (no moment update, no decay)."""
    for parameter in parameters:
        parameter.grad = None


def use_fused(fused: bool | None, scaled: bool) -> bool:
    """Whether Adam runs fused: ``fused`` when set, else unless fp16 loss scaling is active (``scaled``).

    Fused Adam is fastest on GPU and CPU and can skip a step on the device (``found_inf``), but with fp16 loss
    scaling it unscales inside ``step``, after clipping would have to happen.

    >>> use_fused(None, scaled=False), use_fused(None, scaled=True), use_fused(False, scaled=False)
    (True, False, False)
    """
    return fused if fused is not None else not scaled
