"""Numbers and files a user can trust (issue 17): no silent scoring of an untrained model, no run file replaced
by another run's, one line for each user error.

The refusals run ``train.py`` / ``ptasr`` as subprocesses, since their exit status and stderr are the point; the
rest calls the CLIs in-process on one small fit of the training tests' model.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import HANG_S, SMALL_MODEL  # the ~40 k-parameter model of the training tests

from ptasr.data.testing import make_corpus
from ptasr.run_log import read_scalars, training_results
from ptasr.train.cli import cli_main

REPO = Path(__file__).resolve().parent.parent
SMALL = [*SMALL_MODEL, "--data.loading.num_workers=0", "--data.batching.batch_size=4", "--data.batching.eval_batch_size=4",
         "--trainer.enable_model_summary=false", "--model.schedule=linear", "--model.warmup_steps=1"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"), {"train": 8, "dev": 2, "test": 4}).root


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Path:
    """The run folder of a 2-update fit with one validation: ``<save_dir>/demo/version_0``."""
    save_dir = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["train.py"])
        cli_main(["fit", *_args(corpus, save_dir), "--trainer.max_steps=2", "--trainer.val_check_interval=2",
                  "--trainer.log_every_n_steps=1"])
    run = save_dir / "demo" / "version_0"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    return run


def _args(corpus: Path, save_dir: Path, *extra: str) -> list[str]:
    return [f"--data.train={corpus}", f"--data.val={corpus}", f"--trainer.logger.init_args.save_dir={save_dir}", *SMALL, *extra]


def _train_py(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], capture_output=True, text=True, cwd=cwd,
                          timeout=HANG_S)


def _one_line(result: subprocess.CompletedProcess[str], prog: str = "train.py") -> str:
    """The error line of a command that must fail: exactly one, the last thing on stderr, no traceback."""
    assert result.returncode == 1, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    errors = [line for line in lines if line.startswith(f"{prog}: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr[-3000:]
    return errors[0]


def _digests(folder: Path) -> dict[str, str]:
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


# --- item 1: no evaluation of a random model ----------------------------------------------------------------


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_an_evaluation_without_a_checkpoint_is_refused(subcommand: str, corpus: Path, tmp_path: Path) -> None:
    error = _one_line(_train_py(subcommand, *_args(corpus, tmp_path / "runs")))
    assert f"train.py {subcommand} needs a trained model" in error
    assert "--ckpt_path" in error and "--model.pretrained" in error  # the ways out
    assert not (tmp_path / "runs").exists()  # and no run folder for a refused command


def test_last_without_a_last_checkpoint_names_where_it_looked(trained: Path, corpus: Path, tmp_path: Path) -> None:
    save_dir = trained.parent.parent
    before = sorted(path.name for path in save_dir.iterdir())
    # a mistyped run name
    error = _one_line(_train_py("test", *_args(corpus, save_dir), "--trainer.logger.init_args.name=demoo",
                                "--ckpt_path=last", cwd=tmp_path))
    assert "--ckpt_path last: no last checkpoint at" in error and str(save_dir / "demoo") in error
    assert sorted(path.name for path in save_dir.iterdir()) == before  # no runs/demoo
    assert list(tmp_path.iterdir()) == []


def test_last_finds_the_newest_run(trained: Path, corpus: Path) -> None:
    cli = cli_main(["test", *_args(corpus, trained.parent.parent), "--ckpt_path=last"])
    assert cli.trainer.ckpt_path == str(trained / "checkpoints" / "last.ckpt")
    assert Path(cli.trainer.log_dir) == trained / "test"


def test_a_pretrained_model_is_evaluated_as_it_is_and_said_so(corpus: Path, tmp_path: Path,
                                                              recwarn: pytest.WarningsRecorder) -> None:
    from ptasr.data.datamodule import SpeechDataModule
    from ptasr.data.settings import LoadingSettings
    from ptasr.model.config import Wav2Vec2Config
    from ptasr.model.wav2vec2 import Wav2Vec2CTC

    data = SpeechDataModule(str(corpus), str(corpus), loading=LoadingSettings(num_workers=0))
    overrides = dict(item.removeprefix("--model.config_overrides.").split("=") for item in SMALL_MODEL)
    overrides = {key: eval(value) for key, value in overrides.items()}  # noqa: S307 -- our own literals
    config = Wav2Vec2Config.preset("tiny", vocab_size=data.vocab_size, pad_token_id=data.pad_token_id, **overrides)
    Wav2Vec2CTC(config).save_pretrained(tmp_path / "pretrained")
    cli = cli_main(["test", *_args(corpus, tmp_path / "runs"), f"--model.pretrained={tmp_path / 'pretrained'}"])
    assert "test/wer" in cli.trainer.callback_metrics
    assert any("no --ckpt_path: test runs on model.pretrained=" in str(w.message) for w in recwarn)


# --- items 2, 3, 4: no file of another run or corpus replaced -----------------------------------------------


def test_a_refused_test_leaves_the_run_files_as_they_were(trained: Path, corpus: Path) -> None:
    before = _digests(trained)
    # the same run resumed with accents stripped: another vocabulary, refused (an evaluation takes the
    # checkpoint's vocabulary and normaliser instead: tests/test_cli_runs.py)
    with pytest.raises(ValueError, match="the checkpoint's vocabulary"):
        cli_main(["fit", *_args(corpus, trained.parent.parent), "--data.text.strip_accents=true", "--trainer.max_steps=3",
                  f"--ckpt_path={trained / 'checkpoints' / 'last.ckpt'}"])
    after = _digests(trained)
    assert {name: digest for name, digest in after.items() if name in before} == before
    assert "vocab.json" in before and "normalizer.json" in before


def test_an_evaluation_writes_no_text_files_into_the_run(trained: Path, corpus: Path) -> None:
    before = _digests(trained)
    # accepted: same vocabulary, another normaliser setting (a warning), so a rewrite would change the file
    cli_main(["validate", *_args(corpus, trained.parent.parent), "--data.text.chars_to_ignore=[]",
              f"--data.text.vocab_path={trained / 'vocab.json'}", f"--ckpt_path={trained / 'checkpoints' / 'last.ckpt'}"])
    after = _digests(trained)
    assert {name: after[name] for name in before} == before
    assert not any(name.startswith("validate/") and name.endswith((".json",)) for name in after)


def test_a_fresh_fit_refuses_an_occupied_run_folder(trained: Path, corpus: Path) -> None:
    save_dir = trained.parent.parent
    before = _digests(trained)
    error = _one_line(_train_py("fit", *_args(corpus, save_dir), "--trainer.logger.init_args.version=version_0",
                                "--trainer.max_steps=1"))
    assert f"run folder {trained} already holds a run" in error and "--ckpt_path last" in error
    # nor does a fit that starts from a checkpoint outside it get to write into it
    elsewhere = save_dir / "elsewhere.ckpt"
    elsewhere.write_bytes((trained / "checkpoints" / "last.ckpt").read_bytes())
    other = _train_py("fit", *_args(corpus, save_dir), "--trainer.logger.init_args.version=version_0",
                      f"--ckpt_path={elsewhere}")
    assert "already holds a run" in _one_line(other)
    assert _digests(trained) == before


def test_validating_a_checkpoint_leaves_the_model_cards_table_alone(trained: Path, corpus: Path) -> None:
    rows = training_results(read_scalars(trained))
    assert [row.step for row in rows] == [2]
    cli = cli_main(["validate", *_args(corpus, trained.parent.parent),
                    f"--ckpt_path={trained / 'checkpoints' / 'last.ckpt'}"])
    assert Path(cli.trainer.log_dir) == trained / "validate"
    assert training_results(read_scalars(trained)) == rows  # no "| No log | 0 | 1 |" row
    assert "val/wer" in read_scalars(trained / "validate")  # the evaluation has its own curve


# --- item 5: ptasr export -----------------------------------------------------------------------------------


def _ptasr(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ptasr", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=HANG_S, **kwargs)


def test_export_refuses_a_non_empty_folder_unless_overwrite(trained: Path, tmp_path: Path) -> None:
    from ptasr.cli import main

    target = tmp_path / "model"
    target.mkdir()
    (target / "README.md").write_text("my notes\n", encoding="utf-8")
    error = _one_line(_ptasr("export", str(trained / "checkpoints" / "last.ckpt"), str(target)), "ptasr export")
    assert f"export target {target} is not empty (README.md)" in error and "--overwrite" in error
    assert [path.name for path in target.iterdir()] == ["README.md"]
    assert (target / "README.md").read_text(encoding="utf-8") == "my notes\n"
    assert main(["export", str(trained / "checkpoints" / "last.ckpt"), str(target), "--overwrite"]) == 0
    assert (target / "model.safetensors").is_file() and "my notes" not in (target / "README.md").read_text()


def test_re_exporting_a_folder_keeps_its_training_sections(trained: Path, tmp_path: Path) -> None:
    from ptasr.cli import main
    from ptasr.export.model_card import previous_card

    first = tmp_path / "first"
    assert main(["export", str(trained / "checkpoints" / "last.ckpt"), str(first), "--language", "pt"]) == 0
    card = (first / "README.md").read_text(encoding="utf-8")
    kept = previous_card(first)
    assert kept["training results"].startswith("| Training Loss |") and "- learning_rate:" in kept["hyperparameters"]
    # in place (with --overwrite), and into another folder: the same training sections
    assert main(["export", str(first), str(first), "--overwrite", "--language", "pt"]) == 0
    assert main(["export", str(first), str(tmp_path / "second"), "--name", "first", "--language", "pt"]) == 0
    for folder in (first, tmp_path / "second"):
        again = (folder / "README.md").read_text(encoding="utf-8")
        assert "No TensorBoard event files" not in again and "(not recorded)" not in again
        assert again == card  # nothing of the training lost, nothing else changed


# --- item 6: evaluate and a closed stdout; --version --------------------------------------------------------


def test_evaluate_writes_its_results_even_when_the_reader_leaves(trained: Path, corpus: Path, tmp_path: Path) -> None:
    stderr = tmp_path / "stderr.txt"
    with open(stderr, "w", encoding="utf-8") as err:
        process = subprocess.Popen([sys.executable, "-m", "ptasr", "evaluate", str(trained / "checkpoints" / "last.ckpt"),
                                    "--data", str(corpus), "--output-dir", str(tmp_path / "out"), "--device", "cpu"],
                                   stdout=subprocess.PIPE, stderr=err, cwd=REPO)
        process.stdout.close()  # `| head -0`: the reader is gone before the first line
        code = process.wait(timeout=HANG_S)
    assert code in (0, 141), stderr.read_text()
    assert "Traceback" not in stderr.read_text() and "Exception ignored" not in stderr.read_text()
    names = sorted(path.name for path in (tmp_path / "out").iterdir())
    assert [name.rsplit("_test_", 1)[-1] for name in names] == ["eval_results.json", "eval_results.txt",
                                                                "predictions.tsv"], names


def test_version() -> None:
    import ptasr

    result = _ptasr("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"ptasr {ptasr.__version__}"


# --- item 7: one line for each user error -------------------------------------------------------------------


def _main_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """``ptasr`` in-process: status 1 and exactly one line on stderr, ``ptasr <command>: error: ...``."""
    from ptasr.cli import main

    code = main(argv)
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"ptasr {argv[0]}: error: "), err
    return err.strip()


def _clip(corpus: Path) -> str:
    return str(sorted((corpus / "clips").glob("*.mp3"))[0])


def _truncated(path: Path, to: Path) -> Path:
    data = path.read_bytes()
    to.write_bytes(data[: len(data) // 2])
    return to


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_without_a_gpu_is_one_line(trained: Path, corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = str(trained / "checkpoints" / "last.ckpt")
    error = _main_one_line(["transcribe", checkpoint, _clip(corpus), "--device", "cuda"], capsys)
    assert "device 'cuda': no CUDA GPU is visible here" in error and "cpu" in error
    error = _main_one_line(["transcribe", checkpoint, _clip(corpus), "--device", "gpu"], capsys)
    assert "unknown device 'gpu'" in error


def test_a_truncated_checkpoint_is_one_line(trained: Path, corpus: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from ptasr.cli import main

    cut = _truncated(trained / "checkpoints" / "last.ckpt", tmp_path / "cut.ckpt")
    error = _main_one_line(["transcribe", str(cut), _clip(corpus)], capsys)
    assert f"cannot read {cut}" in error and "truncated or damaged" in error
    # an exported folder whose model.safetensors was cut short
    folder = tmp_path / "exported"
    assert main(["export", str(trained / "checkpoints" / "last.ckpt"), str(folder)]) == 0
    _truncated(folder / "model.safetensors", folder / "model.safetensors")
    error = _main_one_line(["transcribe", str(folder), _clip(corpus)], capsys)
    assert f"cannot read {folder / 'model.safetensors'}" in error and "truncated or damaged" in error
    # train.py's fit (resume) and test paths
    for subcommand in ("fit", "test"):
        error = _one_line(_train_py(subcommand, *_args(corpus, tmp_path / "runs"), f"--ckpt_path={cut}"))
        assert f"cannot read {cut}" in error and "truncated or damaged" in error
    assert not (tmp_path / "runs").exists()


def test_a_typo_in_config_overrides_is_named_with_close_matches(corpus: Path, tmp_path: Path) -> None:
    error = _one_line(_train_py("fit", *_args(corpus, tmp_path / "runs"), "--model.config_overrides.mask_time_prb=0.1"))
    assert "unknown Wav2Vec2Config field(s) 'mask_time_prb' (close: mask_time_prob" in error
    assert "model.config_overrides" in error


def test_an_arpa_file_kenlm_rejects_is_one_line(trained: Path, corpus: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("flashlight.lib.text.decoder")
    arpa = tmp_path / "unigram.arpa"  # well formed, but KenLM needs at least bigrams
    arpa.write_text("\\data\\\nngram 1=3\n\n\\1-grams:\n-1.0\t<s>\n-1.0\t</s>\n-1.0\tcasa\n\n\\end\\\n")
    error = _main_one_line(["transcribe", str(trained / "checkpoints" / "last.ckpt"), _clip(corpus), "--lm", str(arpa)],
                           capsys)
    assert f"KenLM cannot load {arpa}: FormatLoadException" in error and "bigram" in error


@pytest.mark.parametrize("value", ["0", "-2"])
def test_a_batch_size_below_one_is_refused(value: str, trained: Path, corpus: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from ptasr.cli import main

    assert main(["transcribe", str(trained / "checkpoints" / "last.ckpt"), _clip(corpus), "--batch-size", value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"ptasr transcribe: error: argument --batch-size: {value} is not a positive count (1 or more)"


# --- item 8: messages that say what happened ----------------------------------------------------------------


def test_a_clip_listed_twice_is_a_duplicate_in_training_and_in_evaluate(
        trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from ptasr.cli import main
    from ptasr.data.commonvoice import CommonVoiceRelease
    from ptasr.data.filters import FilterSettings, filter_manifest
    from ptasr.data.text import TextNormalizer

    corpus = make_corpus(tmp_path / "cv", {"train": 4, "dev": 2, "test": 4})
    lines = (corpus.root / "test.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    (corpus.root / "test.tsv").write_text("".join([*lines, lines[1]]), encoding="utf-8")  # row 1 again
    missing = corpus.splits["test"][2]
    (corpus.root / "clips" / missing).unlink()
    release = CommonVoiceRelease(corpus.root)
    _, report = filter_manifest(release, release.read_split("test", TextNormalizer()), FilterSettings(), "test")
    assert report.removed["duplicate row"] == 1 and report.removed["missing file"] == 1  # not 2 missing files
    # evaluate counts the same duplicate, and names the missing clip as missing
    code = main(["evaluate", str(trained / "checkpoints" / "last.ckpt"), "--data", str(corpus.root),
                 "--output-dir", str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "1 duplicate rows (a clip listed again) scored once" in err
    assert f"skipped {missing}: missing file" in err and "System error" not in err
    [results] = (tmp_path / "out").glob("*_eval_results.json")
    results = json.loads(results.read_text(encoding="utf-8"))
    assert results["duplicates"] == 1 and results["skipped"] == 1 and results["utterances"] == 3


def test_several_languages_name_the_ptasr_flag(trained: Path, corpus: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    for language in ("pt", "en"):
        shutil.copytree(corpus, tmp_path / "release" / language)
    error = _main_one_line(["evaluate", str(trained / "checkpoints" / "last.ckpt"), "--data",
                            str(tmp_path / "release")], capsys)
    assert "holds several languages" in error and "choose one with --language" in error
    assert "language: pt" not in error


def _parquet_folder(corpus: Path, folder: Path, splits: tuple[str, ...]) -> Path:
    """``corpus``'s splits as a Hugging Face dataset folder of parquet files (audio bytes + sentence)."""
    import json

    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    from ptasr.data.commonvoice import read_tsv

    features = {"audio": {"_type": "Audio"}, "sentence": {"dtype": "string", "_type": "Value"}}
    (folder / "data").mkdir(parents=True)
    for split in splits:
        rows = read_tsv(corpus / f"{split}.tsv")
        audio = [{"bytes": (corpus / "clips" / p).read_bytes(), "path": p} for p in rows["path"]]
        table = pa.table({"audio": audio, "sentence": rows["sentence"]})
        table = table.replace_schema_metadata({b"huggingface": json.dumps({"info": {"features": features}})})
        pq.write_table(table, folder / "data" / f"{split}-00000-of-00001.parquet")
    return folder


