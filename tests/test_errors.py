"""The one error policy of both entry points (ptasr/errors.py): user errors in one line, bugs with a traceback."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ptasr.data.audio import AudioDecodeError
from ptasr.errors import CheckpointError, MissingPathError, SettingError, UserError, exit_status
from ptasr.train.module import TrainingDiverged


def _raises(error: BaseException) -> Callable[[], None]:
    def run() -> None:
        raise error
    return run


def test_a_user_error_is_one_line_and_status_1(capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PTASR_TRACEBACK", raising=False)
    status = exit_status(_raises(SettingError("batch_size must be >= 1,\n got 0")), "train.py")
    assert status == 1
    assert capsys.readouterr().err == "train.py: error: batch_size must be >= 1, got 0\n"


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PTASR_TRACEBACK", raising=False)
    # A plain ValueError is not ours to explain in one line: it propagates, traceback and all.
    with pytest.raises(ValueError, match="internal"):
        exit_status(_raises(ValueError("internal")), "ptasr transcribe")


def test_the_variable_shows_the_traceback_of_user_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTASR_TRACEBACK", "1")
    with pytest.raises(MissingPathError, match="x.wav"):
        exit_status(_raises(MissingPathError("no audio file at x.wav")), "ptasr transcribe")


def test_status_and_silence(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PTASR_TRACEBACK", raising=False)
    assert exit_status(lambda: None, "p") == 0 and exit_status(lambda: 3, "p") == 3
    assert exit_status(_raises(UserError("quiet")), "p", silent=lambda error: True) == 1
    assert capsys.readouterr().err == ""


def test_the_user_errors_keep_their_builtin_kinds() -> None:
    # callers that catch the built-in type (tests, notebooks) keep working
    assert issubclass(CheckpointError, ValueError) and issubclass(MissingPathError, FileNotFoundError)
    for kind in (AudioDecodeError, TrainingDiverged, CheckpointError, SettingError, MissingPathError):
        assert issubclass(kind, UserError), kind


def test_ptasr_help_names_the_traceback_variable() -> None:
    from ptasr.cli import build_parser

    assert "PTASR_TRACEBACK=1" in " ".join(build_parser().format_help().split())
