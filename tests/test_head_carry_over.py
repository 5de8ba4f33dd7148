"""A new language's CTC head: a pretrained model's head is kept only for the very same symbols; otherwise it is
rebuilt for the data's vocabulary, rows of symbols in both carried over (the blank to the blank), the rest new.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
import torch

from ptasr.data.text import Vocabulary
from ptasr.model.config import Wav2Vec2Config
from ptasr.model.wav2vec2 import Wav2Vec2CTC

SMALL = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, conv_dim=(8,) * 7,
             num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2)
PORTUGUESE = Vocabulary.build(["ação é"])  # | a o ã ç é [UNK] [PAD]
SPANISH = Vocabulary.build(["años ñu"])  # | a o s u ñ [UNK] [PAD]: the same size, other symbols


def _trained(vocab: Vocabulary) -> Wav2Vec2CTC:
    torch.manual_seed(0)
    model = Wav2Vec2CTC(Wav2Vec2Config.preset("tiny", vocab_size=len(vocab), pad_token_id=vocab.pad_id, **SMALL))
    with torch.no_grad():  # a head unlike any fresh initialisation
        model.lm_head.weight.copy_(torch.arange(model.lm_head.weight.numel()).view_as(model.lm_head.weight) + 100.0)
        model.lm_head.bias.copy_(torch.arange(len(vocab)) + 100.0)
    return model


def _folder(tmp_path: Path, vocab: Vocabulary | None) -> Path:
    folder = tmp_path / "model"
    _trained(PORTUGUESE).save_pretrained(folder)
    if vocab is not None:
        vocab.save(folder)
    return folder


def _checkpoint(tmp_path: Path) -> Path:
    """A train.py checkpoint: the module's weights under "model.", config and vocabulary under "ptasr"."""
    model = _trained(PORTUGUESE)
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "ptasr": {"model_config": dataclasses.asdict(model.config), "vocab": PORTUGUESE.to_dict()}}, path)
    return path


def _load(source: Path, vocab: Vocabulary) -> Wav2Vec2CTC:
    return Wav2Vec2CTC.from_pretrained(source, vocab=vocab.tokens, pad_token_id=vocab.pad_id, **SMALL)


def _carried(model: Wav2Vec2CTC, vocab: Vocabulary) -> dict[str, bool]:
    """For each symbol of ``vocab`` (the model's head rows): is its row the Portuguese source's row of it?"""
    source = _trained(PORTUGUESE).lm_head
    carried = {}
    for row, token in enumerate(vocab.tokens):
        origin = PORTUGUESE.tokens.index(token) if token in PORTUGUESE.tokens else None
        carried[token] = origin is not None and torch.equal(model.lm_head.weight[row], source.weight[origin]) \
            and bool(model.lm_head.bias[row] == source.bias[origin])
    return carried


@pytest.mark.parametrize("source", ["folder", "checkpoint"])
def test_same_size_other_symbols_rebuilds_the_head_carrying_shared_rows(tmp_path: Path, source: str,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    assert len(SPANISH) == len(PORTUGUESE) and SPANISH.tokens != PORTUGUESE.tokens
    path = _folder(tmp_path, PORTUGUESE) if source == "folder" else _checkpoint(tmp_path)
    with caplog.at_level(logging.INFO, logger="ptasr.model.convert"):
        model = _load(path, SPANISH)
    carried = _carried(model, SPANISH)
    # "|", "a", "o", "[UNK]" and the blank are in both; "s", "u" and "ñ" are new.
    assert carried == {"|": True, "a": True, "o": True, "s": False, "u": False, "ñ": False, "[UNK]": True,
                       "[PAD]": True}
    [line] = [r.getMessage() for r in caplog.records if "CTC head" in r.getMessage()]
    assert "8-symbol vocabulary: 5 rows carried over" in line and "3 new (s u ñ)" in line


def test_the_same_vocabulary_keeps_the_head(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="ptasr.model.convert"):
        model = _load(_folder(tmp_path, PORTUGUESE), PORTUGUESE)
    assert all(_carried(model, PORTUGUESE).values())
    assert not [r for r in caplog.records if "CTC head" in r.getMessage()]


def test_another_size_carries_the_shared_rows(tmp_path: Path) -> None:
    bigger = Vocabulary.build(["ação é xyz"])
    model = _load(_folder(tmp_path, PORTUGUESE), bigger)
    assert model.lm_head.out_features == len(bigger) == len(PORTUGUESE) + 3
    carried = _carried(model, bigger)
    assert [token for token, kept in carried.items() if not kept] == ["x", "y", "z"]


def test_the_blank_is_carried_to_the_blank_whatever_its_name_and_place(tmp_path: Path) -> None:
    # HF's fairseq-style vocabularies put "<pad>" first.
    other = Vocabulary(["<pad>", "a", "|", "<unk>"], pad_token="<pad>", unk_token="<unk>")
    model = _load(_folder(tmp_path, PORTUGUESE), other)
    source = _trained(PORTUGUESE).lm_head
    assert torch.equal(model.lm_head.weight[other.pad_id], source.weight[PORTUGUESE.pad_id])
    assert torch.equal(model.lm_head.weight[1], source.weight[PORTUGUESE.tokens.index("a")])
    assert not torch.equal(model.lm_head.weight[3], source.weight[PORTUGUESE.unk_id])  # "<unk>" is not "[UNK]"


def test_a_head_of_unknown_symbols_is_replaced_even_at_the_same_size(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="ptasr.model.convert"):
        model = _load(_folder(tmp_path, None), PORTUGUESE)
    assert not any(_carried(model, PORTUGUESE).values())
    assert any("symbols are unknown" in r.getMessage() for r in caplog.records)


def test_without_the_data_vocabulary_a_same_size_head_is_kept_as_before(tmp_path: Path) -> None:
    # Inference (`ptasr transcribe`) loads a folder as it is.
    model = Wav2Vec2CTC.from_pretrained(_folder(tmp_path, None))
    assert all(_carried(model, PORTUGUESE).values())


def test_the_cli_builds_the_head_for_the_data_vocabulary(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from helpers import SMALL_MODEL

    from ptasr.train.cli import cli_main

    # A "fine-tuned" model of the training tests' size whose head outputs Spanish symbols.
    sizes = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                 conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    spanish = Wav2Vec2CTC(Wav2Vec2Config.preset("tiny", vocab_size=len(SPANISH), pad_token_id=SPANISH.pad_id, **sizes))
    spanish.save_pretrained(tmp_path / "es")
    SPANISH.save(tmp_path / "es")
    with caplog.at_level(logging.INFO, logger="ptasr.model.convert"):
        cli = cli_main([f"--model.pretrained={tmp_path / 'es'}", *SMALL_MODEL, "--trainer.logger=false"], run=False)
    data_vocab = cli.datamodule.vocab  # the bundled Portuguese corpus
    assert cli.model.model.lm_head.out_features == len(data_vocab) != len(SPANISH)
    [line] = [r.getMessage() for r in caplog.records if "CTC head rebuilt" in r.getMessage()]
    shared = len(set(data_vocab.tokens) & set(SPANISH.tokens))
    assert f"{len(data_vocab)}-symbol vocabulary: {shared} rows carried over" in line
