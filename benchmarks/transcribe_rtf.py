"""Transcription speed, ptasr vs transformers' ASR pipeline: same model, same audio, one process, CPU by default.

Both load the same exported folder (a randomly initialised model of the chosen preset, its CTC head scaled so
transcripts are long and stable) and get the same decoded 48 kHz audio, so each side pays for its own
resampling, normalisation, chunking, batching, forward passes and decoding. Workloads:

- ``utterances``: Common-Voice-like utterances of 1.5 to 10 s (1 to 5 bundled clips joined), in corpus order,
  transcribed ``--batch-size`` at a time by both;
- ``long``: all of them joined into one recording, cut into 20 s chunks with the default stride (20 / 6 s);
- ``utterances, batch 1``: the pipeline's default batch size, one utterance per forward pass on both sides.

Runs alternate between the systems after a warm-up of each; the best of ``--repeats`` gives the real-time
factor (processing seconds per audio second; lower is faster). The last row times ptasr reading the MP3 files
itself (decoding included), which transformers cannot do without FFmpeg.

    python benchmarks/transcribe_rtf.py --preset xls-r-300m --seconds 60 --repeats 3 [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import jiwer
import numpy as np
import soundfile as sf
import torch

from ptasr.data import BUNDLED_CORPUS
from ptasr.data.text import TextNormalizer, Vocabulary
from ptasr.export import write_hf_folder
from ptasr.inference import Chunking, Recognizer
from ptasr.model.config import Wav2Vec2Config
from ptasr.model.wav2vec2 import Wav2Vec2CTC

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


def timed(run: Runner) -> tuple[float, list[str]]:
    start = time.perf_counter()
    texts = run()
    return time.perf_counter() - start, texts


def compare(name: str, ours: Runner, theirs: Runner, audio_seconds: float, repeats: int) -> str:
    """One table row: alternate the two systems ``repeats`` times; best and median times, transcript agreement."""
    ours_s, theirs_s = [], []
    for _ in range(repeats):
        seconds, ours_texts = timed(ours)
        ours_s.append(seconds)
        seconds, theirs_texts = timed(theirs)
        theirs_s.append(seconds)
    # Character error rate of ptasr's transcripts against transformers': 0 when they agree. Random weights leave
    # a few near-ties between the two best tokens of a frame, which float rounding may break either way.
    differ = jiwer.cer([" ".join(t.split()) for t in theirs_texts], ours_texts)
    return (f"| {name} | {min(ours_s) / audio_seconds:.3f} | {min(theirs_s) / audio_seconds:.3f} | "
            f"{min(ours_s) / min(theirs_s):.2f} | {statistics.median(ours_s) / statistics.median(theirs_s):.2f} | "
            f"{differ:.2%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="xls-r-300m")
    parser.add_argument("--seconds", type=float, default=60.0, help="audio per workload")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--chunk-length-s", type=float, default=20.0)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="both systems")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu (the benchmark's subject) or cuda")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import transformers

    transformers.logging.set_verbosity_error()
    dtype = getattr(torch, args.dtype)
    workdir = Path(tempfile.mkdtemp())
    folder = make_model_folder(args.preset, workdir / args.preset)
    recognizer = Recognizer.load(folder, device=args.device, dtype=dtype)
    asr = transformers.pipeline("automatic-speech-recognition", model=str(folder), device=args.device, dtype=dtype)
    paths, utterances, rate = make_utterances(args.seconds, workdir)
    audio_seconds = sum(len(u) for u in utterances) / rate
    recording = np.concatenate(utterances)
    chunking = Chunking(args.chunk_length_s)

    def ptasr_run(inputs: list, batch_size: int = args.batch_size) -> Runner:
        return lambda: [t.text for t in recognizer.transcribe(inputs, batch_size=batch_size, chunking=chunking)]

    def hf_run(arrays: list[np.ndarray], batch_size: int = args.batch_size, **kw: float) -> Runner:
        # fresh dicts every call: the pipeline pops their keys
        return lambda: [out["text"] for out in asr([{"raw": a, "sampling_rate": rate} for a in arrays],
                                                   batch_size=batch_size, **kw)]

    ptasr_run([(u, rate) for u in utterances[:2]])(), hf_run(utterances[:2])()  # warm-up
    print(f"{args.device}: preset {args.preset} ({args.dtype}), {audio_seconds:.1f} s of audio in {len(utterances)} "
          f"utterances, "
          f"batch {args.batch_size}, chunks {args.chunk_length_s} s, torch threads {torch.get_num_threads()}, "
          f"best of {args.repeats}")
    print("| workload | ptasr RTF | transformers RTF | ptasr / transformers (best) | (median) "
          "| transcripts differ (CER) |")
    print("|---|---:|---:|---:|---:|---:|")
    pairs = [(u, rate) for u in utterances]
    print(compare("utterances", ptasr_run(pairs), hf_run(utterances), audio_seconds, args.repeats))
    print(compare("long", ptasr_run([(recording, rate)]),
                  hf_run([recording], chunk_length_s=args.chunk_length_s), audio_seconds, args.repeats))
    print(compare("utterances, batch 1", ptasr_run(pairs, 1), hf_run(utterances, 1), audio_seconds, args.repeats))
    from_files = min(timed(ptasr_run(paths))[0] for _ in range(args.repeats))
    print(f"| utterances, ptasr from FLAC files | {from_files / audio_seconds:.3f} | | | | |")


if __name__ == "__main__":
    main()
