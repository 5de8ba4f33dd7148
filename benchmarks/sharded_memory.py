"""Per-rank peak memory of an XLS-R 2B (or 1B) training step: DDP against the sharded strategy at 2, 4, 8 ranks.

A 2B step cannot run on this machine's CPUs, so the peak is put together from two parts, each counted exactly:

- activations and temporaries: the model's real forward and backward pass (bf16 compute, activation checkpointing
  per layer, frozen conv stack) on the meta device, counted by ``train_memory.PeakTensorMemory``'s rule (every
  storage an operator makes, rounded up to 512 bytes, uncounted when freed; keyed by the storage object, since
  meta storages have no address); the CTC loss, which has no meta kernel, is stood in for by a float32
  log-softmax of the logits, which keeps the same (B, T, V) float32 tensor for the backward pass;
- state, from the parameter shapes: fp32 weights, gradients and AdamW's two moments of the trained parameters
  (16 bytes each; the frozen conv stack's weights only), all of it on every DDP rank, 1/R of it per sharded rank.
  DDP adds its gradient buckets (4 bytes per trained parameter) and the bf16 copies autocast makes of the weights of the unit running; a sharded rank holds, besides its
  shards, the gathered bf16 weights of the root unit and of two layers (the one running and the one prefetched)
  and one layer's full fp32 gradient before its reduce-scatter.

    python benchmarks/sharded_memory.py                  # 2B, 16 and 64 clips of 2-8 s (train_memory's batches)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_memory import CUDA_BLOCK, PeakTensorMemory  # noqa: E402
from train_throughput import cpu_name, make_batches  # noqa: E402

from ptasr.model.config import Wav2Vec2Config  # noqa: E402
from ptasr.model.wav2vec2 import Wav2Vec2CTC  # noqa: E402

GIB = 2**30

# The model asks whether autocast is on for its tensors' device; torch has no autocast for "meta" and raises.
# The weights here are bf16 already (what the sharded strategy's policy computes in): autocast is off.
_is_autocast_enabled = torch.is_autocast_enabled
torch.is_autocast_enabled = lambda *device: False if device and str(device[0]) == "meta" else _is_autocast_enabled(*device)


class MetaPeakMemory(PeakTensorMemory):
    """``PeakTensorMemory`` for meta tensors: a storage is keyed by its Python object (all addresses are 0)."""

    def _key(self, storage: torch.UntypedStorage) -> tuple[int, int]:
        return id(storage), storage.nbytes()


def _bytes(tensors: list[torch.Tensor], bytes_each: int) -> int:
    return sum(-(-t.numel() * bytes_each // CUDA_BLOCK) * CUDA_BLOCK for t in tensors)


def activation_peak(config: Wav2Vec2Config, clips: int) -> int:
    """Bytes of activations and temporaries at the peak of one step (weights and gradients not counted)."""
    with torch.device("meta"):
        model = Wav2Vec2CTC(config).to(torch.bfloat16)
    model.freeze_feature_encoder()
    model.set_gradient_checkpointing(True)
    model.train()
    batch = max(make_batches(clips, 10, seed=clips), key=lambda b: (b.waveforms.numel(), b.labels.numel()))
    waveforms = torch.empty(batch.waveforms.shape, dtype=torch.bfloat16, device="meta")
    for parameter in model.parameters():  # each gradient is let go as soon as it is made: it is state, counted
        if parameter.requires_grad:  # in `state`; what it costs in the backward pass is one layer's at most
            parameter.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None))
    with MetaPeakMemory() as counter:
        logits, _ = model(waveforms, batch.lengths)
        loss = logits.float().log_softmax(-1).mean()  # CTC's float32 (B, T, V), kept for the backward pass
        loss.backward()
    return counter.peak


def state(config: Wav2Vec2Config, ranks: int | None) -> int:
    """Bytes of weights, gradients, optimiser state and gathered weights per rank (``None``: DDP)."""
    with torch.device("meta"):
        model = Wav2Vec2CTC(config)
    model.freeze_feature_encoder()
    layers = list(model.wav2vec2.encoder.layers)
    layer_ids = {id(p) for layer in layers for p in layer.parameters()}
    trained = [p for p in model.parameters() if p.requires_grad]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    root = [p for p in model.parameters() if id(p) not in layer_ids]
    one_layer = list(layers[0].parameters())
    if ranks is None:  # everything on every rank, plus DDP's gradient buckets (a second fp32 copy of the
        # gradients: torch's gradient_as_bucket_view=False, which Lightning's "ddp" keeps) and autocast's bf16
        # copies of the root's and one layer's weights
        return _bytes(trained, 16 + 4) + _bytes(frozen, 4) + _bytes(root, 2) + _bytes(one_layer, 2)
    shards = (sum(p.numel() for p in trained) * 16 + sum(p.numel() for p in frozen) * 4) // ranks
    gathered = _bytes(root, 2) + 2 * _bytes(one_layer, 2) + _bytes(one_layer, 4)  # + one layer's fp32 gradient
    return shards + gathered


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="xls-r-2b", choices=["xls-r-300m", "xls-r-1b", "xls-r-2b"])
    parser.add_argument("--clips", nargs="+", type=int, default=[16, 64])
    parser.add_argument("--ranks", nargs="+", type=int, default=[2, 4, 8])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sharded_memory_cpu.json"))
    args = parser.parse_args(argv)
    config = Wav2Vec2Config.preset(args.preset, vocab_size=40, pad_token_id=39, mask_time_prob=0.0,
                                   layerdrop=0.0, hidden_dropout=0.0, attention_dropout=0.0,
                                   activation_dropout=0.0, feat_proj_dropout=0.0, final_dropout=0.0)
    info = dict(preset=args.preset, cpu=cpu_name(), load_average=os.getloadavg(), torch=torch.__version__,
                counted_by="MetaPeakMemory (activations, meta device) + parameter shapes (state)")
    results = []
    for clips in args.clips:
        activations = activation_peak(config, clips)
        ddp = state(config, None) + activations
        results.append(dict(clips=clips, strategy="ddp", ranks=None, activations_gib=round(activations / GIB, 2),
                            peak_gib=round(ddp / GIB, 2), vs_ddp=1.0))
        for ranks in args.ranks:
            peak = state(config, ranks) + activations
            results.append(dict(clips=clips, strategy="sharded", ranks=ranks, activations_gib=round(activations / GIB, 2),
                                peak_gib=round(peak / GIB, 2), vs_ddp=round(peak / ddp, 3)))
        for row in results[-len(args.ranks) - 1:]:
            print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(dict(info=info, results=results), indent=1) + "\n")


if __name__ == "__main__":
    main()
