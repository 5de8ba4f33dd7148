"""train.py's config mistakes are one line (issue 22 c, i): an unknown setting names where it was given and its
closest matches, a YAML syntax error its file and line, a ``--ckpt_path`` that is an exported model folder what to
pass instead. In-process: the CLI raises the ``SettingError`` that train.py prints as ``train.py: error: ...``."""

from __future__ import annotations

from pathlib import Path

import pytest

from ptasr.errors import MissingPathError, SettingError
from ptasr.train.cli import DEFAULT_CONFIG, cli_main


def _refused(args: list[str], capsys: pytest.CaptureFixture[str], error: type[Exception] = SettingError) -> str:
    """The message of the error ``train.py args`` stops with; nothing else printed (no usage)."""
    with pytest.raises(error) as refused:
        cli_main(args)
    streams = capsys.readouterr()
    assert "usage:" not in streams.err + streams.out, streams.err[-2000:]
    return str(refused.value)


def test_an_unknown_key_in_a_config_file_names_the_file_line_and_closest_setting(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = DEFAULT_CONFIG.read_text(encoding="utf-8").splitlines()
    at = lines.index("    batch_size: 8")
    lines[at] = "    batch_sise: 8"
    config = tmp_path / "typo.yaml"
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    message = _refused(["fit", "-c", str(config)], capsys)
    assert message.startswith(f"unknown setting data.batching.batch_sise in {config}, line {at + 1}; did you mean "
                              f"data.batching.batch_size?"), message
    assert "train.py fit --help" in message and "\n" not in message


@pytest.mark.parametrize("given", [["--data.batching.batch_sise", "3"], ["--data.batching.batch_sise=3"],
                                   ["--dat.batching.batch_size=3"]])
def test_an_unknown_option_on_the_command_line_names_its_closest_setting(
        given: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    message = _refused(["fit", *given], capsys)
    assert " on the command line; did you mean data.batching.batch_size?" in message, message


@pytest.mark.parametrize(("old", "new"), [
    ("root", "use data.train, data.val and data.test"), ("language", "a source's language"),
    ("train_splits", "a source's splits in data.train"), ("val_split", "a source's splits in data.val"),
    ("test_split", "a source's splits in data.test"), ("hf_dataset", "use data.train, data.val and data.test"),
    ("hf_config", "a source's config"), ("hf_data_dir", "a source's data_dir"),
    ("hf_audio_column", "a source's audio_column"), ("hf_text_column", "a source's text_column"),
    ("train_manifest", "use data.train"), ("val_manifest", "use data.val"), ("test_manifest", "use data.test"),
    ("sources", "use data.train"), ("val_sources", "use data.val"), ("test_sources", "use data.test"),
    ("batch_size", "use data.batching.batch_size"), ("chars_to_ignore", "use data.text.chars_to_ignore"),
    ("max_duration", "use data.filters.max_duration"), ("num_workers", "use data.loading.num_workers")])
def test_an_old_data_setting_on_the_command_line_names_its_replacement(
        old: str, new: str, capsys: pytest.CaptureFixture[str]) -> None:
    message = _refused(["fit", f"--data.{old}=x"], capsys)
    assert message.startswith(f"data.{old} (on the command line) is gone: "), message
    assert new in message and "\n" not in message


def test_an_old_data_setting_in_a_config_names_its_file_line_and_replacement(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "old.yaml"
    config.write_text("data:\n  root: /data/cv/pt\n  val_manifest: /data/mine/dev.csv\n", encoding="utf-8")
    message = _refused(["fit", "-c", str(DEFAULT_CONFIG), "-c", str(config)], capsys)
    # jsonargparse names the first key it does not accept
    assert message.startswith(f"data.root (in {config}, line 2) is gone: use data.train"), message


def test_the_old_data_class_in_a_config_names_the_new_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "old.yaml"
    config.write_text("data:\n  class_path: ptasr.data.CommonVoiceDataModule\n  init_args:\n    root: /data/cv/pt\n",
                      encoding="utf-8")
    message = _refused(["fit", "-c", str(DEFAULT_CONFIG), "-c", str(config)], capsys)
    assert "ptasr.data.SpeechDataModule" in message and "ptasr.data.CommonVoiceDataModule is gone" in message
    assert "\n" not in message


def test_a_setting_of_another_section_is_found_by_its_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert "did you mean trainer.max_steps?" in _refused(["validate", "--max_steps=3"], capsys)


def test_a_yaml_syntax_error_names_the_file_line_and_column(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    lines = DEFAULT_CONFIG.read_text(encoding="utf-8").splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("  lr: "))
    lines[at] = lines[at].replace("lr: ", "lr ")  # the colon forgotten
    config = tmp_path / "broken.yaml"
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    message = _refused(["fit", "-c", str(config)], capsys)
    assert message.startswith(f"{config}, line {at + 1}, column 3: not valid YAML:"), message
    assert "<unicode string>" not in message and "\n" not in message


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict"])
def test_an_exported_model_folder_as_ckpt_path_is_named_with_the_option_that_takes_it(
        subcommand: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    export = tmp_path / "my-model"  # what `ptasr export` writes: config.json, weights, vocab.json, no .ckpt
    export.mkdir()
    for name in ("config.json", "vocab.json", "model.safetensors"):
        (export / name).write_text("{}")
    message = _refused([subcommand, f"--ckpt_path={export}"], capsys)
    assert f"--ckpt_path {export} is an exported model folder" in message, message
    assert f"pass --model.pretrained {export} instead of --ckpt_path" in message
    assert ("to fine-tune from it" if subcommand == "fit" else f"to {subcommand} it") in message
