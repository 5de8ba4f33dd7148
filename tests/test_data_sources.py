"""One notion of a data source (issue #24): ``data.train``/``val``/``test`` are lists of DataSource (a path is the
shorthand), each recognised from its path and opened by one function for training and ``ptasr evaluate`` alike;
the data settings come in groups; and the demo reads exactly what it read before."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from ptasr.data import BUNDLED_CORPUS, SpeechDataModule
from ptasr.data.commonvoice import CommonVoiceRelease
from ptasr.data.huggingface import HFDatasetSource
from ptasr.data.manifests import ManifestFile
from ptasr.data.settings import BatchSettings, LoadingSettings
from ptasr.data.sources import DataSource, open_source, source_kind
from ptasr.data.testing import make_corpus
from ptasr.data.text import TextNormalizer
from ptasr.errors import MissingPathError, SettingError
from ptasr.train.cli import DEFAULT_CONFIG, cli_main

# What train.py's data module gave before data.train/val/test (recorded at 4863404, the commit this change started
# from, by record_demo_data below with the old flag names), for configs/demo.yaml and for the data module's
# defaults: clips, normalised texts, durations, vocabulary and the first three epochs' batch order.
BEFORE = Path(__file__).parent / "fixtures" / "demo_data_before_sources.json"
NO_WORKERS = LoadingSettings(num_workers=0)


def _digest(items) -> str:
    return hashlib.sha256("\n".join(map(str, items)).encode()).hexdigest()


def record_demo_data(args: list[str]) -> dict:
    """The demo data module (train.py's, built from configs/demo.yaml) as the fixture records it."""
    data = cli_main(args, run=False).datamodule
    data.setup("fit")
    out: dict = {"vocab": list(data.vocab.tokens)}
    for name in ("train", "val"):
        rows = data._manifests[name]
        out[name] = {"count": len(rows), "ids": _digest(rows.ids), "texts": _digest(rows.texts),
                     "durations": _digest(f"{d:.4f}" for d in rows.durations), "first_ids": list(rows.ids[:3]),
                     "first_texts": list(rows.texts[:3])}
    out["train_batches"] = {str(epoch): _digest(data.train_dataloader().sampler.epoch_batches(epoch))
                            for epoch in range(3)}
    out["val_batches"] = _digest(data.val_dataloader().sampler.epoch_batches(0))
    return out


@pytest.mark.parametrize(("recorded", "args"), [
    ("demo", ["-c", str(DEFAULT_CONFIG), "--data.loading.num_workers=0"]),  # what `python train.py fit` reads
    ("defaults", ["--data.loading.num_workers=0"]),  # the data module's own defaults (no config file)
])
def test_the_demo_reads_the_same_clips_texts_vocabulary_and_batch_order_as_before(recorded: str,
                                                                                   args: list[str]) -> None:
    before = json.loads(BEFORE.read_text(encoding="utf-8"))[recorded]
    assert record_demo_data(args) == before


def test_a_path_is_a_one_source_list_on_the_command_line_and_in_yaml(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"data:\n  val: {BUNDLED_CORPUS}\n  test:\n    - path: {BUNDLED_CORPUS}\n      splits: [dev]\n")
    data = cli_main(["-c", str(config), f"--data.train={BUNDLED_CORPUS}", "--data.loading.num_workers=0"],
                    run=False).datamodule
    assert [split for _, split, _ in data.parts("train")] == ["train", "dev"]  # a release trains on train + dev
    assert [split for _, split, _ in data.parts("val")] == ["test"]
    assert [split for _, split, _ in data.parts("test")] == ["dev"]


def test_a_manifest_path_stays_a_path_on_the_command_line_and_in_yaml(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    # jsonargparse would read an existing file given for a type holding dataclasses as the value itself
    manifest = tmp_path / "mine.csv"
    manifest.write_text("path,text\nclips/a.wav,olá\n", encoding="utf-8")
    config = tmp_path / "c.yaml"
    config.write_text(f"data:\n  val: {manifest}\n")
    with pytest.raises(SystemExit):
        cli_main(["fit", "-c", str(config), f"--data.train={manifest}", "--print_config"])
    data = yaml.safe_load(capsys.readouterr().out)["data"]
    assert (data["train"], data["val"]) == (str(manifest), str(manifest))


def test_print_config_shows_the_data_settings_in_groups(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli_main(["fit", "--print_config"])
    data = yaml.safe_load(capsys.readouterr().out)["data"]
    assert set(data) == {"train", "val", "test", "text", "batching", "filters", "loading"}
    assert data["batching"]["batch_size"] == 8 and data["text"]["strip_punctuation"] is False
    assert set(data["filters"]) >= {"min_duration", "max_duration", "leakage"}
    assert set(data["loading"]) == {"num_workers", "pin_memory", "cache_dir"}


def _parquet_folder(folder: Path) -> Path:
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "train-00000-of-00001.parquet").write_bytes(b"")
    return folder


@pytest.mark.parametrize(("make", "kind"), [
    (lambda root: root / "mine.csv", "manifest"),
    (lambda root: root / "mine.jsonl", "manifest"),
    (lambda root: root / "release" / "train.tsv", "manifest"),  # a split TSV: read as its release's split
    (lambda root: root / "release", "commonvoice"),
    (lambda root: root, "commonvoice"),  # a folder holding a language folder
    (lambda root: root / "cv-corpus-7.0-pt.tar.gz", "commonvoice"),
    (lambda root: _parquet_folder(root / "parquet"), "parquet"),
    (lambda root: Path("someone/a_dataset"), "huggingface"),
])
def test_each_kind_of_source_is_recognised_from_its_path(tmp_path: Path, make, kind: str) -> None:
    make_corpus(tmp_path / "release", clips_per_split={"train": 1, "test": 1})
    assert source_kind(DataSource(str(make(tmp_path)))) == kind


def test_kind_says_it_outright_and_a_missing_path_is_one_line(tmp_path: Path) -> None:
    assert source_kind(DataSource("someone/a_dataset", kind="parquet")) == "parquet"
    with pytest.raises(MissingPathError, match="does not exist"):
        source_kind(DataSource(str(tmp_path / "nowhere")))


def test_one_function_opens_every_kind_with_its_splits(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "release", clips_per_split={"train": 2, "dev": 1, "test": 1})
    (tmp_path / "mine.csv").write_text("path,text\nrelease/clips/x.mp3,olá\n", encoding="utf-8")
    release, splits = open_source(DataSource(str(corpus.root)), "train")
    assert isinstance(release, CommonVoiceRelease) and splits == ["train", "dev"]
    assert open_source(DataSource(str(corpus.root)), "val")[1] == ["test"]
    assert open_source(DataSource(str(corpus.root), splits=["dev"]), "test")[1] == ["dev"]
    manifest, splits = open_source(DataSource(str(tmp_path / "mine.csv")), "train")
    assert isinstance(manifest, ManifestFile) and splits == [""]
    split_tsv, splits = open_source(DataSource(str(corpus.root / "dev.tsv")), "train")
    assert isinstance(split_tsv, CommonVoiceRelease) and splits == ["dev"]
    hub, splits = open_source(DataSource("someone/a_dataset", config="pt", text_column="text"), "val")
    assert isinstance(hub, HFDatasetSource) and (hub.config, hub.text_column, splits) == ("pt", "text", ["test"])
    with pytest.raises(SettingError, match="one file, one split"):
        open_source(DataSource(str(tmp_path / "mine.csv"), splits=["train"]), "train")


def test_evaluate_reads_a_source_as_the_data_module_does(tmp_path: Path) -> None:
    from ptasr.evaluation.evaluate import load_eval_set

    corpus = make_corpus(tmp_path / "release", clips_per_split={"train": 2, "dev": 2, "test": 3})
    normalizer = TextNormalizer()
    data = SpeechDataModule(str(corpus.root), val=[DataSource(str(corpus.root), splits=["dev"])],
                            loading=NO_WORKERS)
    reader, split, _ = data.parts("val")[0]
    rows = data.rows(split, reader)
    evaluated = load_eval_set(str(corpus.root), "dev", normalizer)
    assert (evaluated.ids, evaluated.references) == (list(rows.ids), list(rows.texts))
    assert load_eval_set(str(corpus.root / "test.tsv"), "ignored", normalizer).split == "test"


def test_your_own_training_data_needs_your_own_validation_data(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "release")
    with pytest.raises(SettingError, match="data.val is not set"):
        SpeechDataModule(str(corpus.root))
    data = SpeechDataModule(str(corpus.root), val=str(corpus.root), loading=NO_WORKERS)
    # the test set follows your validation data, not the demo corpus
    assert [(reader.root, split) for reader, split, _ in data.parts("test")] == [(corpus.root, "test")]
    # validated on its dev split, the release still tests on its test split
    data = SpeechDataModule(str(corpus.root), [DataSource(str(corpus.root), splits=["dev"])], loading=NO_WORKERS)
    assert [(reader.root, split) for reader, split, _ in data.parts("test")] == [(corpus.root, "test")]


def test_two_training_files_of_one_name_are_fine_two_scored_ones_are_not(tmp_path: Path) -> None:
    # names tell scored sets apart in metric names (val/<name>/wer); training sources only label reports
    train = [DataSource(str(tmp_path / "a" / "train.csv")), DataSource(str(tmp_path / "b" / "train.csv"))]
    assert SpeechDataModule(train, str(tmp_path / "dev.csv"))._names["train"] == ["train", "train"]
    with pytest.raises(SettingError, match="data.val gives the name 'train' to several sources"):
        SpeechDataModule(train, val=train)


def test_weight_is_for_training_and_names_must_fit_a_metric(tmp_path: Path) -> None:
    with pytest.raises(SettingError, match="weight applies to data.train only"):
        SpeechDataModule(val=[DataSource(BUNDLED_CORPUS, weight=2.0)])
    with pytest.raises(SettingError, match="weight must be positive"):
        SpeechDataModule(train=[DataSource(BUNDLED_CORPUS, weight=0.0)])
    with pytest.raises(SettingError, match="metric names"):
        SpeechDataModule(val=[DataSource(BUNDLED_CORPUS, name="a b")])
    with pytest.raises(SettingError, match="batching.batch_size, data.batching.max_batch_seconds"):
        SpeechDataModule(batching=BatchSettings(batch_size=None))


@pytest.mark.parametrize("data", [
    # a checkpoint written before data.train/val/test and the groups (#24): still exports
    {"root": "/data/cv/pt", "language": "pt", "val_manifest": "/d/dev.csv", "batch_size": 16, "eval_batch_size": 8,
     "seed": 7},
    {"train": [{"path": "/data/cv/pt", "language": "pt"}], "val": "/d/dev.csv", "test": "/d/dev.csv",
     "batching": {"batch_size": 16, "eval_batch_size": 8, "seed": 7}},
], ids=["before", "after"])
def test_the_model_card_reads_a_runs_data_settings_before_and_after_the_change(data: dict) -> None:
    from ptasr.export.model_card import data_language, data_name, hyperparameters

    card = hyperparameters({"datamodule_hyper_parameters": data}, {"trainer": {"accumulate_grad_batches": 4}})
    assert (card["train_batch_size"], card["eval_batch_size"], card["seed"]) == (16, 8, 7)
    assert card["total_train_batch_size"] == 64
    assert (data_name(data, "train"), data_name(data, "val"), data_language(data)) == ("pt", "dev.csv", "pt")


def test_a_checkpoints_data_settings_are_plain_values() -> None:
    # torch.load(weights_only=True) refuses a pickled dataclass: the checkpoint holds dicts and lists
    data = SpeechDataModule(train=[DataSource(BUNDLED_CORPUS, splits=["dev"])], loading=NO_WORKERS)
    assert data.hparams["train"] == [{**vars(DataSource(BUNDLED_CORPUS)), "splits": ["dev"]}]
    assert data.hparams["batching"]["batch_size"] == 16 and data.hparams["val"] == BUNDLED_CORPUS
