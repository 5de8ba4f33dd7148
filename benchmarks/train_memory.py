"""Peak memory of a training step: ptasr against transformers' Wav2Vec2ForCTC and torchaudio's wav2vec2.

The same systems, weights, batches and step as ``train_throughput.py`` (forward, CTC, backward, clipping, AdamW,
bf16 autocast), run for two steps each, one system at a time. The second step is the first with the optimiser
state allocated, so the two cover both the peak of a fresh run and that of every later step.

What is counted is what ``torch.cuda.max_memory_allocated`` counts: the bytes of live tensor storage, each rounded
up to 512 bytes as CUDA's caching allocator does; weights, gradients, optimiser state, activations and
temporaries all included. On a GPU the script reads the allocator's own counter. Without one it counts the same
bytes itself: a ``TorchDispatchMode`` sees every tensor an operator returns, and a finaliser on its storage sees
it freed. Two things differ between CPU and CUDA here, and the first is corrected:

- CUDA's autocast runs LayerNorm, GroupNorm, softmax and log-softmax in float32, casting a bf16 input to a float32
  copy (which the backward pass keeps); CPU's autocast runs them in bf16. ``cuda_autocast_norms()`` registers
  CUDA's rule for these operators on the CPU, so the CPU keeps the same tensors a GPU does.
- Memory that kernels take for themselves (cuBLAS and cuDNN workspaces, a CTC kernel's scratch) is not a tensor an
  operator returns, so it is not counted on CPU: a few tens of MiB on a GPU.

Compare the CPU figures with the GPU's in ``results/train_throughput_h200.json`` (the ``peak_gib`` column) to see
how well they agree.

    python benchmarks/train_memory.py                 # XLS-R 300m, 16 clips; GPU if there is one, else CPU
    python benchmarks/train_memory.py --systems ptasr ptasr-checkpointing --clips 16 64
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, str(Path(__file__).parent))
from train_throughput import SYSTEMS, Runner, cpu_name, make_batches, model_config  # noqa: E402

CUDA_BLOCK = 512  # CUDA's caching allocator rounds every allocation up to this


class PeakTensorMemory(TorchDispatchMode):
    """Counts live tensor storage (rounded up to ``CUDA_BLOCK`` bytes) and its peak, for any device.

    Every operator's outputs are seen as they are made; each new storage is counted once, however many views
    share it, and uncounted when it is freed. Tensors made before the mode was entered (or outside any
    operator, such as weights read from a file) are counted with :meth:`track`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._sizes: dict[tuple[int, int], int] = {}  # (address, bytes) of each live storage -> bytes counted

    def track(self, tensors: Iterator[torch.Tensor]) -> None:
        for tensor in tensors:
            self._add(tensor)

    def _key(self, storage: torch.UntypedStorage) -> tuple[int, int]:
        """What tells storages apart: their address and size."""
        return storage.data_ptr(), storage.nbytes()

    def _add(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = self._key(storage)
        if storage.nbytes() == 0 or key in self._sizes:
            return
        size = -(-storage.nbytes() // CUDA_BLOCK) * CUDA_BLOCK
        self._sizes[key] = size
        self.live += size
        self.peak = max(self.peak, self.live)
        # The storage's Python object lives exactly as long as the storage itself: the finaliser runs when the
        # last tensor (or autograd's saved copy) lets go of it.
        weakref.finalize(storage, self._free, key)

    def _free(self, key: tuple[int, int]) -> None:
        self.live -= self._sizes.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 -- torch's protocol
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self._add(value)
        return out


# Operators that CUDA's autocast runs in float32 and that these models call (torch/amp/autocast_mode's CUDA
# list). layer_norm and group_norm are CompositeImplicit: registering at that level casts where CUDA's does.
_CUDA_FLOAT32_OPS = ("layer_norm", "group_norm", "softmax.int", "log_softmax.int")


@contextlib.contextmanager
def cuda_autocast_norms() -> Iterator[None]:
    """Within: CPU autocast casts the inputs of ``_CUDA_FLOAT32_OPS`` to float32, as CUDA autocast does."""
    library = torch.library.Library("aten", "IMPL")
    exclude = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)

    def to_float32(value: object) -> object:
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.float64:
            return value.float()
        return value

    def register(name: str) -> None:
        overload = getattr(torch.ops.aten, name.split(".")[0])
        overload = getattr(overload, name.split(".")[1] if "." in name else "default")

        def in_float32(*args: object, **kwargs: object) -> torch.Tensor:
            # softmax/log_softmax with an explicit dtype keep it, as under CUDA autocast.
            dtype = kwargs.get("dtype", args[2] if len(args) > 2 else None)
            if name.startswith(("softmax", "log_softmax")) and dtype is not None:
                with torch._C._ExcludeDispatchKeyGuard(exclude):
                    return overload(*args, **kwargs)
            with torch._C._ExcludeDispatchKeyGuard(exclude):
                return overload(*(to_float32(a) for a in args), **kwargs)

        library.impl(name, in_float32, "AutocastCPU")

    for name in _CUDA_FLOAT32_OPS:
        register(name)
    try:
        yield
    finally:
        library._destroy()


def measure(name: str, clips: int, args: argparse.Namespace, folder: Path) -> dict:
    """Peak GiB over two steps of one system, built fresh (nothing else resident)."""
    # The largest of the batches train_throughput.py times at this size (same seed): the one that sets its peak.
    batch = max(make_batches(clips, 10, seed=clips), key=lambda b: (b.waveforms.numel(), b.labels.numel()))
    start = time.perf_counter()
    if args.device == "cuda":
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        runner = Runner(name, folder, args.device, args.precision)
        runner.train([batch, batch])
        peak = torch.cuda.max_memory_allocated() - base
    else:
        with PeakTensorMemory() as counter, cuda_autocast_norms():
            runner = Runner(name, folder, args.device, args.precision)
            counter.track(runner.model.state_dict(keep_vars=True).values())  # weights may come from a file
            runner.train([batch, batch])
        peak = counter.peak
    runner.close()
    return dict(system=name, clips=clips, precision=args.precision, peak_gib=round(peak / 2**30, 2),
                audio_s=round(batch.audio_seconds, 1), seconds=round(time.perf_counter() - start, 1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", choices=["xls-r-300m", "small"], default="xls-r-300m")
    parser.add_argument("--systems", nargs="+", default=["transformers-sdpa", "torchaudio", "ptasr",
                                                         "ptasr-checkpointing"], help=f"of {sorted(SYSTEMS)}")
    parser.add_argument("--clips", nargs="+", type=int, default=[16], help="clips per step")
    parser.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default="bf16")
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/train_memory_<device>.json")
    args = parser.parse_args(argv)
    args.out = args.out or Path(f"benchmarks/results/train_memory_{args.device}.json")

    import transformers

    gpu = args.device == "cuda"
    info = dict(device=torch.cuda.get_device_name() if gpu else cpu_name(),
                counted_by="torch.cuda.max_memory_allocated" if gpu else "PeakTensorMemory with CUDA's autocast rules",
                torch=torch.__version__, transformers=transformers.__version__, python=sys.version.split()[0],
                size=args.size)
    print(json.dumps(info), flush=True)
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        transformers.Wav2Vec2ForCTC(transformers.Wav2Vec2Config(**model_config(args.size).to_hf_dict())
                                    ).save_pretrained(tmp)
        for clips in args.clips:
            for name in args.systems:
                results.append(measure(name, clips, args, Path(tmp)))
                print(json.dumps(results[-1]), flush=True)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(dict(info=info, results=results), indent=1) + "\n")
    print_table(results)


def print_table(results: list[dict]) -> None:
    print(f"\n{'system':28s} {'clips':>5s} {'peak GiB':>9s} {'vs best peer':>13s}")
    for row in results:
        peers = [r["peak_gib"] for r in results if r["clips"] == row["clips"] and not r["system"].startswith("ptasr")]
        ratio = f"{row['peak_gib'] / min(peers):.2f}x" if peers else "-"
        print(f"{row['system']:28s} {row['clips']:5d} {row['peak_gib']:9.2f} {ratio:>13s}")
    print("(vs best peer: the system's peak over the lowest peak among transformers and torchaudio)")


if __name__ == "__main__":
    main()
