"""``ptasr export``: a real (tiny) training run -> an HF folder that transformers loads and transcribes alike."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import jiwer
import lightning as L
import pytest
import soundfile as sf
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from ptasr.cli import main
from ptasr.data.audio import load_audio
from ptasr.data.datamodule import SpeechDataModule
from ptasr.data.settings import BatchSettings, LoadingSettings
from ptasr.data.testing import make_corpus
from ptasr.export.hf_folder import preprocessor_config
from ptasr.export.model_card import results_table
from ptasr.model.config import Wav2Vec2Config
from ptasr.recognition.recognizer import Chunking, Recognizer
from ptasr.run_log import read_scalars, training_results
from ptasr.train import WERMetrics
from ptasr.train.module import Wav2Vec2CTCModule

transformers = pytest.importorskip("transformers")

# XLS-R layout (layer-norm conv stack, pre-norm transformer) at a size that trains in a second.
TINY = dict(conv_dim=[32] * 7, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, mask_time_prob=0.0, layerdrop=0.0)


@dataclass
class Run:
    checkpoint: Path
    log_dir: Path
    clips: list[Path]
    final_wer: float


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Four optimiser steps with two evaluations, then a CTC head scaled up and biased against the blank.

    The scaled head gives wide margins between the best and second-best token of every frame, so float
    differences between ptasr and transformers cannot flip a decision; transcripts are long and non-empty.
    """
    root = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    corpus = make_corpus(root / "corpus", {"train": 8, "dev": 2, "test": 4})
    data = SpeechDataModule(str(corpus.root), str(corpus.root), batching=BatchSettings(batch_size=4, eval_batch_size=4),
                            loading=LoadingSettings(num_workers=0))
    module = Wav2Vec2CTCModule(data.vocab_size, data.pad_token_id, preset="tiny", config_overrides=TINY,
                               lr=1e-3, warmup_steps=1)
    trainer = L.Trainer(max_steps=4, val_check_interval=2, check_val_every_n_epoch=None, num_sanity_val_steps=0,
                        log_every_n_steps=1, logger=TensorBoardLogger(root / "runs", name="tiny"),
                        callbacks=[WERMetrics(), ModelCheckpoint(save_last=True)], accelerator="cpu",
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=data)
    checkpoint_path = Path(trainer.log_dir) / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(checkpoint_path, weights_only=True)
    state = checkpoint["state_dict"]
    state["model.lm_head.weight"] = torch.randn_like(state["model.lm_head.weight"]) * 3.0
    state["model.lm_head.bias"][data.pad_token_id] -= 2.0
    torch.save(checkpoint, checkpoint_path)
    clips = sorted((corpus.root / "clips").glob("*.mp3"))
    return Run(checkpoint_path, Path(trainer.log_dir), clips, float(trainer.callback_metrics["val/wer"]))


