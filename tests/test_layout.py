"""The package layout: each layer imports only from the layers below it, so a package can be read (and
changed) knowing only what is under it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ptasr"

# Bottom to top. A module may import from its own layer's packages and from any layer below.
LAYERS = [
    {"errors", "compat", "lengths", "threads", "storage", "run_log", "precision_probe"},  # shared leaves
    {"model", "data"},
    {"decoding"},
    {"recognition"},
    {"evaluation", "export", "labelling"},
    {"train"},
    {"cli", "__main__", "__init__"},
]
LEVEL = {part: level for level, parts in enumerate(LAYERS) for part in parts}


def part_of(module: str) -> str:
    """``ptasr.recognition.recognizer`` -> ``recognition``; ``ptasr.errors`` -> ``errors``."""
    return module.split(".")[1] if module.count(".") else "__init__"


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every ``ptasr`` import in ``path``, at any depth (lazy imports in functions count)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "ptasr":  # from ptasr import threads
                found += [(node.lineno, f"ptasr.{alias.name}") for alias in node.names]
            elif node.module.startswith("ptasr."):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("ptasr.")]
    return found


def test_every_part_of_the_package_has_a_layer():
    parts = {path.stem if path.suffix == ".py" else path.name for path in PACKAGE.iterdir()
             if (path.suffix == ".py" or (path / "__init__.py").is_file())}
    assert parts - LEVEL.keys() == set()


def test_no_import_runs_upward():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(("ptasr", *path.relative_to(PACKAGE).with_suffix("").parts))
        own = LEVEL[part_of(module)]
        for line, target in imports(path):
            if target == "ptasr.Wav2Vec2CTC" or target == "ptasr.Wav2Vec2Config" or target == "ptasr.__version__":
                continue  # the package's lazy re-exports of the model layer and its version
            if LEVEL[part_of(target)] > own:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}")
    assert upward == []


def test_the_layer_check_sees_an_upward_import(tmp_path):
    # the check above must be able to fail: a data module importing the recognizer is found
    module = tmp_path / "bad.py"
    module.write_text("def f():\n    from ptasr.recognition.recognizer import Recognizer\n")
    (line, target), = imports(module)
    assert line == 2 and LEVEL[part_of(target)] > LEVEL["data"]
