"""``ptasr lm build`` then ``ptasr evaluate --lm --tune`` on a small random model and a generated corpus."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from ptasr.cli import main
from ptasr.data.testing import make_corpus
from ptasr.data.text import TextNormalizer, Vocabulary
from ptasr.model.config import Wav2Vec2Config
from ptasr.model.wav2vec2 import Wav2Vec2CTC

pytest.importorskip("flashlight.lib.text.decoder", reason="flashlight-text (pip install 'ptasr[lm]') is not installed")

TINY = dict(conv_dim=(32,) * 7, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"), {"train": 6, "dev": 3, "test": 4}).root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Path:
    """A random model in train.py's checkpoint layout whose head is biased against the blank (it emits letters)."""
    from ptasr.data.commonvoice import read_tsv

    vocab = Vocabulary.build(TextNormalizer()(s) for split in ("train", "dev", "test")
                             for s in read_tsv(corpus / f"{split}.tsv")["sentence"])
    torch.manual_seed(0)
    config = Wav2Vec2Config.preset("tiny", vocab_size=len(vocab), pad_token_id=vocab.pad_id, **TINY)
    model = Wav2Vec2CTC(config)
    with torch.no_grad():
        model.lm_head.weight.normal_(std=3.0)
        model.lm_head.bias[vocab.pad_id] -= 2.0
    path = tmp_path_factory.mktemp("ckpt") / "last.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "ptasr": {"model_config": dataclasses.asdict(config), "vocab": vocab.to_dict(),
                          "normalizer": TextNormalizer().to_dict()}, "global_step": 0, "epoch": 0}, path)
    return path


def test_build_tune_then_evaluate_with_the_tuned_pair(checkpoint: Path, corpus: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    lm = tmp_path / "lm" / "lm.arpa"
    assert main(["lm", "build", str(corpus / "train.tsv"), str(corpus / "dev.tsv"), "-o", str(lm), "--order", "3",
                 "--model", str(checkpoint), "--exclude", str(corpus / "test.tsv")]) == 0
    assert "dropped 0 of 9 sentences" in capsys.readouterr().out
    code = main(["evaluate", str(checkpoint), "--data", str(corpus), "--split", "dev", "--lm", str(lm), "--tune",
                 "--lm-weights", "0,2", "--word-scores=-1,1", "--output-dir", str(tmp_path / "tune")])
    out = capsys.readouterr().out
    assert code == 0
    assert out.count("\n| 0 | ") == 2 and out.count("\n| 2 | ") == 2  # the table: 2 x 2 pairs
    tuned = json.loads((tmp_path / "lm" / "lm.arpa.json").read_text(encoding="utf-8"))
    assert tuned["split"] == "dev" and tuned["lm_weight"] in (0, 2) and tuned["word_score"] in (-1, 1)
    assert f"best: LM weight {tuned['lm_weight']:g}, word score {tuned['word_score']:g}" in out
    results = json.loads((tmp_path / "tune" / f"{corpus.name}_dev_eval_results.json").read_text(encoding="utf-8"))
    assert len(results["tuning"]) == 4 and results["wer"] == min(t["wer"] for t in results["tuning"])

    # A later evaluate with this LM and no weight flags decodes with the tuned pair.
    assert main(["evaluate", str(checkpoint), "--data", str(corpus), "--split", "dev", "--lm", str(lm),
                 "--output-dir", str(tmp_path / "again")]) == 0
    assert "LM weights tuned on" in capsys.readouterr().err
    again = json.loads((tmp_path / "again" / f"{corpus.name}_dev_eval_results.json").read_text(encoding="utf-8"))
    assert again["wer"] == pytest.approx(results["wer"], abs=1e-6)


def test_tune_without_an_lm_is_a_one_line_error(checkpoint: Path, corpus: Path, capsys) -> None:
    assert main(["evaluate", str(checkpoint), "--data", str(corpus), "--tune"]) == 1
    assert "--tune searches the weights of an n-gram LM: give one with --lm" in capsys.readouterr().err
