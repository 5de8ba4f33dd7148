"""Every YAML in configs/ parses through the CLI (offline), and the reference config says what the card says."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from ptasr.train.cli import CONFIG_DIR, cli_main

CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))


def _print_config(capsys: pytest.CaptureFixture[str], args: list[str]) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(args)
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_configs_exist() -> None:
    names = {path.name for path in CONFIGS}
    assert {"demo.yaml", "xls-r-300m_pt_cv7.yaml", "xls-r-300m_pt_improved.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_parses(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _print_config(capsys, ["fit", "-c", str(path), "--print_config"])
    assert config["model"]["lr"] > 0
    assert config["trainer"]["logger"]["init_args"]["save_dir"] == "runs"
    callbacks = {cb["class_path"].rsplit(".", 1)[-1] for cb in config["trainer"]["callbacks"]}
    assert {"WERMetrics", "ModelCheckpoint"} <= callbacks


def test_demo_is_the_default(capsys: pytest.CaptureFixture[str]) -> None:
    default = _print_config(capsys, ["fit", "--print_config"])
    demo = _print_config(capsys, ["fit", "-c", str(CONFIG_DIR / "demo.yaml"), "--print_config"])
    assert default == demo
    assert default["model"]["preset"] == "tiny" and default["model"]["pretrained"] is None


def test_a_config_file_replaces_the_demo_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    # The demo's wall-clock guard must not leak into a 40000-step recipe.
    config = _print_config(capsys, ["fit", "-c", str(CONFIG_DIR / "xls-r-300m_pt_cv7.yaml"), "--print_config"])
    assert config["trainer"]["max_time"] is None


def test_reference_config_matches_the_card(capsys: pytest.CaptureFixture[str]) -> None:
    config = _print_config(capsys, ["fit", "-c", str(CONFIG_DIR / "xls-r-300m_pt_cv7.yaml"), "--print_config"])
    model, trainer, data = config["model"], config["trainer"], config["data"]
    # Card: lr 7.5e-5, batch 16 x accumulation 4, Adam (0.9, 0.999) eps 1e-8, linear with 2000 warm-up,
    # 40000 steps, native AMP, seed 42, eval batch 8.
    assert model["lr"] == pytest.approx(7.5e-5)
    assert (data["batching"]["batch_size"], trainer["accumulate_grad_batches"]) == (16, 4)
    assert list(model["betas"]) == [0.9, 0.999] and model["eps"] == pytest.approx(1e-8)
    assert (model["schedule"], model["warmup_steps"], trainer["max_steps"]) == ("linear", 2000, 40000)
    assert trainer["precision"] == "16-mixed" and config["seed_everything"] == 42
    assert data["batching"]["eval_batch_size"] == 8 and data["batching"]["seed"] == 42
    # HF Trainer defaults: weight decay 0, max grad norm 1.
    assert model["weight_decay"] == 0.0 and trainer["gradient_clip_val"] == 1.0
    # HF script / robust-speech-event README values.
    overrides = model["config_overrides"]
    assert (overrides["mask_time_prob"], overrides["mask_time_length"]) == (0.75, 10)
    assert (overrides["mask_feature_prob"], overrides["mask_feature_length"]) == (0.25, 64)
    assert overrides["layerdrop"] == 0.0 and overrides["activation_dropout"] == 0.1
    assert overrides["feat_proj_dropout"] == 0.0 and overrides["hidden_dropout"] == 0.0
    assert overrides["attention_dropout"] == 0.0 and overrides["final_dropout"] == 0.0
    assert overrides["ctc_loss_reduction"] == "mean"
    # train on train + dev, validate (and test) on test, clips up to 20 s, one release for all three
    assert [(s["path"], s["splits"]) for s in data["train"]] == [("data/cv-corpus-7.0-2021-07-21/pt", ["train", "dev"])]
    assert [(s["path"], s["splits"]) for s in data["val"]] == [("data/cv-corpus-7.0-2021-07-21/pt", ["test"])]
    assert [(s["path"], s["splits"]) for s in data["test"]] == [("data/cv-corpus-7.0-2021-07-21/pt", ["test"])]
    assert data["filters"]["max_duration"] == 20.0 and data["filters"]["min_duration"] == 0.0
    text = data["text"]
    assert text["chars_to_ignore"] == ',?.!-;:"“%‘”�—’…–' and not text["strip_punctuation"]  # the card's list
    assert text["lowercase"] and not text["strip_accents"]
    assert model["freeze_feature_encoder"] is True
    assert model["pretrained"] == "facebook/wav2vec2-xls-r-300m"


def test_improved_recipe_chooses_on_dev_and_reports_on_test(capsys: pytest.CaptureFixture[str]) -> None:
    config = _print_config(capsys, ["fit", "-c", str(CONFIG_DIR / "xls-r-300m_pt_improved.yaml"), "--print_config"])
    data = config["data"]
    assert [[s["splits"] for s in data[role]] for role in ("train", "val", "test")] == [[["train"]], [["dev"]], [["test"]]]


def _commented_examples(path: Path) -> list[list[str]]:
    """The ``--data...`` argument lines in a config's header comment, each (with its continuations) a list."""
    lines = [line[1:].strip() for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("#")]
    examples, current = [], ""
    for line in lines:
        if current or line.startswith("--data."):
            current += " " + line.rstrip("\\").strip()
            if not line.endswith("\\"):
                examples.append(shlex.split(current))
                current = ""
    return examples


def test_the_improved_recipes_data_suggestions_parse(capsys: pytest.CaptureFixture[str]) -> None:
    path = CONFIG_DIR / "xls-r-300m_pt_improved.yaml"
    examples = _commented_examples(path)
    assert len(examples) >= 4 and not any("mozilla-foundation/" in " ".join(e) for e in examples)
    for example in examples:
        data = _print_config(capsys, ["fit", "-c", str(path), *example, "--print_config"])["data"]
        given = dict(arg.split("=", 1) if "=" in arg else (arg, next_arg)
                     for arg, next_arg in zip(example, [*example[1:], None]) if arg.startswith("--data."))
        for flag, value in given.items():  # each given source list as it was given, not the recipe's
            role = flag.split(".")[1]
            paths = [data[role]] if isinstance(data[role], str) else [s["path"] for s in data[role]]
            assert all(path in value for path in paths), (flag, data[role])
    sources = next(e for e in examples if "weight: 2.0" in " ".join(e))
    data = _print_config(capsys, ["fit", "-c", str(path), *sources, "--print_config"])["data"]
    assert [s["weight"] for s in data["train"]] == [1.0, 2.0] and data["train"][0]["splits"] == ["train"]
    assert [s["name"] for s in data["val"]] == ["cv", None]
