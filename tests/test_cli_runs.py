"""What train.py shows and leaves around a run (issue 22 j, k, n): a resumed run is shown as its version number
without the head carry-over line of a head it replaces; a fit that fails during setup leaves no run folder; a
checkpoint's own vocabulary and normaliser rule when it is evaluated on other data. In-process, on the small
model of the training tests and the bundled corpus."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import pytest
from helpers import SMALL_MODEL, SMALL_RUN, small_module

from ptasr.data.text import Vocabulary
from ptasr.train.cli import cli_main

CARRY_OVER = "CTC head rebuilt for the data's"


def _fit(save_dir: Path, *extra: str) -> L.Trainer:
    args = ["fit", f"--trainer.logger.init_args.save_dir={save_dir}", *SMALL_MODEL, *SMALL_RUN,
            "--trainer.max_time=null", "--trainer.limit_val_batches=1", *extra]
    return cli_main(args).trainer


def test_a_resumed_run_shows_its_version_number_and_no_carry_over_line(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    pretrained = tmp_path / "other-language"  # a model of another vocabulary: its head is rebuilt on the first fit
    small_module(Vocabulary.build(["xyz"])).model.save_pretrained(pretrained)
    Vocabulary.build(["xyz"]).save(pretrained)
    with caplog.at_level(logging.WARNING):
        _fit(tmp_path, f"--model.pretrained={pretrained}", "--trainer.max_steps=2")
    assert CARRY_OVER in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        trainer = _fit(tmp_path, f"--model.pretrained={pretrained}", "--trainer.max_steps=3", "--ckpt_path=last")
    assert trainer.global_step == 3 and trainer.log_dir == str(tmp_path / "demo" / "version_0")
    assert trainer.progress_bar_callback.get_metrics(trainer, trainer.lightning_module)["v_num"] == 0
    assert CARRY_OVER not in caplog.text  # the checkpoint's head was restored: nothing was carried over


def _manifest(folder: Path, rows: int = 4) -> Path:
    """A manifest of some bundled test clips; one text has a character the corpus never uses."""
    from ptasr.data import BUNDLED_CORPUS

    corpus = Path(BUNDLED_CORPUS)
    lines = (corpus / "test.tsv").read_text(encoding="utf-8").splitlines()[1:rows + 1]
    texts = [(line.split("\t")[1], line.split("\t")[2]) for line in lines]
    texts[0] = (texts[0][0], texts[0][1] + " Ørsted")
    manifest = folder / "mine.tsv"
    manifest.write_text("path\ttext\n" + "".join(f"{corpus / 'clips' / path}\t{text}\n" for path, text in texts),
                        encoding="utf-8")
    return manifest


def test_a_checkpoint_is_evaluated_with_its_own_vocabulary_and_normaliser(tmp_path: Path,
                                                                         recwarn: pytest.WarningsRecorder) -> None:
    _fit(tmp_path, "--trainer.max_steps=2", "--data.text.strip_accents=true")
    run = tmp_path / "demo" / "version_0"
    trained = Vocabulary.load(run / "vocab.json")
    # The default config's data with another validation set: its text would build another vocabulary
    # (accents kept, and "ø"); the checkpoint's rules, and the characters it lacks are counted.
    cli = cli_main(["validate", f"--trainer.logger.init_args.save_dir={tmp_path}", *SMALL_MODEL,
                    "--data.loading.num_workers=0", f"--data.val={_manifest(tmp_path)}",
                    f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}"])
    assert cli.datamodule.vocab == trained and cli.datamodule.normalizer.strip_accents
    assert "val/wer" in cli.trainer.callback_metrics
    unknown = [str(w.message) for w in recwarn if "become [UNK]" in str(w.message)]
    assert len(unknown) == 1 and "'ø': 1" in unknown[0], unknown
    # The same model exported, evaluated as model.pretrained (what --ckpt_path EXPORT advises): its vocab.json
    # and normalizer.json rule likewise, so its head is kept.
    from ptasr.cli import main

    assert main(["export", str(run / "checkpoints" / "last.ckpt"), str(tmp_path / "export")]) == 0
    cli = cli_main(["validate", f"--trainer.logger.init_args.save_dir={tmp_path / 'exported'}", *SMALL_MODEL,
                    "--data.loading.num_workers=0", f"--data.val={_manifest(tmp_path)}",
                    f"--model.pretrained={tmp_path / 'export'}"])
    assert cli.datamodule.vocab == trained and cli.datamodule.normalizer.strip_accents


def test_a_fit_that_fails_during_setup_leaves_no_run_folder(tmp_path: Path) -> None:
    from ptasr.errors import DataError

    earlier = tmp_path / "demo" / "version_0"  # another run's folder: left as it is
    earlier.mkdir(parents=True)
    (earlier / "config.yaml").write_text("seed_everything: 1\n")
    missing = tmp_path / "missing.tsv"
    missing.write_text(f"path\ttext\n{tmp_path / 'nowhere.wav'}\tola\n", encoding="utf-8")
    with pytest.raises(DataError, match="no train clips left"):
        _fit(tmp_path, f"--data.train={missing}", f"--data.val={missing}")
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "demo", "demo/version_0", "demo/version_0/config.yaml", "missing.tsv"]
