"""``ptasr pseudo-label``: untranscribed recordings (Ogg Opus, FLAC, WAV at 8 and 44.1 kHz, folders of them) into a
manifest with each clip's confidence, kept by ``--min-confidence``, read back by the data module with a weight;
an existing output is never replaced."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest
from test_cli import write_checkpoint

from ptasr.cli import main
from ptasr.data import SpeechDataModule
from ptasr.data.settings import BatchSettings, LoadingSettings
from ptasr.data.sources import DataSource
from ptasr.data.testing import make_recordings
from ptasr.data.text import Vocabulary
from ptasr.labelling.pseudo import clip_confidence, pseudo_label
from ptasr.recognition.recognizer import Recognizer

SENTENCES = ["Bom dia, como vai?", "Ela mora em Lisboa.", "O gato dorme no sofá.", "Amanhã vai chover.",
             "A casa é grande.", "Eu gosto de café."]


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six clips in WAV at 8, 22.05 and 44.1 kHz, FLAC, Ogg Opus and Ogg Vorbis (``make_recordings`` cycles them)."""
    folder = tmp_path_factory.mktemp("unlabelled")
    make_recordings(folder, SENTENCES)
    return folder / "audio"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "last.ckpt",
                            Vocabulary.build(["abcdefghijklmnopqrstuvwxyzáãçéê"]))


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_clips_are_kept_by_their_confidence(checkpoint: Path, recordings: Path) -> None:
    recognizer = Recognizer.load(checkpoint, dtype="float32")
    every = pseudo_label(recognizer, sorted(recordings.iterdir()), min_confidence=0.0)
    assert len(every.kept) + every.no_words == 6 and len(every.kept) >= 3 and not every.unreadable
    confidences = sorted(row["confidence"] for row in every.kept)
    middle = confidences[len(confidences) // 2]
    some = pseudo_label(recognizer, sorted(recordings.iterdir()), min_confidence=middle)
    assert sorted(row["confidence"] for row in some.kept) == [c for c in confidences if c >= middle]
    assert some.below == sum(c < middle for c in confidences) > 0
    # each kept clip: the transcript, its duration and the mean of its words' confidences
    transcript = recognizer.transcribe([every.kept[0]["path"]], word_timestamps=True)[0]
    assert every.kept[0]["text"] == transcript.text and every.kept[0]["confidence"] == clip_confidence(transcript)


def test_the_command_writes_a_manifest_that_trains_with_a_weight(checkpoint: Path, recordings: Path, tmp_path: Path,
                                                                 capsys, caplog) -> None:
    output = tmp_path / "pseudo.csv"
    files = sorted(recordings.iterdir())
    code = main(["pseudo-label", str(checkpoint), str(files[0]), str(recordings), "-o", str(output),
                 "--min-confidence", "0", "--dtype", "float32"])
    out = capsys.readouterr().out
    kept = rows(output)
    # a file named and in a named folder is one clip
    assert code == 0 and f"kept {len(kept)} of 6 clips (confidence >= 0): {output}" in out
    assert {row["path"] for row in kept} <= {str(f.resolve()) for f in files}
    assert all(0.0 <= float(row["confidence"]) <= 1.0 and float(row["duration"]) > 0 for row in kept)
    dm = SpeechDataModule([DataSource(str(output), weight=0.5)], str(output), batching=BatchSettings(batch_size=2),
                          loading=LoadingSettings(num_workers=0))
    with caplog.at_level(logging.INFO):
        dm.setup("fit")
    # (a random model's transcript can be too long for its clip: CTC-infeasible clips are the data module's to drop)
    assert f"train <- pseudo ({output}): kept " in caplog.text and f" of {len(kept)} clips" in caplog.text


def test_an_existing_output_is_never_replaced(checkpoint: Path, recordings: Path, tmp_path: Path, capsys) -> None:
    output = tmp_path / "mine.csv"
    output.write_text("path,text\nx.wav,mine\n", encoding="utf-8")
    assert main(["pseudo-label", str(checkpoint), str(recordings), "-o", str(output), "--min-confidence", "0.5"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{output} exists: choose another -o file" in err
    assert output.read_text(encoding="utf-8") == "path,text\nx.wav,mine\n"


@pytest.mark.parametrize("argument,message", [("none", "no audio file or folder at"),
                                              ("--min-confidence=80", "--min-confidence 80 is not a confidence")])
def test_wrong_arguments_are_one_line(checkpoint: Path, recordings: Path, tmp_path: Path, capsys, argument: str,
                                      message: str) -> None:
    audio = str(tmp_path / argument) if argument == "none" else str(recordings)
    extra = [argument] if argument.startswith("--") else ["--min-confidence", "0.5"]
    assert main(["pseudo-label", str(checkpoint), audio, "-o", str(tmp_path / "p.csv"), *extra]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and not (tmp_path / "p.csv").exists()
