"""ONNX export: onnxruntime on the CPU computes the PyTorch model's logits, and ``ptasr`` exports and runs it.

Random weights on both sides (no hub, no network); logits compared at every valid frame of padded batches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from ptasr import Wav2Vec2Config, Wav2Vec2CTC
from ptasr.cli import main
from ptasr.data.text import TextNormalizer, Vocabulary
from ptasr.export.hf_folder import write_hf_folder
from ptasr.recognition.recognizer import Recognizer

pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")
from ptasr.export.onnx import ONNX_FILE, OnnxCTC, export_onnx, min_samples  # noqa: E402 (after the skips)

FIXTURES = Path(__file__).parent / "fixtures" / "hf_configs"
ATOL = 1e-4


def batches(config: Wav2Vec2Config) -> list[list[int]]:
    """Padded batches of different lengths, a batch of one, one without padding, one under the traced minimum."""
    return [[16_000, 9_000, 4_000], [8_000], [12_000, 12_000], [min_samples(config) - 100, 500]]


def assert_onnx_matches(model: Wav2Vec2CTC, onnx_model: OnnxCTC) -> None:
    generator = torch.Generator().manual_seed(1)
    for lengths in batches(model.config):
        waveforms = torch.zeros(len(lengths), max(lengths))
        for row, length in enumerate(lengths):
            waveforms[row, :length] = torch.randn(length, generator=generator)
        lengths_t = torch.tensor(lengths)
        with torch.no_grad():
            expected, expected_frames = model(waveforms, lengths_t)
        logits, frame_lengths = onnx_model(waveforms, lengths_t)
        assert logits.shape == expected.shape and logits.dtype == torch.float32, lengths
        assert frame_lengths.tolist() == expected_frames.tolist(), lengths
        for row, frames in enumerate(frame_lengths.tolist()):
            torch.testing.assert_close(logits[row, :frames], expected[row, :frames], atol=ATOL, rtol=0)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Recognizer]:
    """A tiny model's HF folder, re-exported by ``ptasr export --onnx``."""
    root = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    vocab = Vocabulary.build(["abc def"])
    config = Wav2Vec2Config.preset("tiny", vocab_size=len(vocab), pad_token_id=vocab.pad_id)
    model = Wav2Vec2CTC(config).eval()
    with torch.no_grad():  # wide margins between tokens and fewer blanks: long transcripts no rounding can flip
        model.lm_head.weight.mul_(20.0)
        model.lm_head.bias[vocab.pad_id] -= 1.0
    write_hf_folder(Recognizer(model, vocab, TextNormalizer()), root / "hf")
    assert main(["export", str(root / "hf"), str(root / "out"), "--onnx"]) == 0
    return root / "out", Recognizer.load(root / "out", device="cpu", dtype="float32")


def test_export_writes_model_onnx_beside_the_hf_files(exported: tuple[Path, Recognizer]) -> None:
    import onnx

    folder, _ = exported
    assert {"config.json", "model.safetensors", "vocab.json", ONNX_FILE} <= {p.name for p in folder.iterdir()}
    graph = onnx.load(str(folder / ONNX_FILE)).graph
    assert [i.name for i in graph.input] == ["waveforms", "lengths"]
    assert [o.name for o in graph.output] == ["logits", "frame_lengths"]
    waveforms = graph.input[0].type.tensor_type
    assert waveforms.elem_type == onnx.TensorProto.FLOAT
    assert all(d.dim_param and not d.dim_value for d in waveforms.shape.dim)  # batch and time are dynamic


def test_onnx_logits_match_pytorch_tiny(exported: tuple[Path, Recognizer]) -> None:
    folder, recognizer = exported
    assert_onnx_matches(recognizer.model, OnnxCTC(folder / ONNX_FILE, recognizer.model.config))


def test_onnx_logits_match_pytorch_xls_r_300m(tmp_path: Path) -> None:
    # Its export and check take 3 to 6 minutes (7 GB of memory) on two busy shared cores, more beside a competing
    # process: no time bound (it would fail under load and prove nothing about the export).
    torch.manual_seed(0)
    config = Wav2Vec2Config.from_json(FIXTURES / "wav2vec2-xls-r-300m.json").replace(vocab_size=40, pad_token_id=39)
    model = Wav2Vec2CTC(config).eval()
    with torch.no_grad():  # random, non-trivial norms and biases, so a swapped or skipped one shows
        for name, parameter in model.named_parameters():
            if "layer_norm" in name or name.endswith("bias"):
                parameter.add_(0.1 * torch.randn_like(parameter))
    path = export_onnx(model, tmp_path / ONNX_FILE)
    assert_onnx_matches(model, OnnxCTC(path, config))


def test_transcribe_with_the_onnx_backend_gives_the_torch_transcripts(
    exported: tuple[Path, Recognizer], tmp_path: Path
) -> None:
    folder, _ = exported
    generator = np.random.default_rng(0)
    clips = []
    for index, seconds in enumerate((1.5, 0.7, 2.2)):
        clips.append(tmp_path / f"clip{index}.wav")
        sf.write(clips[-1], 0.1 * generator.standard_normal(int(seconds * 16000)).astype("float32"), 16000)
    outputs = {}
    for backend in ("torch", "onnx"):
        outputs[backend] = tmp_path / f"{backend}.jsonl"
        args = ["transcribe", str(folder), *map(str, clips), "--backend", backend, "--format", "jsonl",
                "--dtype", "float32", "-o", str(outputs[backend])]
        assert main(args) == 0
    torch_lines = outputs["torch"].read_text(encoding="utf-8").splitlines()
    assert len(torch_lines) == 3 and all('"text": ""' not in line for line in torch_lines)
    assert outputs["onnx"].read_text(encoding="utf-8").splitlines() == torch_lines


def test_onnx_backend_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clip = tmp_path / "clip.wav"
    sf.write(clip, np.zeros(16000, dtype="float32"), 16000)
    assert main(["transcribe", str(tmp_path), str(clip), "--backend", "onnx"]) == 1
    assert f"no {ONNX_FILE} in {tmp_path}" in capsys.readouterr().err
    assert main(["transcribe", str(tmp_path), str(clip), "--backend", "onnx", "--device", "cuda"]) == 1
    assert "--backend onnx runs on the CPU in float32" in capsys.readouterr().err


def test_evaluate_with_the_onnx_backend_gives_the_torch_results(
    exported: tuple[Path, Recognizer], tmp_path: Path
) -> None:
    folder, _ = exported
    generator = np.random.default_rng(1)
    rows = ["path,text"]
    for index, seconds in enumerate((1.2, 2.0)):
        sf.write(tmp_path / f"clip{index}.wav", 0.1 * generator.standard_normal(int(seconds * 16000)).astype("float32"),
                 16000)
        rows.append(f"clip{index}.wav,abc def")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    predictions = {}
    for backend in ("torch", "onnx"):
        out = tmp_path / backend
        assert main(["evaluate", str(folder), "--data", str(tmp_path / "manifest.csv"), "--backend", backend,
                     "--dtype", "float32", "--output-dir", str(out)]) == 0
        [tsv] = out.glob("*_predictions.tsv")
        predictions[backend] = tsv.read_text(encoding="utf-8")
    assert len(predictions["torch"].splitlines()) == 3 and predictions["onnx"] == predictions["torch"]
