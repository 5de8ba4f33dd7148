"""Broken input never ends a run, and bad configuration ends with one line naming the problem.

A release folder carries every defect Common Voice has shown (corrupt, empty and truncated MP3, a missing
clip, a 0.02 s and a 60 s clip, an empty sentence, one of only ignored characters, characters outside the
vocabulary, an unmatched quote, CRLF line ends, a label longer than its frames, 8 kHz and 44.1 kHz stereo
audio) and a real ``fit`` runs over it to its last step.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import HANG_S, SMALL_MODEL, train_py_error_line  # the ~40 k-parameter model of the training tests

from ptasr.data.testing import make_corpus
from ptasr.data.text import TextNormalizer, Vocabulary
from ptasr.train.cli import cli_main

REPO = Path(__file__).resolve().parent.parent
SMALL = [
    *SMALL_MODEL,
    "--data.loading.num_workers=0",
    "--data.batching.batch_size=4",
    "--data.batching.eval_batch_size=4",
    "--trainer.val_check_interval=3",
    "--trainer.enable_model_summary=false",
    "--model.schedule=linear",
    "--model.warmup_steps=1",
]
EXTRA_CLIPS = {  # name -> (sample rate, channels, seconds, sentence)
    "short.wav": (16000, 1, 0.02, "casa"),
    "long.wav": (16000, 1, 60.0, "a casa azul"),
    "narrow.wav": (8000, 1, 1.5, "o gato"),
    "stereo.flac": (44100, 2, 1.5, "o cão"),
    "foreign.wav": (16000, 1, 1.5, "o señor straße"),
    "unsaid.wav": (16000, 1, 1.5, ""),
}


def _add_clips(root: Path) -> None:
    """Append the clips make_corpus does not make, in its column order, to train.tsv and clip_durations."""
    rng = np.random.default_rng(0)
    header = (root / "train.tsv").read_text(encoding="utf-8").splitlines()[0].split("\t")
    with open(root / "train.tsv", "a", encoding="utf-8", newline="") as tsv, \
            open(root / "clip_durations.tsv", "a", encoding="utf-8", newline="") as durations:
        for name, (rate, channels, seconds, sentence) in EXTRA_CLIPS.items():
            samples = 0.1 * rng.standard_normal((int(rate * seconds), channels)).astype("float32")
            sf.write(root / "clips" / name, samples, rate)
            row = {"client_id": "x", "path": name, "sentence": sentence, "up_votes": "2", "down_votes": "0"}
            tsv.write("\t".join(row.get(column, "") for column in header) + "\r\n")
            durations.write(f"{name}\t{int(seconds * 1000)}\r\n")


def test_fit_runs_to_the_end_over_every_kind_of_broken_input(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, recwarn: pytest.WarningsRecorder
) -> None:
    defects = ("corrupt", "empty", "truncated", "missing", "empty_text", "quoted", "long")
    corpus = make_corpus(tmp_path / "cv", {"train": 16, "dev": 2, "test": 4}, defects=defects, crlf=True)
    _add_clips(corpus.root)
    # a vocabulary without ñ and ß, as when fine-tuning an existing model further: they become [UNK]
    normalizer = TextNormalizer()
    sentences = [line.split("\t")[2] for line in (corpus.root / "validated.tsv").read_text().splitlines()[1:]]
    vocab = Vocabulary.build(normalizer(s) for s in sentences + ["o gato o cão a casa azul casa"])
    vocab.save(tmp_path)
    caplog.set_level(logging.INFO)
    cli = cli_main(["fit", f"--data.train=[{{path: {corpus.root}, splits: [train]}}]", f"--data.val={corpus.root}",
                    f"--data.text.vocab_path={tmp_path / 'vocab.json'}", "--data.filters.leakage=ignore",
                    f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}", "--trainer.max_steps=6", *SMALL])
    assert cli.trainer.global_step == 6  # ran to its last step
    log = caplog.text
    # one report per split at setup, naming what each filter removed
    train_report = next(line for line in log.splitlines() if "[data] train <-" in line)
    # missing clip; empty and all-ignored sentences; the 60 s clip; the 0.02 s clip and the too-long label
    for reason in ("1 missing file", "2 empty text", "1 outside duration bounds", "2 CTC-infeasible"):
        assert reason in train_report, (reason, train_report)
    warnings = "\n".join(str(w.message) for w in recwarn)
    assert "become [UNK]: {'ñ': 1, 'ß': 1}" in warnings
    # corrupt, empty and truncated clips keep their listed duration, so they are found while loading,
    # skipped, counted and reported; every visit of one counts (an epoch is 4 batches, the run 6 steps)
    assert cli.datamodule.num_skipped_clips >= 3
    assert "clips were skipped as unreadable or truncated" in warnings
    assert sum("skipping clip" in r.message for r in caplog.records) == cli.datamodule.num_skipped_clips


def _one_line_error(*args: str) -> str:
    """The error line of a train.py run that must fail: exactly one, the last thing on stderr."""
    result = subprocess.run([sys.executable, str(REPO / "train.py"), *args, *SMALL],
                            capture_output=True, text=True, cwd=REPO, timeout=HANG_S)
    assert result.returncode != 0
    return train_py_error_line(result)


def test_a_nonexistent_data_path_is_named(tmp_path: Path) -> None:
    error = _one_line_error("fit", f"--data.train={tmp_path / 'no-such-release'}", f"--data.val={tmp_path / 'x'}",
                            f"--trainer.logger.init_args.save_dir={tmp_path}")
    assert "no-such-release" in error


def test_an_unknown_preset_is_named(tmp_path: Path) -> None:
    error = _one_line_error("fit", "--model.preset=xls-r-3m", f"--trainer.logger.init_args.save_dir={tmp_path}")
    assert "xls-r-3m" in error


def test_contradicting_trainer_settings_are_one_line(tmp_path: Path) -> None:
    # The demo config has a progress-bar callback; Lightning refuses to switch the bar off next to it.
    error = _one_line_error("fit", "--trainer.enable_progress_bar=false",
                            f"--trainer.logger.init_args.save_dir={tmp_path}")
    assert "enable_progress_bar=False" in error


def test_a_checkpoint_of_another_vocabulary_is_named(tmp_path: Path) -> None:
    # A run on the bundled corpus, accents kept ...
    trained = cli_main(["fit", f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.max_steps=1",
                        "--trainer.limit_val_batches=0", *SMALL])
    checkpoint = tmp_path / "accents.ckpt"
    trained.trainer.save_checkpoint(checkpoint)
    # ... resumed on the same corpus with accents stripped: fewer tokens, a CTC head that does not fit
    error = _one_line_error("fit", f"--ckpt_path={checkpoint}", "--data.text.strip_accents=true",
                            f"--trainer.logger.init_args.save_dir={tmp_path}")
    assert "the checkpoint's vocabulary" in error and "only in the checkpoint: " in error  # the problem
    assert "'ç'" in error and "data.text.vocab_path" in error and "strip_accents" in error  # and the way out
