"""Several validation sources in one run (two or more in ``data.val``): each clip carries its source through the batch,
``WERMetrics`` scores every source alone (``val/<name>/wer``) beside the pooled ``val/wer``, and each source's
value equals a validation on that source alone. Offline, CPU.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import jiwer
import lightning as L
import pytest
import torch
from helpers import HANG_S, SMALL_MODEL, SMALL_RUN

from ptasr.data.datamodule import SpeechDataModule
from ptasr.data.filters import FilterSettings
from ptasr.data.settings import BatchSettings, LoadingSettings, TextSettings
from ptasr.data.sources import DataSource
from ptasr.data.testing import make_corpus, make_recordings, write_manifest
from ptasr.data.text import TextNormalizer
from ptasr.errors import SettingError
from ptasr.evaluation.scoring import edit_counts
from ptasr.train.callbacks import WERMetrics, _table
from ptasr.train.cli import cli_main

ROOT = Path(__file__).resolve().parents[1]
NO_WORKERS = LoadingSettings(num_workers=0)
SENTENCES = ["o gato dorme no sofá", "a casa é azul", "chove muito hoje", "bom dia a todos", "uma frase curta",
             "o rio corre para o mar", "as crianças brincam", "o pão está quente"]
# every clip its own batch: a clip's transcript is then computed alike whichever clips validate beside it
SCORED_ALONE = ["--data.batching.eval_batch_size=1", "--trainer.limit_val_batches=1.0", "--trainer.limit_test_batches=1.0",
                "--trainer.precision=32-true", "--model.lr=1e-5"]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTASR_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def manifests(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``read.csv`` (5 clips) and ``spoken.jsonl`` (3 clips), sentences unseen in training."""
    folder = tmp_path_factory.mktemp("mine")
    recordings = make_recordings(folder, SENTENCES)
    return {"read": write_manifest(folder / "read.csv", recordings[:5]),
            "spoken": write_manifest(folder / "spoken.jsonl", recordings[5:])}


def _sources(*entries: dict[str, str]) -> str:
    return "--data.val=" + json.dumps(list(entries))


# --------------------------------------------------------------------------------------------------------
# Settings: names, refusals
# --------------------------------------------------------------------------------------------------------


def test_source_names_default_to_the_file_or_folder_and_split() -> None:
    dm = SpeechDataModule(val=[DataSource("a/dev set.csv"), DataSource("cv/pt", splits=["dev"]),
                               DataSource("cv-pt.tar.gz"), DataSource("b/x.tsv", name="mine")])
    assert dm.source_names("val") == ["dev_set", "pt_dev", "cv-pt_test", "mine"]
    # data.test left to the demo corpus: your own validation data also tests, each release at its test split
    assert dm.source_names("test") == ["dev_set", "pt_test", "cv-pt_test", "mine"]
    assert SpeechDataModule().source_names("val") == ["val"]


@pytest.mark.parametrize(("arguments", "message"), [
    (dict(val=[DataSource("a/val.csv"), DataSource("b/val.csv")]),
     r"data.val gives the name 'val' to several sources \(a/val.csv, b/val.csv\): set a distinct `name`"),
    (dict(val=[DataSource("a.csv", name="x"), DataSource("cv", name="x")]), "the name 'x'"),
    (dict(test=[DataSource("a.csv", name="x"), DataSource("b.csv", name="x")]), "data.test gives the name 'x'"),
    (dict(val=[DataSource("a.csv", name="a/b")]), "name 'a/b' goes into metric names"),
    (dict(val=[DataSource("a.csv", weight=2.0)]), "weight applies to data.train only"),
    (dict(val=[DataSource("a.csv", splits=["dev"])]), "one file, one split"),
    (dict(val=[]), "data.val is empty"),
])
def test_unclear_sources_are_refused_in_one_line(arguments: dict, message: str) -> None:
    with pytest.raises(SettingError, match=message) as refused:
        SpeechDataModule(**arguments)
    assert "\n" not in str(refused.value)


# --------------------------------------------------------------------------------------------------------
# The data module: each clip's source, the filters, leakage and the notices per source
# --------------------------------------------------------------------------------------------------------


