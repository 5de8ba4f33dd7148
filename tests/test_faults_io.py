"""Faults a run survives, on the file side (issue 23, items 3, 5, 6, 7 and 8): paths of any characters through
every cache and TSV ptasr writes, caches that cannot be read or written, clip paths that cannot be resolved,
``evaluate`` targets that cannot be written, and an ``export`` written whole or not at all.

The faults are real where this machine allows it everywhere: symlink loops, names too long, newlines and tabs in
file names, a cache folder under a file (ENOTDIR: tests run as root here, so chmod would stop nothing). A full
disk is a writer patched to raise ENOSPC. Models are tiny random ones built here; clips come from the bundled
corpus.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import HANG_S, SMALL_MODEL

from ptasr.cli import main
from ptasr.data import BUNDLED_CORPUS
from ptasr.data.audio import AudioDecodeError, load_audio
from ptasr.data.cache import HeaderDurationCache
from ptasr.data.filters import FilterSettings, filter_manifest
from ptasr.data.manifests import ManifestFile
from ptasr.data.text import TextNormalizer, Vocabulary
from ptasr.export.hf_folder import write_hf_folder
from ptasr.model.config import Wav2Vec2Config
from ptasr.model.wav2vec2 import Wav2Vec2CTC
from ptasr.recognition.recognizer import Recognizer

REPO = Path(__file__).resolve().parent.parent
# names a file system allows and a TSV line does not: newline, tab, carriage return, backslash, quotes, unicode
ODD_NAMES = ["new\nline.mp3", "tab\there.mp3", "cr\rlf.mp3", "back\\slash n.mp3", "quo\"te's.mp3",
             "ação 音声 😀.mp3"]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTASR_CACHE", str(tmp_path / "cache"))


def _bundled_clips(n: int) -> list[tuple[Path, str]]:
    """The first ``n`` (clip, sentence) pairs of the bundled corpus's test split."""
    root = Path(BUNDLED_CORPUS)
    lines = (root / "test.tsv").read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    rows = [dict(zip(header, line.split("\t"))) for line in lines[1:n + 1]]
    return [(root / "clips" / row["path"], row["sentence"]) for row in rows]


def _odd_folder(folder: Path) -> list[tuple[Path, str]]:
    """Copies of bundled clips under ODD_NAMES, plus a symlink loop and a name too long (neither resolvable)."""
    folder.mkdir(parents=True, exist_ok=True)
    clips = []
    for name, (clip, sentence) in zip(ODD_NAMES, _bundled_clips(len(ODD_NAMES)), strict=True):
        shutil.copyfile(clip, folder / name)
        clips.append((folder / name, sentence))
    os.symlink("loop-b.mp3", folder / "loop-a.mp3")
    os.symlink("loop-a.mp3", folder / "loop-b.mp3")
    return clips


def _tiny_model_folder(folder: Path, sentences: list[str]) -> Path:
    """An exported-style HF folder of a random tiny model whose vocabulary covers ``sentences``."""
    normalizer = TextNormalizer()
    vocab = Vocabulary.build(normalizer(s) for s in sentences)
    torch.manual_seed(0)
    config = Wav2Vec2Config.preset("tiny", vocab_size=len(vocab), pad_token_id=vocab.pad_id)
    write_hf_folder(Recognizer(Wav2Vec2CTC(config), vocab, normalizer), folder)
    return folder


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# --- item 3: paths of any characters round-trip ----------------------------------------------------------------


def test_escaped_fields_round_trip_every_odd_character() -> None:
    from ptasr.data.cache import escape_field, unescape_field

    for name in [*ODD_NAMES, "\\n", "\\\\t", "a\\", "\t\n\r\\"]:
        field = escape_field(name)
        assert not {"\t", "\n", "\r"} & set(field) and unescape_field(field) == name


