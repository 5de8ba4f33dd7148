"""What happens to an update's final gradients besides the non-finite check: the gradients of layers LayerDrop
skipped in the whole update are removed, and clipping uses the global norm already measured for the logs.

The module clips here rather than through Lightning's own clipping, which refuses fused optimisers under any
mixed precision, since it cannot tell bf16 (no loss scale) from fp16 (scaled gradients that a fused step
unscales itself). Here the gradients are always unscaled: fp16 runs use the unfused optimiser, whose gradients
Lightning unscales before clipping.
"""

from __future__ import annotations

import torch

from ptasr.errors import SettingError
from ptasr.train.optim import drop_gradients


def dropped_layers(layers: list[bool]) -> set[int]:
    """Indices of the layers a LayerDrop decision skips.

    >>> sorted(dropped_layers([True, False, True, False]))
    [1, 3]
    """
    return {index for index, runs in enumerate(layers) if not runs}


def drop_skipped_layer_gradients(layers: torch.nn.ModuleList, skipped: set[int] | None) -> None:
    """Remove the gradients of the transformer ``layers`` LayerDrop skipped in every batch of the update.

    The model gives a skipped layer all-zero gradients (so that DDP needs no ``find_unused_parameters``);
    without them AdamW neither decays it nor moves it with its momentum, as for a layer that got no gradient
    at all. Every rank drops the same layers.
    """
    drop_gradients(p for index in skipped or () for p in layers[index].parameters())


def clip_with_norm(parameters: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, max_norm: float,
                   grad_norm: torch.Tensor, scaled: bool) -> None:
    """Clip ``parameters``' gradients to global norm ``max_norm``, given their norm ``grad_norm`` (no host sync).

    Args:
        scaled: fp16 loss scaling is active; a fused optimiser would unscale the gradients only inside its
            step, after this clipping, so that combination is refused.
    """
    if scaled and optimizer.defaults.get("fused"):
        raise SettingError("model.fused=true cannot clip fp16-scaled gradients; use precision bf16-mixed or fused=null")
    torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, grad_norm)
