"""Fixtures every test file gets; shared helpers (the small model and run) are in ``helpers.py``."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """``sys.argv`` as ``python train.py`` gives it: pytest's own arguments are not the training CLI's (and
    LightningCLI warns when they sit in ``sys.argv`` beside the ``args`` a test passes)."""
    monkeypatch.setattr(sys, "argv", ["train.py"])