@pytest.fixture(scope="module")
def exported(run: Run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "wav2vec2-tiny-pt"
    assert main(["export", str(run.checkpoint), str(out), "--language", "pt"]) == 0
    return out


def test_folder_has_the_hf_files(exported: Path) -> None:
    for name in ("config.json", "model.safetensors", "vocab.json", "tokenizer_config.json",
                 "special_tokens_map.json", "preprocessor_config.json", "normalizer.json", "README.md"):
        assert (exported / name).is_file(), name
    vocab = json.loads((exported / "vocab.json").read_text(encoding="utf-8"))
    config = json.loads((exported / "config.json").read_text())
    assert config["vocab_size"] == len(vocab) and config["pad_token_id"] == vocab["[PAD]"] == len(vocab) - 1


def test_transformers_loads_the_same_model(run: Run, exported: Path) -> None:
    hf_model = transformers.Wav2Vec2ForCTC.from_pretrained(exported).eval()
    ours = Recognizer.load(run.checkpoint, dtype=torch.float32).model
    waveforms = torch.stack([load_audio(run.clips[0])[:16000], load_audio(run.clips[1])[:16000]])
    with torch.no_grad():
        expected = hf_model(waveforms).logits
        logits, _ = ours(waveforms, torch.tensor([16000, 16000]))
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_processor_matches_the_vocabulary(run: Run, exported: Path) -> None:
    processor = transformers.Wav2Vec2Processor.from_pretrained(exported)
    recognizer = Recognizer.load(run.checkpoint)
    vocab = recognizer.vocab
    assert isinstance(processor.tokenizer, transformers.Wav2Vec2CTCTokenizer)
    assert len(processor.tokenizer) == len(vocab)  # no <s>/</s> past the CTC head
    assert processor.tokenizer.pad_token_id == vocab.pad_id and processor.tokenizer.unk_token_id == vocab.unk_id
    text = "olá mundo"
    assert processor.tokenizer(text).input_ids == vocab.encode(text)
    extractor = processor.feature_extractor
    assert (extractor.sampling_rate, extractor.feature_size, extractor.do_normalize) == (16000, 1, True)
    assert extractor.return_attention_mask  # the tiny preset has a layer-norm conv stack


def test_pipeline_gives_the_transcripts_of_ptasr_transcribe(run: Run, exported: Path, tmp_path: Path) -> None:
    asr = transformers.pipeline("automatic-speech-recognition", model=str(exported), device="cpu")
    clip = run.clips[0]
    out = tmp_path / "out.txt"
    assert main(["transcribe", str(run.checkpoint), str(clip), "--device", "cpu", "--dtype", "float32",
                 "-o", str(out)]) == 0
    ptasr_text = out.read_text(encoding="utf-8").strip()
    # transformers reads audio through FFmpeg, which this machine lacks: give it the decoded 16 kHz samples.
    expected = asr({"raw": load_audio(clip).numpy(), "sampling_rate": 16000})["text"]
    assert ptasr_text and ptasr_text == " ".join(expected.split())


def test_chunked_long_audio_matches_the_pipeline(run: Run, exported: Path) -> None:
    # 8 clips back to back (~15 s), cut into 3 s chunks with 0.5 s of context each side.
    recording = torch.cat([load_audio(clip) for clip in run.clips[:8]])
    asr = transformers.pipeline("automatic-speech-recognition", model=str(exported), device="cpu")
    expected = asr({"raw": recording.numpy(), "sampling_rate": 16000}, chunk_length_s=3.0, stride_length_s=0.5)
    for source in (run.checkpoint, exported):
        recognizer = Recognizer.load(source, dtype=torch.float32)
        ours = recognizer.transcribe([recording], chunking=Chunking(3.0, 0.5), batch_size=4)[0]
        assert ours.text == " ".join(expected["text"].split())
    whole = recognizer.transcribe([recording], chunking=Chunking(None))[0].text
    # Chunking really happened (chunk edges see less context), yet the text is mostly the same.
    assert whole != ours.text and jiwer.cer(whole, ours.text) < 0.2


def test_model_card_reports_the_run(run: Run, exported: Path) -> None:
    card = (exported / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\nlanguage:\n- pt\n")
    assert "| Training Loss | Epoch | Step | Validation Loss | Wer |" in card
    rows = training_results(read_scalars(run.log_dir))
    assert [row.step for row in rows] == [2, 4]  # max_steps=4, val_check_interval=2: after updates 2 and 4
    assert rows[-1].wer == pytest.approx(run.final_wer)
    assert results_table(rows) in card
    assert "- learning_rate: 0.001" in card and "- train_batch_size: 4" in card


def test_results_table_from_known_events(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    for step, loss in [(0, 9.0), (10, 5.0), (20, 4.0)]:
        writer.add_scalar("train/loss", loss, step)
    for step, (val_loss, wer) in {5: (7.5, 0.9), 20: (3.5, 0.4), 30: (3.0, 0.35)}.items():
        writer.add_scalar("val/loss", val_loss, step)
        writer.add_scalar("val/wer", wer, step)
        writer.add_scalar("epoch", step // 10, step)
    writer.close()
    rows = training_results(read_scalars(tmp_path))
    assert [(r.step, r.training_loss, r.validation_loss, r.epoch) for r in rows] == [
        (6, 9.0, 7.5, 0.0), (21, 4.0, 3.5, 2.0), (31, 4.0, 3.0, 3.0)]  # updates done: TensorBoard step + 1
    assert results_table(rows).splitlines()[2] == "| 9.0000 | 0 | 6 | 7.5000 | 0.9000 | No log |"


def _write_events(folder: Path, per_source: dict[str, dict[int, tuple[float, float]]]) -> Path:
    """Two evaluations (after updates 2 and 4) of a run, with ``per_source`` {name: {step: (wer, cer)}} beside
    the pooled rates; every value a binary fraction, which float32 and ``:.4f`` keep exactly."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder))
    for step, (loss, val_loss, wer, cer) in {1: (4.0, 3.0, 0.75, 0.5), 3: (2.0, 1.5, 0.5, 0.25)}.items():
        for tag, value in {"train/loss": loss, "val/loss": val_loss, "val/wer": wer, "val/cer": cer,
                           "epoch": 0.0}.items():
            writer.add_scalar(tag, value, step)
    for name, rates in per_source.items():
        for step, (wer, cer) in rates.items():
            writer.add_scalar(f"val/{name}/wer", wer, step)
            writer.add_scalar(f"val/{name}/cer", cer, step)
            writer.add_scalar(f"val/{name}/wer_lm", 0.125, step)  # LMValidation's: not a source of its own
    writer.close()
    return folder


def _front_matter_and_body(card: str) -> tuple[dict, str]:
    import yaml

    _, front, body = card.split("---\n", 2)
    return yaml.safe_load(front), body


def test_card_lists_each_validation_source(run: Run, tmp_path: Path) -> None:
    # "talk" was not validated at the first evaluation (a source added on resume): "No log" there
    per_source = {"talk": {3: (0.75, 0.375)}, "read": {1: (0.625, 0.5), 3: (0.25, 0.125)}}
    cards = {}
    for kind, sources in (("pooled", {}), ("sources", per_source)):
        logs = _write_events(tmp_path / f"{kind}-logs", sources)
        assert main(["export", str(run.checkpoint), str(tmp_path / kind), "--logs", str(logs), "--name", "m"]) == 0
        cards[kind] = (tmp_path / kind / "README.md").read_text(encoding="utf-8")
    table = ("Each validation source scored alone (Wer and Cer above pool them, weighted by reference words and "
             "characters):\n\n"
             "| Step | read Wer | read Cer | talk Wer | talk Cer |\n"
             "|:----:|:---:|:---:|:---:|:---:|\n"
             "| 2 | 0.6250 | 0.5000 | No log | No log |\n"
             "| 4 | 0.2500 | 0.1250 | 0.7500 | 0.3750 |\n")
    summary = "- Wer: 0.5000\n- Wer on read: 0.2500\n- Wer on talk: 0.7500\n"
    meta, body = _front_matter_and_body(cards["sources"])
    assert table in body and summary in body
    results = meta["model-index"][0]["results"]
    assert [(r["dataset"]["name"], [m["value"] for m in r["metrics"]]) for r in results] == [
        ("validation sources read, talk", [0.5, 0.25]), ("read", [0.25, 0.125]), ("talk", [0.75, 0.375])]
    # without per-source scalars the card is the one-source card: the same, less what names the sources
    pooled_meta, pooled_body = _front_matter_and_body(cards["pooled"])
    assert "validation source" not in pooled_body and len(pooled_meta["model-index"][0]["results"]) == 1
    assert pooled_meta["model-index"][0]["results"][0]["dataset"] == {"name": "corpus", "type": "corpus"}
    meta["model-index"][0]["results"] = pooled_meta["model-index"][0]["results"]
    assert meta == pooled_meta
    assert body.replace("\n\n" + table, "\n").replace(summary, "- Wer: 0.5000\n") == pooled_body
    # a re-export of the folder (no event files) keeps the per-source rows with the rest of the training sections
    assert main(["export", str(tmp_path / "sources"), str(tmp_path / "again"), "--name", "m"]) == 0
    assert (tmp_path / "again" / "README.md").read_text(encoding="utf-8") == cards["sources"]


def test_group_norm_models_get_no_attention_mask() -> None:
    assert preprocessor_config(Wav2Vec2Config.preset("wav2vec2-base"))["return_attention_mask"] is False
    assert preprocessor_config(Wav2Vec2Config.preset("xls-r-300m"))["return_attention_mask"] is True


def test_push_offline_fails_cleanly_after_a_complete_export(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "model"
    assert main(["export", str(run.checkpoint), str(out), "--push-to-hub", "someone/model"]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "HF_HUB_OFFLINE" in error and "Traceback" not in error
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()


def test_export_of_a_missing_checkpoint_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(tmp_path / "nope.ckpt"), str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "nope.ckpt" in error
    assert not (tmp_path / "out").exists()


def test_waveform_input_equals_file_input(run: Run) -> None:
    recognizer = Recognizer.load(run.checkpoint, dtype=torch.float32)
    samples, rate = sf.read(run.clips[2], dtype="float32", always_2d=True)  # (S, C) at 48 kHz
    from_file, from_array = recognizer.transcribe([run.clips[2], (samples.T, rate)])
    assert from_file.text == from_array.text