def test_a_newline_in_a_clip_path_round_trips_through_the_durations_cache(tmp_path: Path, monkeypatch) -> None:
    clips = _odd_folder(tmp_path / "clips")
    names = [path.name for path, _ in clips]
    first = HeaderDurationCache(tmp_path / "cache", tmp_path / "clips").durations(names)
    assert np.isfinite(first).all()
    # the next start reads every duration from the cache file, none from a header
    monkeypatch.setattr("ptasr.data.cache.audio_duration", lambda path: pytest.fail(f"header of {path} read again"))
    again = HeaderDurationCache(tmp_path / "cache", tmp_path / "clips")
    assert again.durations(names).tolist() == first.tolist()
    assert len(again.path.read_text(encoding="utf-8").splitlines()) == len(names)  # one line per clip


def test_a_cache_that_cannot_be_read_is_rebuilt_with_one_line(tmp_path: Path, caplog) -> None:
    clips = _odd_folder(tmp_path / "clips")
    names = [path.name for path, _ in clips]
    cache = HeaderDurationCache(tmp_path / "cache", tmp_path / "clips")
    expected = cache.durations(names)
    # what a ptasr that wrote raw newlines left behind, and a file cut short
    for damage in ("new\nline.mp3\t32044\t1796\t3.5\n", "a.mp3\t12\t34\tnot-a-num"):
        cache.path.write_text(damage, encoding="utf-8")
        caplog.clear()
        with caplog.at_level(logging.INFO):
            assert cache.durations(names).tolist() == expected.tolist()
        [warning] = [r.message for r in caplog.records if r.levelno >= logging.WARNING]
        assert warning.startswith(f"cache {cache.path} cannot be read (") and warning.endswith("); rebuilding it")
        assert HeaderDurationCache(tmp_path / "cache", tmp_path / "clips")._load().keys() == set(names)


def test_a_manifest_with_odd_names_trains_and_its_npy_cache_is_rebuilt(tmp_path: Path, caplog) -> None:
    clips = _odd_folder(tmp_path / "audio")
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(json.dumps({"path": f"audio/{p.name}", "text": s}) + "\n" for p, s in clips),
                        encoding="utf-8")
    reports = []
    for _ in range(2):  # the second start reads the caches the first one wrote
        source = ManifestFile(manifest)
        kept, report = filter_manifest(source, source.read_split("", TextNormalizer()), FilterSettings(), "train")
        reports.append(str(report))
    assert reports[0] == reports[1] == f"train: kept {len(clips)} of {len(clips)} clips; removed: none"
    assert kept.keys == [str(p) for p, _ in clips]
    [npy] = (tmp_path / "cache" / "durations").glob("manifest-*.npy")
    npy.write_bytes(npy.read_bytes()[:40])  # cut short
    caplog.clear()
    source = ManifestFile(manifest)
    kept, _ = filter_manifest(source, source.read_split("", TextNormalizer()), FilterSettings(), "train")
    assert len(kept) == len(clips) and np.load(npy).shape == (len(clips),)  # rebuilt
    assert sum("cannot be read" in r.message for r in caplog.records) == 1


# --- item 5: a clip path that cannot be resolved is skipped, counted, and its reason named ---------------------


def test_unresolvable_clip_paths_are_unreadable_clips_with_their_reason(tmp_path: Path, caplog) -> None:
    clips = _odd_folder(tmp_path / "audio")
    long_name = "x" * 300 + ".mp3"  # over NAME_MAX: ENAMETOOLONG
    rows = [(f"audio/{p.name}", s) for p, s in clips[:2]] + [("audio/loop-a.mp3", "o laço"), (f"audio/{long_name}", "longo")]
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(json.dumps({"path": p, "text": s}) + "\n" for p, s in rows), encoding="utf-8")
    source = ManifestFile(manifest)
    with caplog.at_level(logging.WARNING):
        kept, report = filter_manifest(source, source.read_split("", TextNormalizer()),
                                       FilterSettings(), "train", check_files=False)
    assert report.removed["unreadable audio header"] == 2 and len(kept) == 2
    messages = "\n".join(r.message for r in caplog.records)
    assert "loop-a.mp3: Too many levels of symbolic links" in messages and "File name too long" in messages
    # with its duration listed, the loop reaches the loader: skipped there, the reason named
    with pytest.raises(AudioDecodeError, match="cannot open .*loop-a.mp3: Too many levels of symbolic links"):
        load_audio(tmp_path / "audio" / "loop-a.mp3")


