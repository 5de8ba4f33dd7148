"""Quick GPU sanity checks before timing: bf16 logits track fp32, masks and CTC run on the device, no NaN.

    python benchmarks/gpu_check.py          # prints one JSON line; exits non-zero on a failed check
"""

from __future__ import annotations

import json
import sys
import warnings

import torch

from ptasr import Wav2Vec2CTC, Wav2Vec2Config
from ptasr.model.loss import ctc_loss


def main() -> int:
    device = "cuda"
    torch.manual_seed(0)
    config = Wav2Vec2Config.preset("xls-r-300m", vocab_size=40, pad_token_id=39, mask_time_prob=0.75,
                                   mask_feature_prob=0.25, mask_feature_length=64, layerdrop=0.0)
    model = Wav2Vec2CTC(config).to(device).eval()
    lengths = torch.tensor([64000, 48000, 30000, 16000], device=device)
    waveforms = torch.randn(4, 64000, device=device) * (torch.arange(64000, device=device) < lengths[:, None])
    with torch.no_grad():
        reference, frames = model.double()(waveforms.double(), lengths)
        model.float()
        full, _ = model(waveforms, lengths)
        with torch.autocast(device, dtype=torch.bfloat16):
            half, _ = model(waveforms, lengths)
    valid = (torch.arange(reference.shape[1], device=device) < frames[:, None])[..., None]

    def relative(x: torch.Tensor) -> float:
        return float(((x.double() - reference) * valid).norm() / (reference * valid).norm())

    model.train()
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.autocast(device, dtype=torch.bfloat16):
        logits, frames = model(waveforms, lengths, generator=generator)
    labels = torch.randint(0, 39, (4, 30), device=device)
    loss = ctc_loss(logits, frames, labels, torch.full((4,), 30, device=device), blank=39)
    loss.backward()
    result = dict(fp32_vs_fp64=relative(full), bf16_vs_fp64=relative(half), train_loss=float(loss),
                  grads_finite=all(bool(torch.isfinite(p.grad).all()) for p in model.parameters()
                                   if p.grad is not None))
    result.update(host_syncs(model, waveforms, lengths, labels))
    print(json.dumps(result), flush=True)
    ok = result["fp32_vs_fp64"] < 1e-3 and result["bf16_vs_fp64"] < 3e-2 and result["grads_finite"]
    return 0 if ok else 1


def host_syncs(model: Wav2Vec2CTC, waveforms: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor
               ) -> dict[str, int]:
    """Synchronizing CUDA calls in a bf16 training forward pass and in the CTC loss, counted by CUDA's sync
    debug mode. benchmarks/README.md lists what to expect: one in the forward pass (frame packing's count),
    several in the native CTC kernel. Reported, not checked: tests/test_fake_cuda.py is the check."""
    generator = torch.Generator().manual_seed(0)  # on the host, as the training module's
    torch.cuda.synchronize()
    counts = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits, frames = model(waveforms, lengths, generator, layers=model.draw_layers(generator))
            counts["forward_host_syncs"] = sum("synchroniz" in str(w.message) for w in caught)
            caught.clear()
            ctc_loss(logits, frames, labels, torch.full((len(labels),), labels.shape[1], device=labels.device),
                     blank=39)
            counts["ctc_loss_host_syncs"] = sum("synchroniz" in str(w.message) for w in caught)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return counts


if __name__ == "__main__":
    sys.exit(main())
