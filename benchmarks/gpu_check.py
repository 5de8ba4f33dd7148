"""Quick GPU sanity checks before timing: bf16 logits track fp32, masks and CTC run on the device, no NaN.

    python benchmarks/gpu_check.py          # prints one JSON line; exits non-zero on a failed check
"""

from __future__ import annotations

import json
import sys
import warnings

import torch

from ptasr import Wav2Vec2Config, Wav2Vec2CTC
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
               ) -> dict[str, object]:
    """Synchronizing CUDA calls in a bf16 training forward pass and in the CTC loss, counted by CUDA's sync
    debug mode, with the Python line that made each (``file:line``). The training forward takes the lengths on
    the host, as the training module passes them: benchmarks/README.md expects none there; with the lengths on
    the device, one (reading them back); several in the native CTC kernel. Reported, not checked:
    tests/test_fake_cuda.py is the check."""
    generator = torch.Generator().manual_seed(0)  # on the host, as the training module's
    torch.cuda.synchronize()
    counts: dict[str, object] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for name, given in (("forward", lengths.cpu()), ("forward_device_lengths", lengths)):
                caught.clear()
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    logits, frames = model(waveforms, given, generator, layers=model.draw_layers(generator))
                counts.update(_syncs(name, caught))
            caught.clear()
            ctc_loss(logits, frames, labels, torch.full((len(labels),), labels.shape[1], device=labels.device),
                     blank=39)
            counts.update(_syncs("ctc_loss", caught))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return counts


def _syncs(name: str, caught: list[warnings.WarningMessage]) -> dict[str, object]:
    where = [f"{w.filename}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)]
    return {f"{name}_host_syncs": len(where), f"{name}_host_sync_lines": where}


if __name__ == "__main__":
    sys.exit(main())
