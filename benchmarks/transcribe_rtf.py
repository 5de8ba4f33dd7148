"""Transcription speed, ptasr vs transformers' ASR pipeline: same model, same audio, one process, CPU by default.

Both load the same exported folder (a randomly initialised model of the chosen preset, its CTC head scaled so
transcripts are long and stable) and get the same decoded 48 kHz audio, so each side pays for its own
resampling, normalisation, chunking, batching, forward passes and decoding. Workloads:

- ``utterances``: Common-Voice-like utterances of 1.5 to 10 s (1 to 5 bundled clips joined), in corpus order,
  transcribed ``--batch-size`` at a time by both;
- ``long``: all of them joined into one recording, cut into 20 s chunks with the default stride (20 / 6 s);
- ``utterances, batch 1``: the pipeline's default batch size, one utterance per forward pass on both sides.

Each system runs in float32 and in bfloat16 (``--dtypes``); all of them alternate, one repeat at a time, after
a warm-up of each, and the best of ``--repeats`` gives the real-time factor (processing seconds per audio
second; lower is faster). Two ratios come out of the same timings:

- same precision: ptasr / transformers, both float32 (and both bfloat16);
- as shipped: ptasr with its default ``--dtype auto`` (bfloat16 where the device computes it natively, else
  float32) / transformers' pipeline with its default (float32).

The "differ" columns are the character error rate of one system's transcripts against the other's (0 when
they agree). When it batches, transformers' pipeline also decodes the padded frames after each shorter
utterance, so those transcripts end in extra characters; one at a time, its output agrees with ptasr's, whose
transcripts do not depend on the batch size. The last row times ptasr
reading the files itself (decoding included), which transformers cannot do without FFmpeg.

    python benchmarks/transcribe_rtf.py --preset xls-r-300m --seconds 60 --repeats 3 --out results.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import jiwer
import numpy as np
import soundfile as sf
import torch
from train_throughput import cpu_name  # the script beside this one

from ptasr.compat import cpu_has_native_bf16
from ptasr.data import BUNDLED_CORPUS
from ptasr.data.text import TextNormalizer, Vocabulary
from ptasr.export.hf_folder import write_hf_folder
from ptasr.model.config import Wav2Vec2Config
from ptasr.model.wav2vec2 import Wav2Vec2CTC
from ptasr.recognition.devices import resolve_dtype
from ptasr.recognition.recognizer import Chunking, Recognizer

Runner = Callable[[], list[str]]


def make_model_folder(preset: str, directory: Path) -> Path:
    """A random model of ``preset`` with a Portuguese character vocabulary, exported as an HF folder."""
    vocab = Vocabulary.build(["abcdefghijklmnopqrstuvwxyz áâãàçéêíóôõú"])
    torch.manual_seed(0)
    config = Wav2Vec2Config.preset(preset, vocab_size=len(vocab), pad_token_id=vocab.pad_id)
    model = Wav2Vec2CTC(config)
    with torch.no_grad():  # wide margins and fewer blanks: long transcripts that both sides agree on
        model.lm_head.weight.normal_(std=3.0 / config.hidden_size**0.5)
        model.lm_head.bias[vocab.pad_id] -= 1.0
    write_hf_folder(Recognizer(model, vocab, TextNormalizer()), directory)
    return directory


def make_utterances(seconds: float, directory: Path) -> tuple[list[Path], list[np.ndarray], int]:
    """MP3-decoded bundled clips joined 1 to 5 at a time until ``seconds``; also written as FLAC files."""
    rng = random.Random(0)
    clips = sorted(Path(BUNDLED_CORPUS, "clips").glob("*.mp3"))
    paths, utterances, total, rate = [], [], 0.0, 48000
    while total < seconds:
        parts = [sf.read(clips[(len(paths) * 5 + i) % len(clips)], dtype="float32") for i in range(rng.randint(1, 5))]
        rate = parts[0][1]
        samples = np.concatenate([p for p, _ in parts])
        path = directory / f"utterance_{len(paths):03d}.flac"
        sf.write(path, samples, rate)
        paths.append(path)
        utterances.append(samples)
        total += len(samples) / rate
    return paths, utterances, rate


def cpu_description() -> str:
    """The CPU's model name and whether it has native bf16 (what ``--dtype auto`` looks at)."""
    bf16 = cpu_has_native_bf16()
    return f"{cpu_name()} ({'native' if bf16 else 'no native'} bf16)"


def timed(run: Runner) -> tuple[float, list[str]]:
    start = time.perf_counter()
    texts = run()
    return time.perf_counter() - start, texts


def differ(reference: list[str], texts: list[str]) -> float:
    """CER of ``texts`` against ``reference``, whitespace runs collapsed (transformers keeps doubled spaces)."""
    return jiwer.cer([" ".join(t.split()) for t in reference], [" ".join(t.split()) for t in texts])


