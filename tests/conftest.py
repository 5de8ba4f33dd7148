"""Fixtures every test file gets; shared helpers (the small model and run) are in ``helpers.py``."""

from __future__ import annotations

import sys
from typing import Any

from ptasr import threads

# Before anything imports torch (see ptasr/threads.py): the suite and the train.py / ptasr processes it starts
# (they inherit the variables) share the cores with each other and with whatever else runs on the machine.
threads.apply_before_torch(announce=False)

import pytest  # noqa: E402
import yaml  # noqa: E402


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
