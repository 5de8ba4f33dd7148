"""Transcription speed, the exported ONNX model (onnxruntime) vs the PyTorch model: same weights, same audio, one run.

A randomly initialised model of ``--preset`` (its CTC head scaled so transcripts are long and stable) is written
as an HF folder and exported with ``--onnx``, as ``ptasr export --onnx`` does. Both backends run the same
recognizer (resampling, batching, greedy decoding), in float32, with the same number of CPU threads; only the
network differs. Workloads: utterances of 2 to 8 s transcribed ``--batch-size`` at a time, and one at a time.
The backends alternate, one repeat at a time, after a warm-up of each; the best of ``--repeats`` gives the
real-time factor (processing seconds per audio second; lower is faster) and the ratio ONNX / PyTorch.

    python benchmarks/onnx_speed.py                                  # XLS-R 300m, writes results/onnx_speed_cpu.json
    python benchmarks/onnx_speed.py --preset tiny --seconds 10 --out /tmp/onnx_speed.json   # a quick check

Needs ``pip install 'ptasr[onnx]'``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ptasr import Wav2Vec2Config, Wav2Vec2CTC
from ptasr.data.text import TextNormalizer, Vocabulary
from ptasr.export.hf_folder import write_hf_folder
from ptasr.export.onnx import ONNX_FILE, export_onnx, onnx_recognizer
from ptasr.recognition.recognizer import Recognizer

RESULTS = Path(__file__).parent / "results" / "onnx_speed_cpu.json"
Runner = Callable[[], list[str]]


def make_model_folder(preset: str, directory: Path) -> Recognizer:
    """A random model of ``preset`` with a Portuguese character vocabulary, as an HF folder with model.onnx."""
    vocab = Vocabulary.build(["abcdefghijklmnopqrstuvwxyz áâãàçéêíóôõú"])
    torch.manual_seed(0)
    config = Wav2Vec2Config.preset(preset, vocab_size=len(vocab), pad_token_id=vocab.pad_id)
    model = Wav2Vec2CTC(config).eval()
    with torch.no_grad():  # wide margins and fewer blanks: long transcripts that both sides agree on
        model.lm_head.weight.normal_(std=3.0 / config.hidden_size**0.5)
        model.lm_head.bias[vocab.pad_id] -= 1.0
    recognizer = Recognizer(model, vocab, TextNormalizer())
    write_hf_folder(recognizer, directory)
    return recognizer


def make_utterances(seconds: float) -> list[tuple[np.ndarray, int]]:
    """Noise-like 16 kHz utterances of 2 to 8 s until ``seconds`` (speed does not depend on the content)."""
    rng = np.random.default_rng(0)
    utterances, total = [], 0.0
    while total < seconds:
        length = float(rng.uniform(2.0, 8.0))
        utterances.append((0.1 * rng.standard_normal(int(length * 16000)).astype(np.float32), 16000))
        total += length
    return utterances


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="xls-r-300m", help="model preset (default: xls-r-300m)")
    parser.add_argument("--seconds", type=float, default=30.0, help="audio to transcribe per repeat (default: 30)")
    parser.add_argument("--batch-size", type=int, default=8, help="utterances per forward pass (default: 8)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds, best kept (default: 3)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads of both")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON results (default: {RESULTS})")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    workdir = Path(tempfile.mkdtemp(prefix="onnx_speed_"))
    torch_recognizer = make_model_folder(args.preset, workdir)
    start = time.perf_counter()
    export_onnx(torch_recognizer.model, workdir / ONNX_FILE)
    export_seconds = time.perf_counter() - start
    onnx = onnx_recognizer(workdir, threads=args.threads)
    backends = {"pytorch": torch_recognizer, "onnx": onnx}
    utterances = make_utterances(args.seconds)
    audio_seconds = sum(len(u) / rate for u, rate in utterances)

    def run(backend: str, batch_size: int) -> Runner:
        recognizer = backends[backend]
        return lambda: [t.text for t in recognizer.transcribe(utterances, batch_size=batch_size)]

    workloads = {f"utterances, batch {args.batch_size}": args.batch_size, "utterances, batch 1": 1}
    for backend in backends:  # warm-up: first calls select kernels and allocate
        backends[backend].transcribe(utterances[:2], batch_size=2)

    import onnxruntime

    info = dict(device=cpu_name(), cpu_count=os.cpu_count(), threads=args.threads, torch=torch.__version__,
                onnxruntime=onnxruntime.__version__, preset=args.preset, precision="float32",
                audio_seconds=round(audio_seconds, 1), utterances=len(utterances), repeats=args.repeats,
                export_seconds=round(export_seconds, 1), date=time.strftime("%Y-%m-%d"))
    print(json.dumps(info))
    results = []
    for workload, batch_size in workloads.items():
        times: dict[str, list[float]] = {backend: [] for backend in backends}
        texts: dict[str, list[str]] = {}
        for _ in range(args.repeats):
            for backend in backends:
                start = time.perf_counter()
                texts[backend] = run(backend, batch_size)()
                times[backend].append(time.perf_counter() - start)
        rtf = {backend: min(t) / audio_seconds for backend, t in times.items()}
        row = dict(workload=workload, rtf_pytorch=round(rtf["pytorch"], 4), rtf_onnx=round(rtf["onnx"], 4),
                   onnx_over_pytorch=round(rtf["onnx"] / rtf["pytorch"], 3),
                   same_transcripts=texts["onnx"] == texts["pytorch"],
                   seconds={backend: [round(t, 3) for t in ts] for backend, ts in times.items()})
        results.append(row)
        print(json.dumps(row))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(dict(info=info, results=results), indent=1) + "\n")


if __name__ == "__main__":
    main()
