"""The README's test command is what CI runs, and it installs every dependency at a version the suite was tested
with (tests/constraints.txt), so that a new release elsewhere cannot break CI."""

from __future__ import annotations

from importlib.metadata import requires
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from ptasr.export.model_card import TRANSFORMERS_WITHOUT_LM

REPO = Path(__file__).resolve().parents[1]
CONSTRAINTS = "tests/constraints.txt"


def pins() -> dict[str, str]:
    """``{canonical name: version}`` of tests/constraints.txt (markers dropped)."""
    lines = (REPO / CONSTRAINTS).read_text(encoding="utf-8").splitlines()
    requirements = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    for requirement in requirements:
        [specifier] = requirement.specifier  # one exact version each
        assert specifier.operator == "==", requirement
    return {canonicalize_name(r.name): next(iter(r.specifier)).version for r in requirements}


def test_readme_test_command_is_the_ci_command_and_uses_the_constraints() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    command = readme.split("Run the tests (offline, CPU):\n\n```bash\n", 1)[1].split("\n```", 1)[0]
    assert (REPO / ".ci" / "run").read_text(encoding="utf-8").rstrip().splitlines()[-1] == command
    installs = [part for part in command.split("&&") if "pip install" in part]
    assert installs and all(f"-c {CONSTRAINTS}" in part for part in installs)
    assert f"without `-c {CONSTRAINTS}`" in " ".join(readme.split())  # how to test the newest releases instead


def test_constraints_pin_every_runtime_package_and_test_oracle() -> None:
    pinned = pins()
    needed = {canonicalize_name(Requirement(line).name) for line in requires("ptasr") or []
              if Requirement(line).marker is None or Requirement(line).marker.evaluate({"extra": "test"})}
    needed.add("pyctcdecode")  # installed by the command with --no-deps, not through the extra
    assert needed <= pinned.keys(), needed - pinned.keys()
    assert {"torch", "transformers", "onnxruntime", "onnxscript", "kenlm", "playwright", "flashlight-text"} <= needed
    assert pinned["transformers"] not in TRANSFORMERS_WITHOUT_LM