def test_each_validation_clip_carries_its_source(manifests: dict[str, Path], tmp_path: Path, caplog) -> None:
    from ptasr.data.manifests import ManifestFile

    corpus = make_corpus(tmp_path / "cv", {"train": 6, "dev": 2, "test": 3})
    sources = [DataSource(str(manifests["read"])), DataSource(str(corpus.root), splits=["test"]),
               DataSource(str(manifests["spoken"]), name="spoken")]
    dm = SpeechDataModule([DataSource(str(corpus.root), splits=["train"])], sources,
                          [DataSource(str(corpus.root), splits=["test"])], batching=BatchSettings(eval_batch_size=4),
                          loading=NO_WORKERS)
    with caplog.at_level(logging.INFO):
        dm.setup("fit")
    assert caplog.text.count(" val <- ") == 3  # each source filtered and reported
    # the release's test split is one of the sources: said once, naming it alone
    assert caplog.text.count("is also a test set") == 1
    assert f"validation source cv_test ({corpus.root} test) is also" in caplog.text
    clips = [ManifestFile(manifests["read"]).read_split("", str).ids, corpus.splits["test"],
             ManifestFile(manifests["spoken"]).read_split("", str).ids]
    expected = {clip: source for source, ids in enumerate(clips) for clip in ids}
    seen = {clip: source for batch in dm.val_dataloader() for clip, source in zip(batch["ids"], batch["sources"])}
    assert seen == expected and len(seen) == 5 + 3 + 3
    assert all(source == 0 for batch in dm.train_dataloader() for source in batch["sources"])


def test_leakage_and_unknown_characters_are_checked_per_source(manifests: dict[str, Path], tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "cv", {"train": 6, "dev": 2, "test": 2})
    # the release's training split validates too: it leaks, and the message names that source
    train = [DataSource(str(corpus.root), splits=["train"])]
    sources = [DataSource(str(manifests["read"])), DataSource(str(corpus.root), splits=["train"], name="tr")]
    dm = SpeechDataModule(train, sources, filters=FilterSettings(leakage="raise"), loading=NO_WORKERS)
    with pytest.raises(ValueError, match=r"leakage: 6 of 6 validation \(tr\) clips"):
        dm.setup("fit")
    vocab = tmp_path / "vocab"
    vocab.mkdir()
    SpeechDataModule(train, str(corpus.root)).vocab.save(vocab)
    dm = SpeechDataModule(train, sources, text=TextSettings(vocab_path=str(vocab / "vocab.json")), loading=NO_WORKERS)
    with pytest.warns(UserWarning, match=r"\[data\] val \(read\): \d+ characters are not in") as warned:
        dm.setup("validate")
    assert not [w for w in warned if "val (tr)" in str(w.message)]  # the release's clips: all known


# --------------------------------------------------------------------------------------------------------
# WERMetrics: per-source counts, pooled, one reduce
# --------------------------------------------------------------------------------------------------------

BATCHES = [  # (references, predictions, sources)
    (["o gato preto", "uma casa muito grande"], ["o gato branco", "uma casa grande"], [0, 1]),
    (["sim", "bom dia a todos"], ["não", "bom dia"], [1, 1]),
    (["chove"], ["chove"], [0]),
]


class _Module:
    device = torch.device("cpu")

    def __init__(self) -> None:
        self.logged: dict[str, float] = {}

    def log(self, name: str, value: float, **kwargs) -> None:
        self.logged[name] = value


def _trainer(names: list[str], reduce) -> SimpleNamespace:
    return SimpleNamespace(datamodule=SimpleNamespace(source_names=lambda stage: names), is_global_zero=False,
                           sanity_checking=False, strategy=SimpleNamespace(reduce=reduce), loggers=[])


def _validate(metrics: WERMetrics, trainer, batches) -> dict[str, float]:
    module = _Module()
    metrics.on_validation_epoch_start(trainer, module)
    for references, predictions, sources in batches:
        outputs = {"ids": [str(i) for i in range(len(references))], "references": references,
                   "predictions": predictions, "sources": sources}
        metrics.on_validation_batch_end(trainer, module, outputs, None, 0)
    metrics.on_validation_epoch_end(trainer, module)
    return module.logged


def test_wer_per_source_and_pooled_against_jiwer() -> None:
    logged = _validate(WERMetrics(), _trainer(["a", "b"], lambda tensor, reduce_op: tensor), BATCHES)
    clips = [(r, p, s) for refs, preds, sources in BATCHES for r, p, s in zip(refs, preds, sources)]
    for index, name in enumerate(["a", "b"]):
        references, predictions = zip(*[(r, p) for r, p, s in clips if s == index])
        assert logged[f"val/{name}/wer"] == pytest.approx(jiwer.wer(list(references), list(predictions)))
        assert logged[f"val/{name}/cer"] == pytest.approx(jiwer.cer(list(references), list(predictions)))
    assert logged["val/wer"] == pytest.approx(jiwer.wer([c[0] for c in clips], [c[1] for c in clips]))
    assert logged["val/cer"] == pytest.approx(jiwer.cer([c[0] for c in clips], [c[1] for c in clips]))
    assert logged["val/a/wer"] != pytest.approx(logged["val/b/wer"])  # the sources really differ here
    # one source: the pooled names only, the same values as before sources existed
    single = _validate(WERMetrics(), _trainer(["val"], lambda tensor, reduce_op: tensor),
                       [(r, p, [0] * len(r)) for r, p, _ in BATCHES])
    assert set(single) == {"val/wer", "val/cer"}
    assert (single["val/wer"], single["val/cer"]) == (logged["val/wer"], logged["val/cer"])


