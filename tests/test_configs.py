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
    assert (data["batch_size"], trainer["accumulate_grad_batches"]) == (16, 4)
    assert list(model["betas"]) == [0.9, 0.999] and model["eps"] == pytest.approx(1e-8)
    assert (model["schedule"], model["warmup_steps"], trainer["max_steps"]) == ("linear", 2000, 40000)
    assert trainer["precision"] == "16-mixed" and config["seed_everything"] == 42
    assert data["eval_batch_size"] == 8
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
    assert data["max_duration"] == 20.0 and data["train_splits"] == ["train", "dev"] and data["val_split"] == "test"
    assert data["chars_to_ignore"] == ',?.!-;:"“%‘”�—’…–' and not data["strip_punctuation"]  # the card's list
    assert model["freeze_feature_encoder"] is True
    assert model["pretrained"] == "facebook/wav2vec2-xls-r-300m"


def test_improved_recipe_chooses_on_dev_and_reports_on_test(capsys: pytest.CaptureFixture[str]) -> None:
    config = _print_config(capsys, ["fit", "-c", str(CONFIG_DIR / "xls-r-300m_pt_improved.yaml"), "--print_config"])
    data = config["data"]
    assert (data["train_splits"], data["val_split"], data["test_split"]) == (["train"], "dev", "test")


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
        given = {arg.split(".", 2)[1] for arg in example if arg.startswith("--data.")}
        assert all(data[key] is not None for key in given), example
    sources = next(e for e in examples if "--data.sources" in e)
    data = _print_config(capsys, ["fit", "-c", str(path), *sources, "--print_config"])["data"]
    assert [s["weight"] for s in data["sources"]] == [1.0, 2.0] and data["sources"][0]["splits"] == ["train"]