def measure(runners: dict[str, Runner], repeats: int) -> tuple[dict[str, float], dict[str, list[str]]]:
    """Best wall time of each runner over ``repeats`` alternating rounds, and its transcripts."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    texts: dict[str, list[str]] = {}
    for _ in range(repeats):
        for name, run in runners.items():
            seconds, texts[name] = timed(run)
            times[name].append(seconds)
    return {name: min(t) for name, t in times.items()}, texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="xls-r-300m")
    parser.add_argument("--seconds", type=float, default=60.0, help="audio per workload")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--chunk-length-s", type=float, default=20.0)
    parser.add_argument("--dtypes", default="float32,bfloat16", help="precisions to time, for both systems")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu (the benchmark's subject) or cuda")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures here as JSON")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import transformers

    transformers.logging.set_verbosity_error()
    device = torch.device(args.device)
    dtypes = args.dtypes.split(",")
    auto = str(resolve_dtype("auto", device)).removeprefix("torch.")
    if auto not in dtypes:
        dtypes.append(auto)
    workdir = Path(tempfile.mkdtemp())
    folder = make_model_folder(args.preset, workdir / args.preset)
    recognizers = {dtype: Recognizer.load(folder, device=device, dtype=dtype) for dtype in dtypes}
    pipelines = {dtype: transformers.pipeline("automatic-speech-recognition", model=str(folder), device=device,
                                              dtype=getattr(torch, dtype)) for dtype in dtypes}
    paths, utterances, rate = make_utterances(args.seconds, workdir)
    audio_seconds = sum(len(u) for u in utterances) / rate
    recording = np.concatenate(utterances)
    chunking = Chunking(args.chunk_length_s)
    pairs = [(u, rate) for u in utterances]

    def ptasr_run(dtype: str, inputs: list, batch_size: int) -> Runner:
        recognizer = recognizers[dtype]
        return lambda: [t.text for t in recognizer.transcribe(inputs, batch_size=batch_size, chunking=chunking)]

    def hf_run(dtype: str, arrays: list[np.ndarray], batch_size: int, **kw: float) -> Runner:
        asr = pipelines[dtype]  # fresh dicts every call: the pipeline pops their keys
        return lambda: [out["text"] for out in asr([{"raw": a, "sampling_rate": rate} for a in arrays],
                                                   batch_size=batch_size, **kw)]

    workloads = {
        "utterances": (lambda d: ptasr_run(d, pairs, args.batch_size), lambda d: hf_run(d, utterances, args.batch_size)),
        "long": (lambda d: ptasr_run(d, [(recording, rate)], args.batch_size),
                 lambda d: hf_run(d, [recording], args.batch_size, chunk_length_s=args.chunk_length_s)),
        "utterances, batch 1": (lambda d: ptasr_run(d, pairs, 1), lambda d: hf_run(d, utterances, 1)),
    }
    for dtype in dtypes:  # warm-up: first calls select kernels and allocate
        ptasr_run(dtype, pairs[:2], 2)(), hf_run(dtype, utterances[:2], 2)()

    info = dict(device=torch.cuda.get_device_name() if device.type == "cuda" else cpu_description(),
                cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(), torch=torch.__version__,
                transformers=transformers.__version__, preset=args.preset, audio_seconds=round(audio_seconds, 1),
                utterances=len(utterances), batch_size=args.batch_size, chunk_length_s=args.chunk_length_s,
                repeats=args.repeats, ptasr_auto_dtype=auto, date=time.strftime("%Y-%m-%d"))
    print(json.dumps(info))
    header = " | ".join(f"ptasr {d} | transformers {d}" for d in dtypes)
    print(f"real-time factor (best of {args.repeats}; lower is faster) and ratios ptasr / transformers\n")
    print(f"| workload | {header} | same precision | as shipped (ptasr auto = {auto} / transformers float32) |"
          f" differ: ptasr float32 vs transformers float32 | differ: ptasr {auto} vs transformers float32 |")
    print("|---" * (5 + 2 * len(dtypes)) + "|")
    results = []
    for name, (ours, theirs) in workloads.items():
        runners = {f"ptasr {d}": ours(d) for d in dtypes} | {f"transformers {d}": theirs(d) for d in dtypes}
        best, texts = measure(runners, args.repeats)
        rtf = {key: seconds / audio_seconds for key, seconds in best.items()}
        same = " / ".join(f"{rtf[f'ptasr {d}'] / rtf[f'transformers {d}']:.2f}" for d in dtypes)
        shipped = rtf[f"ptasr {auto}"] / rtf["transformers float32"]
        row = dict(workload=name, rtf={k: round(v, 4) for k, v in rtf.items()}, shipped_ratio=round(shipped, 3),
                   differ_fp32=round(differ(texts["transformers float32"], texts["ptasr float32"]), 4),
                   differ_shipped=round(differ(texts["transformers float32"], texts[f"ptasr {auto}"]), 4))
        results.append(row)
        cells = " | ".join(f"{rtf[f'ptasr {d}']:.3f} | {rtf[f'transformers {d}']:.3f}" for d in dtypes)
        print(f"| {name} | {cells} | {same} | **{shipped:.2f}** | {row['differ_fp32']:.2%} | "
              f"{row['differ_shipped']:.2%} |", flush=True)
        if args.out:
            args.out.write_text(json.dumps(dict(info=info, results=results), indent=1) + "\n")
    from_files = min(timed(ptasr_run(auto, paths, args.batch_size))[0] for _ in range(args.repeats))
    print(f"\nptasr {auto} reading the FLAC files itself (decoding included): RTF {from_files / audio_seconds:.3f}")


if __name__ == "__main__":
    main()
