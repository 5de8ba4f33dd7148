"""``ptasr lm build`` then ``ptasr evaluate --lm --tune`` on a small random model and a generated corpus."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ptasr.cli import main
from ptasr.data.testing import make_corpus
from ptasr.data.text import TextNormalizer, Vocabulary
from ptasr.export.model_card import TRANSFORMERS_WITH_LM, TRANSFORMERS_WITHOUT_LM
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
    from ptasr.data.commonvoice import read_tsv

    vocab = Vocabulary.build(TextNormalizer()(s) for split in ("train", "dev", "test")
                             for s in read_tsv(corpus / f"{split}.tsv")["sentence"])
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "last.ckpt", vocab)


def _checkpoint(path: Path, vocab: Vocabulary, blank_shift: float = -2.0) -> Path:
    """A random model in train.py's checkpoint layout. Its head's weights have standard deviation 1, so the logits
    are flat enough that the LM weight and word score change what beam search picks; ``blank_shift`` is added to
    the blank's bias: at -2 the model emits letters, at +30 nothing but blanks."""
    torch.manual_seed(0)
    config = Wav2Vec2Config.preset("tiny", vocab_size=len(vocab), pad_token_id=vocab.pad_id, **TINY)
    model = Wav2Vec2CTC(config)
    with torch.no_grad():
        model.lm_head.weight.normal_(std=1.0)
        model.lm_head.bias[vocab.pad_id] += blank_shift
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
    # Pairs this far apart decode differently whatever the CPU's rounding (near pairs on flat logits may not).
    code = main(["evaluate", str(checkpoint), "--data", str(corpus), "--split", "dev", "--lm", str(lm), "--tune",
                 "--lm-weights", "0,4", "--word-scores=-5,5", "--output-dir", str(tmp_path / "tune")])
    out = capsys.readouterr().out
    assert code == 0
    assert out.count("\n| 0 | ") == 2 and out.count("\n| 4 | ") == 2  # the table: 2 x 2 pairs
    tuned = json.loads((tmp_path / "lm" / "lm.arpa.json").read_text(encoding="utf-8"))
    assert tuned["split"] == "dev" and tuned["lm_weight"] in (0, 4) and tuned["word_score"] in (-5, 5)
    assert f"best: LM weight {tuned['lm_weight']:g}, word score {tuned['word_score']:g}" in out
    results = json.loads((tmp_path / "tune" / f"{corpus.name}_dev_eval_results.json").read_text(encoding="utf-8"))
    assert len(results["tuning"]) == 4 and results["wer"] == min(t["wer"] for t in results["tuning"])
    # the best pair's predicted words carry their confidences, as a plain evaluate's do
    assert results["confidence"]["utterances_without"] == 0
    predicted = [row.split("\t")[4] for row in _predictions(tmp_path / "tune")]
    assert results["confidence"]["words"] == sum(len(prediction.split()) for prediction in predicted)

    # A later evaluate with this LM and no weight flags decodes with the tuned pair.
    assert main(["evaluate", str(checkpoint), "--data", str(corpus), "--split", "dev", "--lm", str(lm),
                 "--output-dir", str(tmp_path / "again")]) == 0
    assert "LM weights tuned on" in capsys.readouterr().err
    again = json.loads((tmp_path / "again" / f"{corpus.name}_dev_eval_results.json").read_text(encoding="utf-8"))
    assert again["wer"] == pytest.approx(results["wer"], abs=1e-6)
    assert again["lm"] == {"path": str(lm), "lm_weight": tuned["lm_weight"], "word_score": tuned["word_score"]}