def test_a_fit_over_a_manifest_with_a_symlink_loop_runs_to_its_end(tmp_path: Path, caplog) -> None:
    from ptasr.train.cli import cli_main

    clips = _odd_folder(tmp_path / "audio")
    rows = [(f"audio/{p.name}", s) for p, s in clips] + [("audio/loop-a.mp3", "o laço")]
    for split in ("train", "val"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps({"path": p, "text": s}) + "\n" for p, s in rows),
                                                 encoding="utf-8")
    caplog.set_level(logging.INFO)
    cli = cli_main(["fit", f"--data.train={tmp_path / 'train.jsonl'}",
                    f"--data.val={tmp_path / 'val.jsonl'}", "--data.filters.leakage=ignore",
                    f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}", "--trainer.max_steps=2",
                    "--data.loading.num_workers=0", "--data.batching.batch_size=4", "--data.batching.eval_batch_size=4",
                    "--trainer.enable_model_summary=false", "--model.schedule=linear", "--model.warmup_steps=1",
                    *SMALL_MODEL])
    assert cli.trainer.global_step == 2
    report = next(line for line in caplog.text.splitlines() if "[data] train <-" in line)
    assert "1 unreadable audio header" in report, report
    assert "loop-a.mp3: Too many levels of symbolic links" in caplog.text


def test_transcribe_skips_an_unresolvable_path_with_its_reason_and_escapes_odd_names(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ptasr.data.cache import unescape_field

    clips = _odd_folder(tmp_path / "audio")
    model = _tiny_model_folder(tmp_path / "model", [s for _, s in clips])
    (tmp_path / "long").mkdir()
    too_long = tmp_path / "long" / ("y" * 300 + ".wav")
    code = main(["transcribe", str(model), str(clips[0][0]), str(tmp_path / "audio" / "loop-a.mp3"), str(too_long),
                 str(tmp_path / "audio"), "--device", "cpu", "--dtype", "float32"])
    out, err = capsys.readouterr()
    assert code == 1  # some inputs were skipped
    # every clip named once per line, the odd characters escaped: the output is one line per clip
    sources = [line.split("\t")[0] for line in out.splitlines()]
    assert sorted(map(unescape_field, sources)) == sorted([str(clips[0][0])] + [str(p) for p, _ in clips])
    skipped = [line for line in err.splitlines() if line.startswith("ptasr transcribe: skipped")]
    assert len(skipped) == 4, err  # the loop given, the name too long, and both ends of the loop in the folder
    assert sum("Too many levels of symbolic links" in line for line in skipped) == 3
    assert any("File name too long" in line for line in skipped)


# --- item 6: an optional cache is never fatal -------------------------------------------------------------------


def test_an_unwritable_cache_folder_is_skipped_with_one_line(tmp_path: Path, monkeypatch, caplog) -> None:
    clips = _odd_folder(tmp_path / "audio")
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(json.dumps({"path": f"audio/{p.name}", "text": s}) + "\n" for p, s in clips),
                        encoding="utf-8")
    (tmp_path / "a-file").write_text("not a folder\n", encoding="utf-8")
    for cache_dir, patch in ((tmp_path / "a-file" / "cache", None), (tmp_path / "full", "np.save"),
                             (tmp_path / "full2", "write_text")):
        if patch == "np.save":  # a full disk while writing the .npy
            monkeypatch.setattr(np, "save", _raise(errno.ENOSPC))
        elif patch == "write_text":
            monkeypatch.setattr(Path, "write_text", _raise(errno.ENOSPC))
        monkeypatch.setattr("ptasr.data.cache._unwritable", set(), raising=False)
        caplog.clear()
        source = ManifestFile(manifest, cache_dir)
        with caplog.at_level(logging.INFO):
            kept, report = filter_manifest(source, source.read_split("", TextNormalizer()), FilterSettings(), "train")
        assert len(kept) == len(clips), report
        warnings = [r.message for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1 and warnings[0].startswith("cannot write the cache "), warnings
        assert ("No space left on device" in warnings[0]) == (patch is not None)
        assert not list(tmp_path.rglob("*.tmp*"))  # no half-written file left
        monkeypatch.undo()
        monkeypatch.setenv("PTASR_CACHE", str(tmp_path / "cache"))


def _raise(code: int):
    def write(*args, **kwargs):
        raise OSError(code, os.strerror(code))
    return write


def test_a_fit_with_home_under_a_file_says_one_line_about_the_cache(tmp_path: Path) -> None:
    clips = _odd_folder(tmp_path / "audio")
    rows = "".join(json.dumps({"path": f"audio/{p.name}", "text": s}) + "\n" for p, s in clips)
    for split in ("train", "val"):
        (tmp_path / f"{split}.jsonl").write_text(rows, encoding="utf-8")
    (tmp_path / "home").write_text("a file, so nothing can be made under it\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("PTASR_CACHE", "XDG_CACHE_HOME")}
    env.update(HOME=str(tmp_path / "home" / "user"), PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "fit", f"--data.train={tmp_path / 'train.jsonl'}",
         f"--data.val={tmp_path / 'val.jsonl'}", "--data.filters.leakage=ignore",
         f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}", "--trainer.max_steps=1",
         "--data.loading.num_workers=0", "--data.batching.batch_size=4", "--trainer.enable_model_summary=false",
         "--model.schedule=linear", "--model.warmup_steps=1", *SMALL_MODEL],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=HANG_S)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if "cache" in line.lower()]
    assert len(lines) == 1 and "cannot write the cache" in lines[0] and "Not a directory" in lines[0], lines


