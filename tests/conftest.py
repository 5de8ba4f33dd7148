"""Fixtures every test file gets; shared helpers (the small model and run) are in ``helpers.py``."""

from __future__ import annotations

import sys
from typing import Any

import pytest
import yaml


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """``sys.argv`` as ``python train.py`` gives it: pytest's own arguments are not the training CLI's (and
    LightningCLI warns when they sit in ``sys.argv`` beside the ``args`` a test passes)."""
    monkeypatch.setattr(sys, "argv", ["train.py"])


@pytest.fixture
def recipe_configs(capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, Any]]:
    """Every recipe in ``configs/`` as ``train.py fit -c RECIPE --print_config`` resolves it, by file name."""
    from ptasr.train.cli import CONFIG_DIR, cli_main

    resolved = {}
    for config in sorted(CONFIG_DIR.glob("*.yaml")):
        with pytest.raises(SystemExit):
            cli_main(["fit", "-c", str(config), "--print_config"])
        resolved[config.name] = yaml.safe_load(capsys.readouterr().out)
    return resolved
