"""``ptasr transcribe`` and ``ptasr evaluate`` in-process, on a small random model and a copy of the bundled corpus."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import jiwer
import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import HANG_S

from ptasr.cli import main
from ptasr.data.commonvoice import read_tsv
from ptasr.data.testing import make_corpus
from ptasr.data.text import TextNormalizer, Vocabulary
from ptasr.model.config import Wav2Vec2Config
from ptasr.model.wav2vec2 import Wav2Vec2CTC
from ptasr.recognition.devices import resolve_dtype
from ptasr.recognition.recognizer import Chunking, Recognizer, chunk_recording, kept_frames

TINY = dict(conv_dim=(32,) * 7, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)


def write_checkpoint(path: Path, vocab: Vocabulary, vocab_size: int | None = None) -> Path:
    """A checkpoint in the layout train.py's LightningModule saves (weights under "model.", text side in "ptasr").

    The CTC head is scaled and biased against the blank so the random model emits many characters.
    """
    torch.manual_seed(0)
    config = Wav2Vec2Config.preset("tiny", vocab_size=vocab_size or len(vocab), pad_token_id=vocab.pad_id, **TINY)
    model = Wav2Vec2CTC(config)
    with torch.no_grad():
        model.lm_head.weight.normal_(std=3.0)
        model.lm_head.bias[min(vocab.pad_id, config.vocab_size - 1)] -= 2.0
    torch.save({
        "state_dict": {f"model.{key}": value for key, value in model.state_dict().items()},
        "ptasr": {"model_config": dataclasses.asdict(config), "vocab": vocab.to_dict(),
                  "normalizer": TextNormalizer().to_dict()},
        "hyper_parameters": {"lr": 1e-3}, "global_step": 0, "epoch": 0,
    }, path)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"), {"train": 4, "dev": 2, "test": 6}).root


@pytest.fixture(scope="module")
def vocab(corpus: Path) -> Vocabulary:
    normalizer = TextNormalizer()
    return Vocabulary.build(normalizer(s) for split in ("train", "dev", "test")
                            for s in read_tsv(corpus / f"{split}.tsv")["sentence"])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, vocab: Vocabulary) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "last.ckpt", vocab)


@pytest.fixture(scope="module")
def clips(corpus: Path) -> list[Path]:
    return sorted((corpus / "clips").glob("*.mp3"))


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# --- transcribe ----------------------------------------------------------------------------------------------


def test_transcribe_text_and_jsonl_with_word_timestamps(checkpoint: Path, clips: list[Path],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["transcribe", str(checkpoint), str(clips[0]), str(clips[1]), "--device", "cpu"], capsys)
    assert code == 0
    lines = [line.split("\t") for line in out.splitlines()]
    assert [path for path, _ in lines] == [str(clips[0]), str(clips[1])]
    code, out, _ = run(["transcribe", str(checkpoint), str(clips[0]), str(clips[1]), "--format", "jsonl",
                        "--word-timestamps"], capsys)
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    for (_, text), record in zip(lines, records, strict=True):
        assert text and record["text"] == text
        assert [w["word"] for w in record["words"]] == text.split()
        times = [t for w in record["words"] for t in (w["start"], w["end"])]
        assert times == sorted(times) and 0 <= times[0] and times[-1] <= record["duration"]
        assert all(set(w) == {"word", "start", "end", "confidence"} and 0 <= w["confidence"] <= 1
                   for w in record["words"])


def test_formats_rates_and_channels_give_the_same_transcript(checkpoint: Path, clips: list[Path], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    mono, rate = sf.read(clips[0], dtype="float32")  # (S,) at 48 kHz
    sf.write(tmp_path / "a_mono.flac", mono, rate)
    sf.write(tmp_path / "b_stereo.wav", np.stack([mono, mono], axis=1), rate, subtype="FLOAT")
    # float32: the random model has near-ties that bf16's coarser rounding of different inputs could flip
    code, out, _ = run(["transcribe", str(checkpoint), str(tmp_path), str(clips[0]), "--dtype", "float32"], capsys)
    assert code == 0
    texts = {Path(path).name: text for path, text in (line.split("\t") for line in out.splitlines())}
    assert list(texts) == ["a_mono.flac", "b_stereo.wav", clips[0].name]  # folder contents sorted
    assert len(set(texts.values())) == 1


def test_auto_dtype_is_float32_on_any_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    # bf16 on a CPU changes transcripts (and its kernels differ by CPU): "auto" never picks it there.
    cpu = torch.device("cpu")
    for avx512_bf16, amx in [(False, False), (True, False), (False, True)]:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda value=avx512_bf16: value)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda value=amx: value)
        assert resolve_dtype("auto", cpu) is torch.float32
    assert resolve_dtype("float16", cpu) is torch.float16 and resolve_dtype(torch.float32, cpu) is torch.float32


def test_bf16_transcripts_follow_float32(checkpoint: Path, clips: list[Path]) -> None:
    # The test checkpoint's head is scaled for wide margins between the best two tokens of most frames; a
    # random model still has some near-ties, which bf16 (emulated where the CPU lacks it) may break the other
    # way. (On the demo's trained model the two precisions score within 0.005 WER and 0.002 CER: README.)
    texts = {dtype: [t.text for t in Recognizer.load(checkpoint, dtype=dtype).transcribe(clips)]
             for dtype in (torch.float32, torch.bfloat16)}
    assert all(texts[torch.float32])
    assert jiwer.cer(texts[torch.float32], texts[torch.bfloat16]) < 0.1


def test_batching_does_not_change_transcripts(checkpoint: Path, clips: list[Path]) -> None:
    recognizer = Recognizer.load(checkpoint, dtype=torch.float32)
    one = [t.text for t in recognizer.transcribe(clips, batch_size=1)]
    four = [t.text for t in recognizer.transcribe(clips, batch_size=4, group_size=3)]
    assert one == four and all(one)


@pytest.mark.parametrize("samples", [0, 100, 16000, 47_999, 48_000, 48_001, 250_000])
def test_chunks_tile_the_recording(samples: int) -> None:
    # 1 s chunks with 0.2 s of context: the kept frames of consecutive chunks meet, and together cover the audio.
    spf = 320
    chunks = Chunking(1.0, 0.2).split(samples, spf)
    assert chunks == chunk_recording(samples, 16000, 3200, 3200)
    if samples == 0:
        assert chunks == []  # nothing to run; the transcript is empty
        return
    spans = [(c.start // spf + first, c.start // spf + last) for c in chunks for first, last in [kept_frames(c, spf)]]
    assert spans[0][0] == 0 and abs(spans[-1][1] - round(samples / spf)) <= 1
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert abs(start - end) <= 1


def test_unreadable_file_is_skipped_not_fatal(checkpoint: Path, clips: list[Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.mp3"
    broken.write_bytes(b"not audio at all" * 100)
    code, out, err = run(["transcribe", str(checkpoint), str(broken), str(clips[0])], capsys)
    assert code == 1
    assert out.startswith(f"{clips[0]}\t") and len(out.splitlines()) == 1
    assert "skipped" in err and "broken.mp3" in err and "Traceback" not in err


# --- evaluate ------------------------------------------------------------------------------------------------


def test_evaluate_release_split(checkpoint: Path, corpus: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["evaluate", str(checkpoint), "--data", str(corpus), "--split", "test",
                        "--output-dir", str(tmp_path), "--worst", "3"], capsys)
    assert code == 0
    results = json.loads((tmp_path / f"{corpus.name}_test_eval_results.json").read_text(encoding="utf-8"))
    txt = (tmp_path / f"{corpus.name}_test_eval_results.txt").read_text(encoding="utf-8")
    assert txt == f"WER: {results['wer']}\nCER: {results['cer']}\n"
    assert f"WER: {results['wer']:.4f}" in out
    # Corpus WER and CER are jiwer's over the whole list of utterances, not a mean of per-utterance rates.
    rows = [line.split("\t") for line in
            (tmp_path / f"{corpus.name}_test_predictions.tsv").read_text(encoding="utf-8").splitlines()[1:]]
    references, predictions = [r[3] for r in rows], [r[4] for r in rows]
    assert results["wer"] == pytest.approx(jiwer.wer(references, predictions), abs=1e-6)
    assert results["cer"] == pytest.approx(jiwer.cer(references, predictions), abs=1e-6)
    # The saved normaliser was applied to the references.
    sentences = read_tsv(corpus / "test.tsv")["sentence"]
    assert references == [TextNormalizer()(s) for s in sentences]
    assert results["utterances"] == len(sentences) == 6
    for column in ("gender", "age", "accent"):
        assert sum(group["utterances"] for group in results["by"][column].values()) == 6
    errors = [w["errors"] for w in results["worst"]]
    assert len(errors) == 3 and errors == sorted(errors, reverse=True)
    # The default precision is "auto", and the results say what it became on this machine.
    assert (results["device"], results["dtype"]) == ("cpu", str(resolve_dtype("auto", torch.device("cpu")))[6:])
    assert f"{results['dtype']} on cpu" in out


def test_evaluate_tsv_equals_release_split(checkpoint: Path, corpus: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(checkpoint), "--data", str(corpus), "--output-dir", str(tmp_path / "a")]) == 0
    assert main(["evaluate", str(checkpoint), "--data", str(corpus / "test.tsv"), "--limit", "4",
                 "--output-dir", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    full = (tmp_path / "a" / f"{corpus.name}_test_predictions.tsv").read_text(encoding="utf-8").splitlines()
    limited = (tmp_path / "b" / f"{corpus.name}_test_predictions.tsv").read_text(encoding="utf-8").splitlines()
    assert limited == full[:5]  # header + the first 4 rows, identical


def test_evaluate_with_an_lm(checkpoint: Path, corpus: Path, vocab: Vocabulary, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("flashlight.lib.text.decoder")
    words = sorted({w for s in read_tsv(corpus / "test.tsv")["sentence"] for w in TextNormalizer()(s).split()})
    lm = tmp_path / "words.arpa"
    lm.write_text(_unigram_bigram_arpa(words), encoding="utf-8")
    code, out, _ = run(["evaluate", str(checkpoint), "--data", str(corpus), "--lm", str(lm), "--lm-weight", "5",
                        "--output-dir", str(tmp_path)], capsys)
    assert code == 0 and "beam+lm decoding" in out
    results = json.loads((tmp_path / f"{corpus.name}_test_eval_results.json").read_text(encoding="utf-8"))
    assert results["decoder"] == "beam+lm" and math.isfinite(results["wer"])


def _unigram_bigram_arpa(words: list[str]) -> str:
    """Uniform unigrams and a bigram from <s> to each word (flashlight's KenLM needs order >= 2)."""
    p = math.log10(1 / (len(words) + 1))
    lines = ["\\data\\", f"ngram 1={len(words) + 3}", f"ngram 2={len(words)}", "", "\\1-grams:",
             "-99\t<s>\t0", f"{p:.4f}\t</s>", f"{p - 2:.4f}\t<unk>"]
    lines += [f"{p:.4f}\t{w}\t0" for w in words] + ["", "\\2-grams:"]
    lines += [f"{p:.4f}\t<s> {w}" for w in words] + ["", "\\end\\", ""]
    return "\n".join(lines)


# --- errors: one line, no traceback, non-zero status ---------------------------------------------------------


@pytest.fixture
def bad_models(tmp_path: Path, vocab: Vocabulary) -> dict[str, Path]:
    text_file = tmp_path / "notes.ckpt"
    text_file.write_text("hello", encoding="utf-8")
    folder = tmp_path / "empty_folder"
    folder.mkdir()
    return {
        "missing": tmp_path / "missing.ckpt",
        "not a checkpoint": text_file,
        "folder without config.json": folder,
        "head does not fit the vocabulary": write_checkpoint(tmp_path / "mismatch.ckpt", vocab, len(vocab) + 3),
    }


@pytest.mark.parametrize("case", ["missing", "not a checkpoint", "folder without config.json",
                                  "head does not fit the vocabulary"])
def test_bad_model_is_one_line(case: str, bad_models: dict[str, Path], clips: list[Path],
                               capsys: pytest.CaptureFixture[str]) -> None:
    model = bad_models[case]
    code, out, err = run(["transcribe", str(model), str(clips[0])], capsys)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err and model.name in err, err


def test_bad_data_is_one_line(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["transcribe", str(checkpoint), str(tmp_path / "nothing.wav")],
                 ["evaluate", str(checkpoint), "--data", str(tmp_path / "no_corpus")],
                 ["evaluate", str(checkpoint), "--data", str(tmp_path), "--split", "test"]):
        code, _, err = run(argv, capsys)
        assert code == 1 and err.count("\n") == 1 and "Traceback" not in err and str(tmp_path) in err, err


def test_offline_hub_id_is_one_line(clips: list[Path], monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run(["transcribe", "someone/no-such-model", str(clips[0])], capsys)
    assert code == 1 and err.count("\n") == 1 and "someone/no-such-model" in err and "offline" in err


def test_python_dash_m() -> None:
    done = subprocess.run([sys.executable, "-m", "ptasr", "--help"], capture_output=True, text=True, timeout=HANG_S)
    assert done.returncode == 0
    assert all(command in done.stdout for command in ("transcribe", "evaluate", "export"))