# --- item 8: export writes whole or not at all ------------------------------------------------------------------


@pytest.fixture
def model_folder(tmp_path: Path) -> Path:
    return _tiny_model_folder(tmp_path / "model", [s for _, s in _bundled_clips(4)])


def test_an_export_that_fails_on_a_full_disk_leaves_nothing(model_folder: Path, tmp_path: Path, monkeypatch,
                                                            capsys) -> None:
    target = tmp_path / "out" / "exported"
    monkeypatch.setattr("ptasr.model.convert.save_file", _raise(errno.ENOSPC))  # after config.json, before weights
    assert main(["export", str(model_folder), str(target)]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"ptasr export: error: cannot write {target}: No space left on device (it needs about ")
    assert "MB free there" in error and len(error.splitlines()) == 1
    assert list((tmp_path / "out").iterdir()) == []  # no target, no staging folder
    monkeypatch.undo()
    assert main(["export", str(model_folder), str(target)]) == 0  # a rerun needs no --overwrite
    assert (target / "model.safetensors").is_file() and (target / "config.json").is_file()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["exported"]


def test_a_failed_overwrite_leaves_the_previous_export_intact(model_folder: Path, tmp_path: Path, monkeypatch,
                                                              capsys) -> None:
    target = tmp_path / "exported"
    assert main(["export", str(model_folder), str(target), "--language", "pt"]) == 0
    (target / "notes.txt").write_text("mine\n", encoding="utf-8")
    before = _digests(target)
    for step in ("ptasr.export.hf_folder.write_json", "ptasr.export.onnx.export_onnx"):  # early, and the ONNX part last
        monkeypatch.setattr(step, _raise(errno.ENOSPC))
        assert main(["export", str(model_folder), str(target), "--overwrite", "--onnx"]) == 1
        assert "No space left on device" in capsys.readouterr().err
        assert _digests(target) == before and not list(target.glob(".*"))
        monkeypatch.undo()
    # and a complete overwrite replaces the export's files, keeps the user's, and leaves no staging folder
    assert main(["export", str(target), str(target), "--overwrite", "--language", "pt"]) == 0
    after = _digests(target)
    assert after["notes.txt"] == before["notes.txt"] and set(after) == set(before)
    assert not list(target.glob(".*")) and not list(tmp_path.glob(".*"))