def test_a_source_with_no_clip_scored_logs_no_rates() -> None:
    # the data names a third source "c" of which no batch comes (as when limit_val_batches stops before it)
    with pytest.warns(UserWarning, match="no word of val source 'c' was scored, so val/c/wer is not logged"):
        logged = _validate(WERMetrics(), _trainer(["a", "b", "c"], lambda tensor, reduce_op: tensor), BATCHES)
    assert not {name for name in logged if name.startswith("val/c/")}  # no 0.0 from no words
    assert logged == _validate(WERMetrics(), _trainer(["a", "b"], lambda tensor, reduce_op: tensor), BATCHES)


def test_the_worst_clips_panel_names_their_sources() -> None:
    metrics = WERMetrics(num_worst=2)
    metrics.on_validation_epoch_start(_trainer(["a", "b"], None), _Module())
    for references, predictions, sources in BATCHES:
        metrics._update({"ids": [f"clip{i}.wav" for i in range(len(references))], "references": references,
                         "predictions": predictions, "sources": sources})
    assert _table(metrics._worst).splitlines()[2:] == [
        "| b: clip1.wav | 2 / 4 | bom dia a todos | bom dia |", "| b: clip0.wav | 1 / 1 | sim | não |"]


def test_ranks_sum_every_source_in_one_reduce() -> None:
    # two ranks, each with part of the batches: the reduce sums what both hold, as DDP's all-reduce does
    ranks = [WERMetrics(), WERMetrics()]
    calls: list[tuple[int, ...]] = []

    def reduce(tensor: torch.Tensor, reduce_op: str) -> torch.Tensor:
        assert reduce_op == "sum"
        calls.append(tuple(tensor.shape))
        return sum(rank.source_counts for rank in ranks)

    trainer = _trainer(["a", "b"], reduce)
    module = _Module()
    for rank, batches in zip(ranks, [BATCHES[:1], BATCHES[1:]]):
        rank.on_validation_epoch_start(trainer, module)
        for references, predictions, sources in batches:
            rank.on_validation_batch_end(trainer, module, {"ids": references, "references": references,
                                                           "predictions": predictions, "sources": sources}, None, 0)
    ranks[0].on_validation_epoch_end(trainer, module)
    assert calls == [(2, 2, 4)]  # one collective for both sources, words and characters
    assert module.logged == _validate(WERMetrics(), _trainer(["a", "b"], lambda tensor, reduce_op: tensor), BATCHES)


def test_clips_of_unknown_or_unsaid_sources_are_refused() -> None:
    outputs = {"ids": ["x"], "references": ["a"], "predictions": ["a"]}
    metrics = WERMetrics()
    metrics.on_validation_epoch_start(_trainer(["val"], None), _Module())
    metrics._update(outputs)  # one source: outputs need not say it
    with pytest.raises(ValueError, match="names evaluation source 1, but only 1 are known"):
        metrics._update({**outputs, "sources": [1]})
    metrics.on_validation_epoch_start(_trainer(["a", "b"], None), _Module())
    with pytest.raises(ValueError, match=r"carry no `sources`, but the data names 2 sources \['a', 'b'\]"):
        metrics._update(outputs)


# --------------------------------------------------------------------------------------------------------
# A real run: fit with two sources, then each alone on the same checkpoint
# --------------------------------------------------------------------------------------------------------


def _reference_counts(manifest: Path) -> tuple[int, int]:
    """Reference words and characters of a manifest's clips, as the error rates count them."""
    from ptasr.data.manifests import ManifestFile

    texts = ManifestFile(manifest).read_split("", TextNormalizer()).texts
    words, chars = edit_counts(texts, texts)
    return words[3], chars[3]  # all hits


@pytest.fixture(scope="module")
def fitted(manifests: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float]]:
    """Two updates on the bundled dev split, validated after the second on both manifests."""
    save_dir = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as patch:  # conftest's plain_argv comes after module-scoped fixtures
        patch.setattr(sys, "argv", ["train.py"])
        cli = cli_main(["fit", f"--trainer.logger.init_args.save_dir={save_dir}", *SMALL_MODEL, *SMALL_RUN,
                        *SCORED_ALONE, "--trainer.max_steps=2",
                        _sources({"path": str(manifests["read"])}, {"path": str(manifests["spoken"]), "name": "talk"})])
    assert cli.trainer.global_step == 2
    metrics = {name: float(value) for name, value in cli.trainer.callback_metrics.items()}
    return save_dir / "demo" / "version_0", metrics


