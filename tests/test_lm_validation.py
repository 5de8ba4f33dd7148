"""The ``val/wer_lm`` callback in real ``Trainer.validate`` runs, on hand-made emissions where the LM helps, with
one validation source and with several (``val/<name>/wer_lm``)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch

pytest.importorskip("flashlight.lib.text.decoder", reason="flashlight-text (pip install 'ptasr[lm]') is not installed")

from helpers import word_arpa  # noqa: E402

from ptasr.data.text import Vocabulary  # noqa: E402
from ptasr.train.lm_validation import LMValidation  # noqa: E402

VOCAB = Vocabulary.build(["casa mesa caza"])
# The word bigram model: knows "casa" and "mesa" but not "caza".
WORD_BIGRAMS = {"<s> casa": -0.2, "casa mesa": -0.3, "casa </s>": -0.2, "mesa </s>": -0.2}


def spoken(letters: str, doubt: dict[str, dict[str, float]]) -> torch.Tensor:
    """(1, T, V) log-probabilities: each letter (0.9, or the ``doubt`` split) then a blank frame (0.9)."""
    rows = []
    for letter in letters:
        for frame in (doubt.get(letter, {letter: 0.9}), {VOCAB.pad_token: 0.9}):
            probs = torch.full((len(VOCAB),), 1e-4)
            for token, p in frame.items():
                probs[VOCAB.tokens.index(token)] = p
            rows.append(probs / probs.sum())
    return torch.stack(rows).log()[None]


# The acoustic model slightly prefers "z" where "s" is said: greedy reads "caza meza" and "caza".
CAZA_MEZA = spoken("caZa|meZa", {"Z": {"z": 0.55, "s": 0.45}, "|": {"|": 0.9}})
CAZA = spoken("caZa", {"Z": {"z": 0.55, "s": 0.45}})


class Emitter(L.LightningModule):
    """Returns fixed emissions as its validation logits, as ptasr's module returns the model's.

    ``clips``: (emission (1, T, V), reference, source) per batch of one clip; ``sources=False``: the outputs do
    not say the source (one source)."""

    def __init__(self, clips: list[tuple[torch.Tensor, str, int]] | None = None, sources: bool = False) -> None:
        super().__init__()
        self.vocab = VOCAB
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.clips = clips or [(CAZA_MEZA, "casa mesa", 0), (CAZA, "casa", 0)]
        self.sources = sources

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> dict:
        emission, reference, source = self.clips[batch_idx]
        logits = emission[0]  # (T, V) log-probabilities: log-softmax leaves them unchanged
        outputs = {"logits": logits[None], "frame_lengths": torch.tensor([logits.shape[0]]),
                   "references": [reference], "predictions": [""], "ids": [str(batch_idx)]}
        return {**outputs, "sources": [source]} if self.sources else outputs


class Sources(L.LightningDataModule):
    """A data module of ``count`` one-clip validation batches from the sources ``names``."""

    def __init__(self, names: list[str], count: int) -> None:
        super().__init__()
        self.names, self.count = names, count

    def source_names(self, stage: str) -> list[str]:
        return list(self.names)

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(torch.zeros(self.count, 1), batch_size=1)


def validate(callback: LMValidation, times: int, module: Emitter | None = None,
             names: list[str] | None = None) -> list[dict[str, float]]:
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[callback])
    module = module or Emitter()
    if names is None:
        data = {"dataloaders": torch.utils.data.DataLoader(torch.zeros(len(module.clips), 1), batch_size=1)}
    else:
        data = {"datamodule": Sources(names, len(module.clips))}
    return [{k: float(v) for k, v in trainer.validate(module, **data, verbose=False)[0].items()} for _ in range(times)]


@pytest.fixture
def lm(tmp_path: Path) -> Path:
    return word_arpa(tmp_path / "words.arpa", WORD_BIGRAMS)


def test_lm_fixes_what_greedy_gets_wrong_every_k_validations(lm: Path) -> None:
    runs = validate(LMValidation(lm, every_n_validations=2, lm_weight=1.0), times=3)
    assert runs[0] == {"val/wer_lm": 0.0, "val/cer_lm": 0.0}  # "casa mesa", "casa": all right
    assert runs[1] == {}  # the 2nd validation is skipped
    assert runs[2] == runs[0]


def test_zero_weight_gives_the_acoustic_answer_and_the_subset_is_fixed(lm: Path) -> None:
    # Without the LM the beam says "caza meza" (2 of 2 words wrong); only the first utterance is decoded.
    runs = validate(LMValidation(lm, max_utterances=1, lm_weight=0.0), times=2)
    assert runs[0] == pytest.approx({"val/wer_lm": 1.0, "val/cer_lm": 2 / 9}) and runs[1] == runs[0]


def test_a_missing_lm_stops_before_training(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no language model at .*ptasr lm build"):
        validate(LMValidation(tmp_path / "missing.arpa"), times=1)


# --------------------------------------------------------------------------------------------------------
# Several validation sources: val/<name>/wer_lm beside the pooled val/wer_lm
# --------------------------------------------------------------------------------------------------------

# lm_weight=0: the beam gives the acoustic answers "caza meza" and "caza", so a reference says what is wrong
TWO_SOURCES = [(CAZA_MEZA, "casa mesa", 0),  # a: 2 of 2 words, 2 of 9 characters wrong
               (CAZA, "caza", 1),  # b: all right (1 word, 4 characters)
               (CAZA, "casa", 1)]  # b: 1 of 1 word, 1 of 4 characters wrong


def test_each_source_is_scored_alone_and_pooled_by_words(lm: Path) -> None:
    logged = validate(LMValidation(lm, lm_weight=0.0), 1, Emitter(TWO_SOURCES, sources=True), ["a", "b"])[0]
    assert logged == pytest.approx({"val/wer_lm": 3 / 4, "val/cer_lm": 3 / 17, "val/a/wer_lm": 1.0,
                                    "val/a/cer_lm": 2 / 9, "val/b/wer_lm": 1 / 2, "val/b/cer_lm": 1 / 8})
    # the same clips as one source: the pooled names only, the same values
    one = validate(LMValidation(lm, lm_weight=0.0), 1, Emitter(TWO_SOURCES), ["val"])[0]
    assert one == {"val/wer_lm": logged["val/wer_lm"], "val/cer_lm": logged["val/cer_lm"]}


def test_max_utterances_is_a_quota_per_source(lm: Path) -> None:
    # the first clip of each source: a's first, b's first ("caza", right); b's second is not decoded
    runs = validate(LMValidation(lm, max_utterances=1, lm_weight=0.0), 2, Emitter(TWO_SOURCES, sources=True),
                    ["a", "b"])
    assert runs[0] == pytest.approx({"val/wer_lm": 2 / 3, "val/cer_lm": 2 / 13, "val/a/wer_lm": 1.0,
                                     "val/a/cer_lm": 2 / 9, "val/b/wer_lm": 0.0, "val/b/cer_lm": 0.0})
    assert runs[1] == runs[0]  # the same subset every time


def test_a_source_with_no_clip_decoded_logs_nothing_for_it(lm: Path) -> None:
    # the data names a third source "c" of which no batch comes (as when limit_val_batches stops before it)
    with pytest.warns(UserWarning, match="no clip of validation source 'c' was decoded, so val/c/wer_lm is not"):
        logged = validate(LMValidation(lm, lm_weight=0.0), 1, Emitter(TWO_SOURCES, sources=True),
                          ["a", "b", "c"])[0]
    assert not {name for name in logged if name.startswith("val/c/")}  # no 0.0 from no words
    assert logged == validate(LMValidation(lm, lm_weight=0.0), 1, Emitter(TWO_SOURCES, sources=True),
                              ["a", "b"])[0]


def test_two_ranks_sum_every_source_in_one_reduce(lm: Path) -> None:
    # rank 0 validates clips 0 and 1, rank 1 clip 2; the reduce sums what both hold, as DDP's all-reduce does
    ranks = [LMValidation(lm, lm_weight=0.0), LMValidation(lm, lm_weight=0.0)]
    shapes: list[tuple[int, ...]] = []
    packed: list[torch.Tensor] = []

    def reduce(tensor: torch.Tensor, reduce_op: str) -> torch.Tensor:
        assert reduce_op == "sum"
        shapes.append(tuple(tensor.shape))
        packed.append(tensor)
        return sum(packed)

    logged: dict[str, float] = {}
    module = SimpleNamespace(vocab=VOCAB, device=torch.device("cpu"),
                             log=lambda name, value, **kwargs: logged.__setitem__(name, value))
    trainer = SimpleNamespace(sanity_checking=False, world_size=2, strategy=SimpleNamespace(reduce=reduce),
                              datamodule=Sources(["a", "b"], 3))
    emitter = Emitter(TWO_SOURCES, sources=True)
    for rank, batches in zip(ranks, [[0, 1], [2]]):
        rank.on_validation_epoch_start(trainer, module)
        for index in batches:
            rank.on_validation_batch_end(trainer, module, emitter.validation_step(None, index), None, index)
    ranks[0].on_validation_epoch_end(trainer, module)  # rank 0 reduces first: its own counts only
    logged.clear()
    ranks[1].on_validation_epoch_end(trainer, module)  # rank 1's reduce returns both ranks' sum
    assert shapes == [(2, 9), (2, 9)]  # one collective per rank: both sources, words, characters, clips
    assert logged == pytest.approx({"val/wer_lm": 3 / 4, "val/cer_lm": 3 / 17, "val/a/wer_lm": 1.0,
                                    "val/a/cer_lm": 2 / 9, "val/b/wer_lm": 1 / 2, "val/b/cer_lm": 1 / 8})


def test_outputs_that_do_not_say_their_source_are_refused(lm: Path) -> None:
    with pytest.raises(ValueError, match=r"carry no `sources`, but the data names 2 sources \['a', 'b'\]"):
        validate(LMValidation(lm, lm_weight=0.0), 1, Emitter(TWO_SOURCES), ["a", "b"])


def test_a_fit_on_two_manifests_logs_each_source_and_the_card_lists_them(
    lm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from helpers import SMALL_MODEL, SMALL_RUN

    from ptasr.cli import main
    from ptasr.data.testing import make_recordings, write_manifest
    from ptasr.run_log import read_scalars
    from ptasr.train.cli import cli_main

    monkeypatch.setenv("PTASR_CACHE", str(tmp_path / "cache"))
    recordings = make_recordings(tmp_path / "mine", ["a casa é azul", "chove muito hoje", "bom dia a todos",
                                                     "o rio corre para o mar", "as crianças brincam"])
    sources = [{"path": str(write_manifest(tmp_path / "mine" / "read.csv", recordings[:3]))},
               {"path": str(write_manifest(tmp_path / "mine" / "spoken.jsonl", recordings[3:])), "name": "talk"}]
    cli = cli_main(["fit", f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}", *SMALL_MODEL, *SMALL_RUN,
                    "--trainer.max_steps=2", f"--data.val={json.dumps(sources)}",
                    "--trainer.callbacks+=ptasr.train.LMValidation", f"--trainer.callbacks.lm={lm}",
                    "--trainer.callbacks.beam_size=4"])
    run = Path(cli.trainer.log_dir)
    scalars = read_scalars(run)
    lm_tags = {tag for tag in scalars if tag.endswith("_lm")}
    assert lm_tags == {"val/wer_lm", "val/cer_lm", "val/read/wer_lm", "val/read/cer_lm", "val/talk/wer_lm",
                       "val/talk/cer_lm"}
    # whatever the barely trained model says, the pooled rate weighs each source by its reference words: 11 and 9
    (step, pooled), = scalars["val/wer_lm"].items()
    per_source = {name: scalars[f"val/{name}/wer_lm"][step] for name in ("read", "talk")}
    assert pooled == pytest.approx((per_source["read"] * 11 + per_source["talk"] * 9) / 20, abs=1e-6)
    out = tmp_path / "model"
    assert main(["export", str(run / "checkpoints" / "last.ckpt"), str(out)]) == 0
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "| Step | read Wer | read Cer | talk Wer | talk Cer |\n|:----:|" in card
    assert "- Wer on read: " in card and "- Wer on talk: " in card