def test_an_export_into_a_path_under_a_file_is_one_line(model_folder: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "a-file").write_text("x\n", encoding="utf-8")
    assert main(["export", str(model_folder), str(tmp_path / "a-file" / "exported")]) == 1
    error = capsys.readouterr().err.strip()
    assert error == (f"ptasr export: error: cannot write {tmp_path / 'a-file' / 'exported'}: Not a directory; "
                     f"choose a folder you can write")


# --- item 7 (evaluate's side): all of evaluate's outputs where it was told, or none -------------------------------


@pytest.fixture
def eval_manifest(tmp_path: Path) -> Path:
    """A manifest of the odd-named clips, and the model folder beside it (``model/``)."""
    clips = _odd_folder(tmp_path / "audio")
    _tiny_model_folder(tmp_path / "model", [s for _, s in clips])
    manifest = tmp_path / "test.jsonl"
    manifest.write_text("".join(json.dumps({"path": f"audio/{p.name}", "text": s}) + "\n" for p, s in clips),
                        encoding="utf-8")
    return manifest


def _evaluate(manifest: Path, *args: str) -> int:
    return main(["evaluate", str(manifest.parent / "model"), "--data", str(manifest), "--device", "cpu",
                 "--dtype", "float32", *args])


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ptasr evaluate: error:")]
    assert len(lines) == 1
    return lines[0]


def test_evaluate_predictions_keep_odd_clip_names_one_row_each(eval_manifest: Path, tmp_path: Path) -> None:
    assert _evaluate(eval_manifest, "--output-dir", str(tmp_path / "out")) == 0
    [predictions] = (tmp_path / "out").glob("*_predictions.tsv")
    rows = predictions.read_text(encoding="utf-8").split("\n")[1:-1]
    # id, word_errors, reference_words, reference, prediction, confidence
    assert len(rows) == len(ODD_NAMES) and all(len(row.split("\t")) == 6 for row in rows), rows
    from ptasr.data.cache import unescape_field

    assert sorted(unescape_field(row.split("\t")[0]) for row in rows) == sorted(
        str(tmp_path / "audio" / name) for name in ODD_NAMES)


def test_evaluate_into_a_folder_that_cannot_be_written_writes_nothing(eval_manifest: Path, tmp_path: Path,
                                                                      monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)  # the default --output-dir
    (tmp_path / "a-file").write_text("x\n", encoding="utf-8")
    before = sorted(p.name for p in tmp_path.iterdir())
    monkeypatch.setattr("ptasr.evaluation.evaluate.evaluate", lambda *a, **k: pytest.fail("the model ran"))
    for args, named in ((["--report", str(tmp_path / "a-file" / "report")], tmp_path / "a-file" / "report"),
                        (["--output-dir", str(tmp_path / "a-file" / "out")], tmp_path / "a-file" / "out")):
        assert _evaluate(eval_manifest, *args) == 1
        assert _error_line(capsys) == (f"ptasr evaluate: error: cannot write {named}: Not a directory; choose a "
                                       f"folder you can write")
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # no results files in the current folder


@pytest.mark.parametrize("full", ["report audio", "results json"])
def test_a_full_disk_while_evaluate_writes_leaves_none_of_its_outputs(full: str, eval_manifest: Path, tmp_path: Path,
                                                                     monkeypatch, capsys) -> None:
    out, report = tmp_path / "out", tmp_path / "report"
    if full == "report audio":
        monkeypatch.setattr("ptasr.evaluation.report.copy_playable", _raise(errno.ENOSPC))
        named = report
    else:
        real_write_text = Path.write_text

        def write_text(self: Path, *args, **kwargs):
            if self.name.endswith(".json") or ".json." in self.name:  # the file, or a temporary name of it
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
            return real_write_text(self, *args, **kwargs)

        monkeypatch.setattr(Path, "write_text", write_text)
        named = out / "*_eval_results.json"
    assert _evaluate(eval_manifest, "--output-dir", str(out), "--report", str(report)) == 1
    error = _error_line(capsys)
    assert fnmatch.fnmatch(error, f"ptasr evaluate: error: cannot write {named}: No space left on device (*free "
                                  f"there); free some space or choose another folder"), error
    assert not report.exists() and list(out.iterdir()) == [] and not list(tmp_path.glob(".*"))