def _evaluate(subcommand: str, run: Path, *data: str) -> dict[str, float]:
    cli = cli_main([subcommand, f"--trainer.logger.init_args.save_dir={run.parents[1]}", *SMALL_MODEL, *SMALL_RUN,
                    *SCORED_ALONE, *data,
                    f"--data.text.vocab_path={run / 'vocab.json'}", f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}"])
    return {name: float(value) for name, value in cli.trainer.callback_metrics.items()}


def test_fit_logs_each_source_as_validating_it_alone_does(fitted, manifests: dict[str, Path]) -> None:
    run, metrics = fitted
    per_source = {name for name in metrics if name.count("/") == 2}
    assert per_source == {"val/read/wer", "val/read/cer", "val/talk/wer", "val/talk/cer"}
    alone = {"read": _evaluate("validate", run, _sources({"path": str(manifests["read"])})),
             "talk": _evaluate("validate", run, f"--data.val={manifests['spoken']}")}  # a path: one source
    for name, logged in alone.items():
        assert not {metric for metric in logged if metric.count("/") == 2}  # one source: pooled names only
        assert metrics[f"val/{name}/wer"] == pytest.approx(logged["val/wer"], abs=1e-6)
        assert metrics[f"val/{name}/cer"] == pytest.approx(logged["val/cer"], abs=1e-6)
    assert metrics["val/read/cer"] != pytest.approx(metrics["val/talk/cer"])  # something to tell apart
    # pooled: each source weighted by its reference words (characters), as jiwer over all clips
    counts = {"read": _reference_counts(manifests["read"]), "talk": _reference_counts(manifests["spoken"])}
    for rate, unit in (("wer", 0), ("cer", 1)):
        weighted = sum(metrics[f"val/{name}/{rate}"] * n[unit] for name, n in counts.items())
        assert metrics[f"val/{rate}"] == pytest.approx(weighted / sum(n[unit] for n in counts.values()), abs=1e-6)


def test_test_sources_default_to_the_validation_sources_and_are_scored_alike(fitted, manifests) -> None:
    run, metrics = fitted
    tested = _evaluate("test", run, _sources({"path": str(manifests["read"])},
                                             {"path": str(manifests["spoken"]), "name": "talk"}))
    for name in ("wer", "cer", "read/wer", "read/cer", "talk/wer", "talk/cer"):
        assert tested[f"test/{name}"] == pytest.approx(metrics[f"val/{name}"], abs=1e-6)


class MetricsRecorder(L.Callback):
    """Writes each rank's ``val/*`` metrics after validation to ``<folder>/rank<R>.json`` (the DDP check)."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(metrics))


def test_two_ddp_processes_log_each_source_over_both_ranks(fitted, manifests, tmp_path: Path) -> None:
    run, metrics = fitted
    command = [sys.executable, str(ROOT / "train.py"), "validate", f"--trainer.logger.init_args.save_dir={tmp_path}",
               *SMALL_MODEL, *SMALL_RUN, *SCORED_ALONE,
               _sources({"path": str(manifests["read"])}, {"path": str(manifests["spoken"]), "name": "talk"}),
               f"--data.text.vocab_path={run / 'vocab.json'}", f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
               "--trainer.callbacks+=test_validation_sources.MetricsRecorder",
               f"--trainer.callbacks.folder={tmp_path}", "--trainer.accelerator=cpu", "--trainer.devices=2",
               "--trainer.strategy=ddp"]
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=HANG_S)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "GLOBAL_RANK: 1" in result.stderr + result.stdout  # the second process really ran
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    for logged in ranks:  # each rank half the clips, both the values of all of them
        for name in ("wer", "cer", "read/wer", "read/cer", "talk/wer", "talk/cer"):
            assert logged[f"val/{name}"] == pytest.approx(metrics[f"val/{name}"], abs=1e-6), name


def test_testing_on_the_validation_sources_names_each_after_the_split_it_reads(tmp_path: Path) -> None:
    # data.test left to the demo corpus follows your data.val, each release at its test split.
    corpus = make_corpus(tmp_path / "cv", {"train": 2, "dev": 1, "test": 1})
    data = SpeechDataModule(val=[DataSource(str(corpus.root), splits=["dev"]),
                                 DataSource(str(corpus.root), splits=["train"], name="tr")])
    assert [split for _, split, _ in data.parts("val")] == ["dev", "train"]
    assert data.source_names("val") == ["cv_dev", "tr"]
    assert [split for _, split, _ in data.parts("test")] == ["test", "test"]
    assert data.source_names("test") == ["cv_test", "tr"]
