"""``python train.py predict``: a transcript of every test clip in the run folder, nothing in the working directory.

Lightning re-creates the predict loader (to track batch indices), so this also checks that our ``ClipLoader``
survives that. A fit of two updates of the training tests' small model gives the checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import SMALL_MODEL  # the ~40 k-parameter model of the training tests

from ptasr.data.commonvoice import read_tsv
from ptasr.data.testing import make_corpus
from ptasr.data.text import TextNormalizer, Vocabulary
from ptasr.train.cli import cli_main

TEST_CLIPS = 5


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, Path]:
    """(corpus root, run folder with checkpoints/last.ckpt, an empty working directory)."""
    corpus = make_corpus(tmp_path / "corpus", clips_per_split={"train": 8, "dev": 2, "test": TEST_CLIPS}).root
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    cli_main(["fit", *_args(corpus, tmp_path / "runs"), "--trainer.max_steps=2", "--trainer.val_check_interval=2",
              "--trainer.limit_val_batches=1"])
    run_dir = tmp_path / "runs" / "demo" / "version_0"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    return corpus, run_dir, cwd


def _args(corpus: Path, save_dir: Path, *extra: str) -> list[str]:
    # eval batches of 2 over 5 test clips: the last batch is partial, and no clip may be dropped
    return [*SMALL_MODEL, f"--data.train={corpus}", f"--data.val={corpus}", "--data.loading.num_workers=0", "--data.batching.batch_size=4",
            "--data.batching.eval_batch_size=2", f"--trainer.logger.init_args.save_dir={save_dir}",
            "--trainer.enable_model_summary=false", "--model.schedule=linear", "--model.warmup_steps=1", *extra]


def test_predict_writes_a_transcript_for_every_test_clip(run: tuple[Path, Path, Path]) -> None:
    corpus, run_dir, cwd = run
    cli_main(["predict", *_args(corpus, run_dir.parent.parent), f"--ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"])
    predictions = run_dir / "predict" / "predictions.jsonl"  # the run's predict sub-folder
    rows = [json.loads(line) for line in predictions.read_text(encoding="utf-8").splitlines()]
    tsv = read_tsv(corpus / "test.tsv", {"path": ("path",), "sentence": ("sentence",)})
    normalize = TextNormalizer()
    references = {path: normalize(sentence) for path, sentence in zip(tsv["path"], tsv["sentence"], strict=True)}
    assert len(references) == TEST_CLIPS
    assert sorted(row["id"] for row in rows) == sorted(references)  # every test clip, once
    assert all(row["reference"] == references[row["id"]] for row in rows)
    alphabet = set("".join(Vocabulary.load(run_dir / "vocab.json").tokens)) | {" "}  # "|" decodes to a space
    assert all(set(row["text"]) <= alphabet for row in rows) and any(row["text"] for row in rows)
    # the predict config lands in the checkpoint's run folder (beside the training config), not in the cwd
    assert (run_dir / "predict" / "config_predict.yaml").is_file() and (run_dir / "config.yaml").is_file()
    assert list(cwd.iterdir()) == []


def test_predict_without_a_logger_writes_nothing_into_the_working_directory(
        run: tuple[Path, Path, Path], recwarn: pytest.WarningsRecorder) -> None:
    corpus, run_dir, cwd = run
    cli_main(["predict", *_args(corpus, run_dir.parent.parent), "--trainer.logger=false",
              f"--ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"])
    assert any("no run folder" in str(warning.message) for warning in recwarn)
    assert list(cwd.iterdir()) == []  # neither config_predict.yaml nor predictions.jsonl
    assert not list(run_dir.rglob("predictions.jsonl"))
