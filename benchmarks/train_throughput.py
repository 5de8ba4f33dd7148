"""Training-step throughput: ptasr against transformers' Wav2Vec2ForCTC and torchaudio's wav2vec2, same weights.

One process, one device. Every system gets the same seeded Common-Voice-like batches (2-8 s clips, grouped by
length, padded to 0.5 s buckets) and the same step: forward, CTC loss (float32), backward, gradient clipping
at 1.0, AdamW (fused on CUDA), with the conv feature encoder frozen. Masking follows the reference recipe
(time 0.75 x 10 frames, feature 0.25 x 64 channels) where the system has SpecAugment; torchaudio's fine-tuning
model has none, so it runs unmasked (a little less work). Each system is warmed up on every bucket shape, then
the systems are timed in alternating rounds: the first configuration timed in a process can run slow while
kernels are selected, so no system is measured only first. Rows are printed and the JSON rewritten as each
measurement finishes, so a run cut short still reports what it measured.

    python benchmarks/train_throughput.py                      # GPU: XLS-R 300m, batches of 16 and 64
    python benchmarks/train_throughput.py --device cpu         # CPU: a small model (the issue's CPU ratio)

Throughput counts real (unpadded) audio seconds per wall second. MFU assumes 102 GFLOP per audio second
(frozen conv forward 4.9 + 3 x 32 for the rest) against --peak-tflops.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ptasr import Wav2Vec2Config, Wav2Vec2CTC
from ptasr.model.loss import ctc_loss
from ptasr.model.packing import FramePacking

SAMPLE_RATE = 16_000
VOCAB = 40
BUCKET_SAMPLES = 8_000  # 0.5 s: pad every batch up to a multiple, so compiled shapes repeat
GFLOP_PER_AUDIO_SECOND = 102.0
MASKING = dict(mask_time_prob=0.75, mask_time_length=10, mask_feature_prob=0.25, mask_feature_length=64)


@dataclass
class Batch:
    waveforms: torch.Tensor  # (B, S)
    lengths: torch.Tensor  # (B,) samples
    labels: torch.Tensor  # (B, L) padded with -100
    label_lengths: torch.Tensor  # (B,)
    host_lengths: torch.Tensor | None = None  # (B,) samples kept on the host, as the training module keeps them

    @property
    def audio_seconds(self) -> float:
        return float(self.lengths.sum()) / SAMPLE_RATE

    def to(self, device: str) -> Batch:
        tensors = (self.waveforms, self.lengths, self.labels, self.label_lengths)
        moved = (t.to(device, non_blocking=True) for t in tensors)
        return Batch(*moved, host_lengths=self.lengths)


def make_batches(clips: int, count: int, seed: int, max_seconds: float = 8.0) -> list[Batch]:
    """``count`` batches of ``clips`` clips of 2..max_seconds s, grouped by length, in random order."""
    generator = torch.Generator().manual_seed(seed)
    seconds = sorted((2.0 + (max_seconds - 2.0) * torch.rand(clips * count, generator=generator)).tolist())
    groups = [seconds[i : i + clips] for i in range(0, len(seconds), clips)]
    order = torch.randperm(len(groups), generator=generator).tolist()
    return [_batch(groups[i], generator) for i in order]


def _batch(seconds: list[float], generator: torch.Generator) -> Batch:
    lengths = torch.tensor([int(s * SAMPLE_RATE) for s in seconds])
    padded = -(-int(lengths.max()) // BUCKET_SAMPLES) * BUCKET_SAMPLES
    waveforms = torch.randn(len(seconds), padded, generator=generator)
    waveforms *= (torch.arange(padded) < lengths[:, None]).float()
    label_lengths = torch.tensor([max(1, int(s * 12)) for s in seconds])  # ~12 characters per second
    labels = torch.randint(0, VOCAB - 1, (len(seconds), int(label_lengths.max())), generator=generator)
    labels.masked_fill_(torch.arange(labels.shape[1]) >= label_lengths[:, None], -100)
    return Batch(waveforms, lengths, labels, label_lengths)


# --- the systems ---------------------------------------------------------------------------------------------


def model_config(size: str) -> Wav2Vec2Config:
    no_dropout = dict(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
                      final_dropout=0.0, layerdrop=0.0, vocab_size=VOCAB, pad_token_id=VOCAB - 1,
                      ctc_loss_reduction="mean", ctc_zero_infinity=True, **MASKING)
    if size == "xls-r-300m":
        return Wav2Vec2Config.preset("xls-r-300m", **no_dropout)
    # small: the XLS-R layout at a size a CPU times in seconds
    return Wav2Vec2Config.preset("xls-r-300m", conv_dim=(128,) * 7, hidden_size=256, num_hidden_layers=4,
                                 num_attention_heads=4, intermediate_size=1024, **no_dropout)


StepFn = Callable[[Batch], torch.Tensor]


def build_ptasr(folder: Path, device: str, compile_: bool, checkpointing: bool = False, padded: bool = False,
                positional_conv: str = "direct") -> tuple[torch.nn.Module, StepFn]:
    overrides = {} if positional_conv == "direct" else dict(positional_conv=positional_conv)
    model = Wav2Vec2CTC.from_pretrained(folder, **overrides).to(device).train()
    if padded:  # every layer on all B * T rows, lengths on the device: the padded path packing replaces
        model.wav2vec2.packing = lambda lengths, frame_lengths, frames, device: FramePacking.padded(
            frame_lengths.to(device), frames)
    model.freeze_feature_encoder()
    # Recomputing each transformer layer in the backward pass keeps only the layer inputs: the memory side
    # of the trade (model.gradient_checkpointing in the configs).
    model.set_gradient_checkpointing(checkpointing)
    if compile_:
        model.compile_blocks()  # as the training module's compile option does
    generator = torch.Generator(device=device).manual_seed(0)

    def step(batch: Batch) -> torch.Tensor:
        # The lengths on the host, as the training module passes them: the forward pass never waits.
        lengths = batch.lengths if padded else batch.host_lengths
        logits, frame_lengths = model(batch.waveforms, lengths, generator=generator)
        return ctc_loss(logits, frame_lengths, batch.labels, batch.label_lengths, blank=VOCAB - 1,
                        reduction="mean", zero_infinity=True)

    return model, step


def build_transformers(folder: Path, device: str, attention: str) -> tuple[torch.nn.Module, StepFn]:
    import transformers

    model = transformers.Wav2Vec2ForCTC.from_pretrained(folder, attn_implementation=attention).to(device).train()
    model.freeze_feature_encoder()

    def step(batch: Batch) -> torch.Tensor:
        mask = (torch.arange(batch.waveforms.shape[1], device=device) < batch.lengths[:, None]).long()
        return model(batch.waveforms, attention_mask=mask, labels=batch.labels).loss

    return model, step


def build_torchaudio(folder: Path, device: str, compile_: bool) -> tuple[torch.nn.Module, StepFn]:
    import transformers
    from torchaudio.models.wav2vec2.utils import import_huggingface_model

    model = import_huggingface_model(transformers.Wav2Vec2ForCTC.from_pretrained(folder)).to(device).train()
    for parameter in model.feature_extractor.parameters():
        parameter.requires_grad_(False)
    if compile_:
        model.encoder = torch.compile(model.encoder, dynamic=True)

    def step(batch: Batch) -> torch.Tensor:
        logits, frame_lengths = model(batch.waveforms, batch.lengths)
        return ctc_loss(logits, frame_lengths, batch.labels, batch.label_lengths, blank=VOCAB - 1,
                        reduction="mean", zero_infinity=True)

    return model, step


SYSTEMS: dict[str, Callable[[Path, str], tuple[torch.nn.Module, StepFn]]] = {
    "ptasr": lambda folder, device: build_ptasr(folder, device, compile_=False),
    "ptasr-compile": lambda folder, device: build_ptasr(folder, device, compile_=True),
    "ptasr-padded": lambda folder, device: build_ptasr(folder, device, compile_=False, padded=True),
    "ptasr-compile-padded": lambda folder, device: build_ptasr(folder, device, compile_=True, padded=True),
    "ptasr-fft": lambda folder, device: build_ptasr(folder, device, compile_=False, positional_conv="fft"),
    "ptasr-compile-fft": lambda folder, device: build_ptasr(folder, device, compile_=True, positional_conv="fft"),
    "ptasr-checkpointing": lambda folder, device: build_ptasr(folder, device, False, checkpointing=True),
    "ptasr-compile-checkpointing": lambda folder, device: build_ptasr(folder, device, True, checkpointing=True),
    "transformers-eager": lambda folder, device: build_transformers(folder, device, "eager"),
    "transformers-sdpa": lambda folder, device: build_transformers(folder, device, "sdpa"),
    "torchaudio": lambda folder, device: build_torchaudio(folder, device, compile_=False),
    "torchaudio-compile": lambda folder, device: build_torchaudio(folder, device, compile_=True),
}


# --- timing --------------------------------------------------------------------------------------------------


class Runner:
    """A built system with its optimiser; ``train(batches)`` returns the seconds the steps took."""

    def __init__(self, name: str, folder: Path, device: str, precision: str) -> None:
        self.name, self.device = name, device
        torch.manual_seed(0)
        self.model, self.step = SYSTEMS[name](folder, device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=7.5e-5, fused=device == "cuda")
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
        self.scaler = torch.amp.GradScaler(device, enabled=precision == "fp16")

    def train(self, batches: list[Batch]) -> float:
        synchronize(self.device)
        start = time.perf_counter()
        for batch in batches:
            batch = batch.to(self.device)
            with torch.autocast(self.device, dtype=self.dtype, enabled=self.dtype != torch.float32):
                loss = self.step(batch)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
        synchronize(self.device)
        return time.perf_counter() - start

    def close(self) -> None:
        del self.model, self.step, self.params, self.optimizer
        gc.collect()
        if self.device == "cuda":
            torch.cuda.empty_cache()


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (``platform.processor()`` is empty on Linux)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "cpu"


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def warm_up(runner: Runner, batches: list[Batch]) -> None:
    """One step on every distinct padded shape, so no timed step selects kernels or compiles."""
    seen: dict[tuple[int, ...], Batch] = {}
    for batch in batches:
        seen.setdefault((*batch.waveforms.shape, batch.labels.shape[1]), batch)
    runner.train(list(seen.values()))


def profile(runner: Runner, batches: list[Batch], clips: int, path: Path) -> None:
    """Where a warmed-up system's steps spend device time: torch.profiler's table of the top operators.

    Appended to ``path``, one section per system and batch size (one file: a lent GPU returns few files).
    A table, not a trace: small enough to come back from a lent GPU machine, and enough to see whether the
    time goes to matrix products, attention, elementwise kernels, the CTC loss or idle gaps (CPU total far
    above device total means the host, not the GPU, sets the pace).
    """
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    gpu = runner.device == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
    with torch_profile(activities=activities) as prof:
        seconds = runner.train(batches)
    key = "self_device_time_total" if gpu else "self_cpu_time_total"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as file:
        file.write(f"\n== {runner.name}, {clips} clips per step: {len(batches)} steps in {seconds:.3f} s under the "
                   f"profiler ==\n" + prof.key_averages().table(sort_by=key, row_limit=40, max_name_column_width=70))
    print(f"profile of {runner.name} at {clips} clips appended to {path}", flush=True)


def measure(names: list[str], clips: int, args: argparse.Namespace, folder: Path, report: Callable) -> None:
    """Build and warm up each system, then time all of them in alternating rounds; report medians.

    The systems stay resident together (a few GiB of weights and optimiser state each), so rounds alternate
    without rebuilding; each system's peak memory is counted above what was allocated before it was built.
    """
    batches = make_batches(clips, args.steps, seed=clips)
    audio = sum(b.audio_seconds for b in batches)
    padding = 1 - audio / sum(b.waveforms.numel() / SAMPLE_RATE for b in batches)
    runners: dict[str, Runner] = {}
    rounds: dict[str, list[float]] = {}
    peaks: dict[str, float | None] = {}
    for name in names:
        if time.monotonic() > args.deadline:
            print(f"skip {name} at {clips} clips: out of time", flush=True)
            continue
        try:
            base = torch.cuda.memory_allocated() if args.device == "cuda" else 0
            if args.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            runners[name] = Runner(name, folder, args.device, args.precision)
            warm_up(runners[name], batches)
            rounds[name] = [runners[name].train(batches)]
            if args.device == "cuda":
                peaks[name] = round((torch.cuda.max_memory_allocated() - base) / 2**30, 2)
        except Exception as error:  # noqa: BLE001 -- one failing system must not lose the others' numbers
            runners.pop(name, None)
            report(dict(system=name, clips=clips, error=f"{type(error).__name__}: {error}"[:300]))
    for _ in range(args.rounds - 1):
        for name, runner in runners.items():
            if time.monotonic() < args.deadline:
                rounds[name].append(runner.train(batches))
    if getattr(args, "profile", None):  # fit_throughput.py calls this with its own arguments, no profile
        for name, runner in runners.items():
            if name in args.profile_systems and time.monotonic() < args.deadline:
                profile(runner, batches[:2], clips, args.profile)
    for name, runner in runners.items():
        seconds = statistics.median(rounds[name])
        report(dict(system=name, clips=clips, precision=args.precision, steps=len(batches),
                    rounds=len(rounds[name]), step_s=round(seconds / len(batches), 4),
                    audio_s_per_s=round(audio / seconds, 1), padding=round(padding, 3), peak_gib=peaks.get(name),
                    mfu=round(audio / seconds * GFLOP_PER_AUDIO_SECOND / (args.peak_tflops * 1e3), 3)))
        runner.close()
    runners.clear()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", choices=["xls-r-300m", "small"], help="default: xls-r-300m on GPU, small on CPU")
    parser.add_argument("--systems", nargs="+", help=f"default: all on GPU; on CPU ptasr and transformers. "
                        f"Choices: {sorted(SYSTEMS)}")
    parser.add_argument("--clips", nargs="+", type=int, help="clips per step; default 16 64 (GPU), 4 (CPU)")
    parser.add_argument("--steps", type=int, help="timed steps per round; default 12 (GPU), 4 (CPU)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per system (median kept)")
    parser.add_argument("--precision", choices=["bf16", "fp16", "fp32"], help="default bf16 (GPU), fp32 (CPU)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="stop starting measurements after this")
    parser.add_argument("--peak-tflops", type=float, default=790.0, help="bf16 matmul peak for MFU (H100/H200)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train_throughput.json"))
    parser.add_argument("--profile", type=Path, default=None,
                        help="also append a torch.profiler table of two steps per system and batch size to this file")
    parser.add_argument("--profile-systems", nargs="+", default=["ptasr", "ptasr-compile"],
                        help="systems to profile (default: ptasr, ptasr-compile)")
    args = parser.parse_args(argv)
    gpu = args.device == "cuda"
    args.size = args.size or ("xls-r-300m" if gpu else "small")
    args.systems = args.systems or (list(SYSTEMS) if gpu else ["ptasr", "transformers-eager", "transformers-sdpa"])
    args.clips = args.clips or ([16, 64] if gpu else [4])
    args.steps = args.steps or (12 if gpu else 4)
    args.precision = args.precision or ("bf16" if gpu else "fp32")
    args.deadline = time.monotonic() + args.budget_s

    import transformers

    info = dict(device=torch.cuda.get_device_name() if gpu else cpu_name(),
                torch=torch.__version__, transformers=transformers.__version__, python=sys.version.split()[0],
                size=args.size, threads=torch.get_num_threads())
    results: list[dict] = []

    def report(row: dict) -> None:
        results.append(row)
        print(json.dumps(row), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(dict(info=info, results=results), indent=1) + "\n")

    print(json.dumps(info), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        # Same weights for everyone: a random transformers model, saved once and loaded by each system.
        torch.manual_seed(0)
        transformers.Wav2Vec2ForCTC(transformers.Wav2Vec2Config(**model_config(args.size).to_hf_dict())
                                    ).save_pretrained(tmp)
        for clips in args.clips:
            measure(args.systems, clips, args, Path(tmp), report)
    print_table(results)


def print_table(results: list[dict]) -> None:
    rows = [r for r in results if "error" not in r]
    print(f"\n{'system':20s} {'clips':>5s} {'step_s':>8s} {'audio-s/s':>10s} {'vs ptasr':>9s} {'peak GiB':>8s} {'MFU':>6s}")
    for row in rows:
        ours = next((r for r in rows if r["system"] == "ptasr" and r["clips"] == row["clips"]), None)
        ratio = f"{row['step_s'] / ours['step_s']:.2f}x" if ours else "-"
        print(f"{row['system']:20s} {row['clips']:5d} {row['step_s']:8.4f} {row['audio_s_per_s']:10.1f} "
              f"{ratio:>9s} {row['peak_gib'] or '-':>8} {row['mfu']:6.3f}")
    for row in results:
        if "error" in row:
            print(f"{row['system']:20s} {row['clips']:5d} ERROR {row['error'][:100]}")
    print("(vs ptasr: the system's step time over ptasr's; above 1 means ptasr is faster)")


if __name__ == "__main__":
    main()