def test_parquet_folders_evaluate_and_a_missing_dev_split_hints_at_splits(
        trained: Path, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import json

    datasets = pytest.importorskip("datasets")
    from ptasr.cli import main
    from ptasr.data.datamodule import SpeechDataModule
    from ptasr.data.settings import LoadingSettings
    from ptasr.errors import SettingError

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    folder = _parquet_folder(corpus, tmp_path / "hf_data", ("train", "test"))
    data = SpeechDataModule(str(folder), str(folder), loading=LoadingSettings(num_workers=0,
                                                                              cache_dir=str(tmp_path / "cache")))
    with pytest.raises(SettingError, match=r"has no split 'dev'; it has \['train', 'test'\]\. .*splits: \[train\]"):
        data.vocab  # noqa: B018 -- a source in data.train reads train and dev
    # ptasr evaluate reads the folder train.py reads
    assert main(["evaluate", str(trained / "checkpoints" / "last.ckpt"), "--data", str(folder), "--split", "test",
                 "--output-dir", str(tmp_path / "out"), "--device", "cpu"]) == 0, capsys.readouterr().err
    [results] = (tmp_path / "out").glob("hf_data_test_eval_results.json")
    assert json.loads(results.read_text(encoding="utf-8"))["utterances"] == 4


def test_ddp_predict_reports_every_ranks_transcripts(trained: Path, corpus: Path) -> None:
    import os

    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, str(REPO / "train.py"), "predict", *_args(corpus, trained.parent.parent),
                             f"--ckpt_path={trained / 'checkpoints' / 'last.ckpt'}", "--trainer.accelerator=cpu",
                             "--trainer.devices=2", "--trainer.strategy=ddp", "--data.batching.eval_batch_size=1"],
                            capture_output=True, text=True, cwd=REPO, env=env, timeout=HANG_S)
    assert result.returncode == 0, result.stderr[-3000:]
    files = sorted((trained / "predict").glob("predictions_rank*.jsonl"))
    assert [path.name for path in files] == ["predictions_rank0.jsonl", "predictions_rank1.jsonl"]
    lines = [line for path in files for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 4  # the test split, each clip once over the two ranks
    assert f"[predict] 4 transcripts written to {trained / 'predict' / 'predictions_rank*.jsonl'}" in result.stderr + result.stdout
