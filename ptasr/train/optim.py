"""Parameter groups of the optimiser: the CTC head's own learning rate, and no weight decay on gains and biases."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from ptasr.model.wav2vec2 import Wav2Vec2CTC


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
