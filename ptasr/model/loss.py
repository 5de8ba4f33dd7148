"""CTC loss on model outputs, with transformers' ``Wav2Vec2ForCTC`` semantics."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from ptasr.model.config import Wav2Vec2Config


def ctc_loss(
    logits: torch.Tensor,
    frame_lengths: torch.Tensor,
    labels: torch.Tensor,
    label_lengths: torch.Tensor,
    blank: int,
    reduction: Literal["mean", "sum", "none"] = "mean",
    zero_infinity: bool = False,
) -> torch.Tensor:
    """CTC loss with the log-softmax in float32, whatever the logits' dtype.

    Args:
        logits: (B, T, V) any float dtype.
        frame_lengths: (B,) int64 valid frames.
        labels: (B, L) int64 token ids, padded with -100 past each example's label length.
        label_lengths: (B,) int64.
        blank: the CTC blank id (transformers uses ``pad_token_id``).
        reduction: "mean" divides each example's loss by its label length, then averages over the batch
            (``F.ctc_loss``'s and transformers' "mean"); "sum" adds the per-example losses.
        zero_infinity: replace infinite losses (labels longer than the frames allow) by 0.

    Returns:
        a float32 scalar (or (B,) with reduction "none").
    """
    # fp16 cannot hold CTC's log-probabilities; float32 here is what transformers and fairseq do too.
    log_probs = F.log_softmax(logits, dim=-1, dtype=torch.float32).transpose(0, 1)  # (T, B, V)
    # Padded 2-D targets are allowed; entries past label_lengths are never read, but must be valid ids.
    targets = labels.masked_fill(labels < 0, 0)
    # cuDNN's CTC kernel has narrow preconditions (blank 0, int32 host targets, labels <= 256) and its own
    # numerics; like transformers, always use the native kernel so results do not depend on the batch.
    with torch.backends.cudnn.flags(enabled=False):
        return F.ctc_loss(
            log_probs,
            targets,
            frame_lengths,
            label_lengths,
            blank=blank,
            reduction=reduction,
            zero_infinity=zero_infinity,
        )


def config_ctc_loss(config: Wav2Vec2Config, logits: torch.Tensor, frame_lengths: torch.Tensor,
                    labels: torch.Tensor, label_lengths: torch.Tensor) -> torch.Tensor:
    """:func:`ctc_loss` with the model config's blank (``pad_token_id``), ``ctc_loss_reduction`` and
    ``ctc_zero_infinity``, as transformers' ``Wav2Vec2ForCTC`` takes them; arguments as there.

    >>> from ptasr.model.config import Wav2Vec2Config
    >>> config = Wav2Vec2Config.preset("tiny", vocab_size=5, pad_token_id=4)
    >>> logits, labels = torch.randn(2, 6, 5), torch.tensor([[1, 2], [3, -100]])
    >>> args = (logits, torch.tensor([6, 5]), labels, torch.tensor([2, 1]))
    >>> bool(torch.equal(config_ctc_loss(config, *args), ctc_loss(*args, blank=4, reduction="sum")))
    True
    """
    return ctc_loss(logits, frame_lengths, labels, label_lengths, blank=config.pad_token_id,
                    reduction=config.ctc_loss_reduction, zero_infinity=config.ctc_zero_infinity)