def test_tune_refuses_a_split_that_cannot_choose_and_saves_nothing(corpus: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # A model that emits only blanks decodes alike (to nothing) under every pair, as a model that transcribes a
    # split perfectly does: the tie-break's pair (LM weight 0: no LM) must not be saved, or later decoding would
    # silently use it.
    from ptasr.data.commonvoice import read_tsv

    vocab = Vocabulary.build(TextNormalizer()(s) for split in ("train", "dev", "test")
                             for s in read_tsv(corpus / f"{split}.tsv")["sentence"])
    checkpoint = _checkpoint(tmp_path / "silent.ckpt", vocab, blank_shift=30.0)
    lm = tmp_path / "lm.arpa"
    assert main(["lm", "build", str(corpus / "train.tsv"), "-o", str(lm), "--order", "2"]) == 0
    code = main(["evaluate", str(checkpoint), "--data", str(corpus), "--split", "dev", "--lm", str(lm), "--tune",
                 "--lm-weights", "0,2", "--word-scores=-1,1", "--output-dir", str(tmp_path / "tune")])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "this split cannot choose them" in err[0] and "nothing saved" in err[0]
    assert not (tmp_path / "lm.arpa.json").exists()


def test_tune_without_an_lm_is_a_one_line_error(checkpoint: Path, corpus: Path, capsys) -> None:
    assert main(["evaluate", str(checkpoint), "--data", str(corpus), "--tune"]) == 1
    assert "--tune searches the weights of an n-gram LM: give one with --lm" in capsys.readouterr().err


# --- export --lm: the folder Wav2Vec2ProcessorWithLM loads ------------------------------------------------------

BUNDLED = Path(__file__).parents[1] / "ptasr" / "assets" / "cv-tiny-pt"


def noisy_emissions(sentence: str, vocab: Vocabulary, rng: np.random.Generator) -> torch.Tensor:
    """(T, V) log-probabilities that spell ``sentence``, one letter then one blank frame each; a third of the
    letters lose narrowly (0.45 against 0.5) to a random other letter, so greedy decoding misspells most words."""
    letters = [t for t in vocab.tokens if t not in (vocab.pad_token, vocab.unk_token, vocab.word_delimiter)]
    rows = []
    for char in sentence.replace(" ", vocab.word_delimiter):
        probs = np.full(len(vocab), 1e-3)
        if char != vocab.word_delimiter and rng.random() < 1 / 3:
            probs[vocab.tokens.index(rng.choice([c for c in letters if c != char]))] = 0.5
            probs[vocab.tokens.index(char)] = 0.45
        else:
            probs[vocab.tokens.index(char)] = 0.9
        blank = np.full(len(vocab), 1e-3)
        blank[vocab.pad_id] = 0.9
        rows += [probs / probs.sum(), blank / blank.sum()]
    return torch.from_numpy(np.log(np.stack(rows))).float()


def test_export_with_lm_loads_in_transformers_and_decodes_like_ptasr(tmp_path: Path, capsys) -> None:
    from ptasr.data.commonvoice import read_tsv
    from ptasr.decoding.greedy import greedy_decode
    from ptasr.decoding.lm import BeamSearchDecoder, Trial, save_weights
    from ptasr.evaluation.scoring import error_rates, score_utterance

    # A model whose vocabulary is the bundled corpus' characters (random weights: only its files matter here).
    normalizer = TextNormalizer()
    sentences = {split: [normalizer(s) for s in read_tsv(BUNDLED / f"{split}.tsv")["sentence"]]
                 for split in ("train", "dev", "test")}
    vocab = Vocabulary.build(s for texts in sentences.values() for s in texts)
    checkpoint = _checkpoint(tmp_path / "last.ckpt", vocab)
    lm = tmp_path / "lm" / "lm.arpa"
    assert main(["lm", "build", str(BUNDLED / "train.tsv"), str(BUNDLED / "dev.tsv"), "-o", str(lm),
                 "--model", str(checkpoint), "--exclude", str(BUNDLED / "test.tsv")]) == 0
    save_weights(lm, Trial(2.0, 0.5, 0.0, 0.0, []), split="dev")
    assert main(["export", str(checkpoint), str(tmp_path / "export"), "--lm", str(lm)]) == 0
    capsys.readouterr()

    export = tmp_path / "export"
    assert sorted(p.name for p in (export / "language_model").iterdir()) == ["attrs.json", "lm.arpa", "unigrams.txt"]
    attrs = json.loads((export / "language_model" / "attrs.json").read_text(encoding="utf-8"))
    assert attrs["alpha"] == pytest.approx(2.0 / math.log(10)) and attrs["beta"] == 0.5
    labels = json.loads((export / "alphabet.json").read_text(encoding="utf-8"))["labels"]
    assert len(labels) == len(vocab) and labels[vocab.pad_id] == "" and labels[vocab.word_delimiter_id] == " "

    pytest.importorskip("pyctcdecode", reason="pyctcdecode is not installed: pip install --no-deps pyctcdecode "
                                              "pygtrie (its numpy<2 pin would downgrade numpy); pip install kenlm")
    import transformers
    from pyctcdecode import BeamSearchDecoderCTC
    from transformers import AutoProcessor, Wav2Vec2ProcessorWithLM

    rng = np.random.default_rng(0)
    references = sentences["test"]
    emissions = [noisy_emissions(s, vocab, rng) for s in references]
    ours = BeamSearchDecoder(vocab, lm, lm_weight=2.0, word_score=0.5, beam_size=50)
    ptasr_texts = [ours.decode(e[None], torch.tensor([e.shape[0]]))[0] for e in emissions]
    decoder = BeamSearchDecoderCTC.load_from_dir(str(export))  # what the processor loads, and the card's snippet
    pyctcdecode_texts = [decoder.decode(e.numpy(), beam_width=50) for e in emissions]
    greedy_texts = [vocab.decode(greedy_decode(e[None], torch.tensor([e.shape[0]]), vocab.pad_id)[0]) for e in emissions]

    def wer(predictions: list[str]) -> float:
        return error_rates([score_utterance(str(i), r, p) for i, (r, p) in enumerate(zip(references, predictions))])["wer"]

    agreement = sum(a == b for a, b in zip(ptasr_texts, pyctcdecode_texts)) / len(references)
    print(f"greedy WER {wer(greedy_texts):.3f}, ptasr LM {wer(ptasr_texts):.3f}, pyctcdecode LM "
          f"{wer(pyctcdecode_texts):.3f}, identical transcripts {agreement:.0%}")
    assert wer(greedy_texts) > 0.5  # the noise misspells most words
    assert wer(ptasr_texts) < 0.1 and wer(pyctcdecode_texts) < 0.1  # both LM decoders repair them
    assert agreement >= 0.9  # 100 % when measured; beam pruning differs (pyctcdecode prunes by score, per word)

    if transformers.__version__ in TRANSFORMERS_WITHOUT_LM:  # the card names it; `pytest` without -c meets it
        with pytest.raises(AttributeError, match="_get_arguments_from_pretrained"):
            AutoProcessor.from_pretrained(export)
        return
    processor = AutoProcessor.from_pretrained(export)
    assert isinstance(processor, Wav2Vec2ProcessorWithLM)
    assert [processor.decode(e.numpy(), beam_width=50).text for e in emissions] == pyctcdecode_texts


def test_export_with_lm_card_names_the_transformers_releases_and_its_pyctcdecode_snippet_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import soundfile as sf

    sentences = ["um dois tres", "quatro cinco", "dois tres quatro"]
    vocab = Vocabulary.build(sentences)
    checkpoint = _checkpoint(tmp_path / "last.ckpt", vocab)
    (tmp_path / "text.txt").write_text("\n".join(sentences) + "\n", encoding="utf-8")
    lm = tmp_path / "lm.arpa"
    assert main(["lm", "build", str(tmp_path / "text.txt"), "-o", str(lm), "--order", "2"]) == 0
    assert main(["export", str(checkpoint), str(tmp_path / "my-model"), "--lm", str(lm)]) == 0
    card = (tmp_path / "my-model" / "README.md").read_text(encoding="utf-8")
    section = card.split("### With the n-gram language model\n", 1)[1]
    assert f"up to {TRANSFORMERS_WITH_LM} (tested with it); in 5.25.0 it raises AttributeError" in section
    snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert 'BeamSearchDecoderCTC.load_from_dir("my-model")' in snippet and "ProcessorWithLM" not in snippet
    plain = main(["export", str(checkpoint), str(tmp_path / "plain")])
    assert plain == 0 and "n-gram" not in (tmp_path / "plain" / "README.md").read_text(encoding="utf-8")

    pytest.importorskip("pyctcdecode", reason="pyctcdecode is not installed: pip install --no-deps pyctcdecode")
    monkeypatch.chdir(tmp_path)
    sf.write("audio.flac", np.random.default_rng(0).normal(0, 0.1, 16_000).astype(np.float32), 16_000)
    capsys.readouterr()
    exec(compile(snippet, "model card snippet", "exec"), {})  # noqa: S102 -- the card's own code, as a reader runs it
    assert capsys.readouterr().out.count("\n") == 1  # the transcript (of noise, by random weights)


def test_tune_refuses_report_and_the_results_carry_duplicates(checkpoint: Path, corpus: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    lm = tmp_path / "lm.arpa"
    assert main(["lm", "build", str(corpus / "train.tsv"), "-o", str(lm), "--order", "2"]) == 0
    capsys.readouterr()
    base = ["evaluate", str(checkpoint), "--data", str(corpus), "--split", "dev", "--lm", str(lm), "--tune",
            "--lm-weights", "0,4", "--word-scores=-5,5"]
    assert main([*base, "--report", str(tmp_path / "report"), "--output-dir", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--report is not written by --tune" in err[0] and not (tmp_path / "a").exists()
    assert main([*base, "--output-dir", str(tmp_path / "b")]) == 0
    results = json.loads((tmp_path / "b" / f"{corpus.name}_dev_eval_results.json").read_text(encoding="utf-8"))
    assert results["duplicates"] == 0 and len(results["tuning"]) == 4


def _predictions(folder: Path) -> list[str]:
    """The rows of the one predictions file an evaluate wrote into ``folder``, without its header."""
    (path,) = folder.glob("*_predictions.tsv")
    return path.read_text(encoding="utf-8").splitlines()[1:]
