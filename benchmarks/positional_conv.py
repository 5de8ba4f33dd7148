"""The positional conv, computed both ways (``positional_conv: direct | fft``): forward + backward time per call.

The module is the model's own (``PositionalConvEmbedding``, weight norm included), at XLS-R's shape (width
1024, kernel 128, 16 groups) and the small CPU model's (width 256). The two ways alternate in rounds, so load
from other jobs falls on both; the median of each is kept, with the load average beside it.

    python benchmarks/positional_conv.py --threads 1           # CPU: fp32, small batches, CPU time
    python benchmarks/positional_conv.py --device cuda         # GPU: bf16 autocast, 16 and 64 clips of 8 s

Both give the same result within float rounding (tests/test_packing.py); the faster on a device is the one
to set there (``model.config_overrides.positional_conv``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from ptasr import Wav2Vec2Config
from ptasr.model.wav2vec2 import PositionalConvEmbedding

sys.path.insert(0, str(Path(__file__).parent))
from train_throughput import cpu_name, synchronize  # noqa: E402 (a script beside this one)


def time_call(module: PositionalConvEmbedding, hidden: torch.Tensor, dtype: torch.dtype, device: str
              ) -> tuple[float, float]:
    """Wall and main-thread CPU seconds of one forward + backward."""
    synchronize(device)
    start, cpu = time.perf_counter(), time.thread_time()
    with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
        out = module(hidden)
    out.float().square().mean().backward()
    synchronize(device)
    return time.perf_counter() - start, time.thread_time() - cpu


def measure(width: int, batch: int, frames: int, args: argparse.Namespace) -> dict:
    config = Wav2Vec2Config.preset("xls-r-300m", hidden_size=width, num_attention_heads=max(1, width // 64))
    modules = {method: PositionalConvEmbedding(config.replace(positional_conv=method)).to(args.device)
               for method in ("direct", "fft")}
    modules["fft"].load_state_dict(modules["direct"].state_dict())
    hidden = torch.randn(batch, frames, width, device=args.device, requires_grad=True)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    times: dict[str, list[tuple[float, float]]] = {method: [] for method in modules}
    for method, module in modules.items():  # warm-up: kernel selection, FFT plans
        time_call(module, hidden, dtype, args.device)
    for _ in range(args.rounds):
        for method, module in modules.items():
            times[method].append(time_call(module, hidden, dtype, args.device))
    # With one intra-op thread the main thread's CPU time is the call's CPU work, which load does not stretch.
    index = 1 if args.threads == 1 and not gpu_device(args.device) else 0
    medians = {method: statistics.median(v[index] for v in values) for method, values in times.items()}
    return dict(width=width, batch=batch, frames=frames, dtype=str(dtype).removeprefix("torch."),
                rounds=args.rounds, timed="cpu time, 1 thread" if index else "wall time",
                direct_ms=round(medians["direct"] * 1e3, 2), fft_ms=round(medians["fft"] * 1e3, 2),
                fft_speedup=round(medians["direct"] / medians["fft"], 2),
                load_average=[round(x, 2) for x in os.getloadavg()])


def gpu_device(device: str) -> bool:
    return device.startswith("cuda")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads; 1 times CPU time, not wall")
    parser.add_argument("--first", type=int, default=None, help="only the first N shapes (a quick rehearsal)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/positional_conv_cpu.json"))
    args = parser.parse_args(argv)
    gpu = args.device == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    # (width, clips, frames): 8 s clips are 399 frames; the CPU rows are what two shared cores time in seconds.
    shapes = [(1024, 16, 399), (1024, 64, 399)] if gpu else [(256, 4, 150), (1024, 2, 150), (1024, 4, 399)]
    shapes = shapes[: args.first]
    info = dict(device=torch.cuda.get_device_name() if gpu else cpu_name(), torch=torch.__version__,
                threads=torch.get_num_threads())
    print(json.dumps(info), flush=True)
    results = []
    for width, batch, frames in shapes:
        results.append(measure(width, batch, frames, args))
        print(json.dumps(results[-1]), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(dict(info=info, results=results), indent=1) + "\n")


if __name__ == "__main__":
    main()
