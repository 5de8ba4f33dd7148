"""A first day with real recordings (#22): one reader with one set of rules for a file's rows, in fit and in
``ptasr evaluate``; one-line errors for files that are not UTF-8, for impossible durations and for a folder
listed as a clip; text defaults that keep words whole; results files that never replace another input's; the
evaluate help. Offline, CPU, WAV noise written here (the words need not be in it).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from ptasr.cli import main
from ptasr.data.commonvoice import CommonVoiceRelease
from ptasr.data.filters import FilterSettings, filter_manifest
from ptasr.data.manifests import ManifestFile
from ptasr.data.settings import LoadingSettings
from ptasr.data.testing import make_corpus
from ptasr.data.text import TextNormalizer, Vocabulary
from ptasr.errors import DataError
from ptasr.evaluation.evaluate import evaluate, load_eval_set

NO_WORKERS = LoadingSettings(num_workers=0)

SENTENCES = ["o gato dorme no sofá", "a casa é azul", "chove muito hoje"]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PTASR_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def clips(tmp_path: Path) -> Path:
    """``tmp_path/clips/{0,1,2}.wav``: a second of noise each."""
    rng = np.random.default_rng(0)
    (tmp_path / "clips").mkdir()
    for i in range(len(SENTENCES)):
        sf.write(tmp_path / "clips" / f"{i}.wav", 0.1 * rng.standard_normal(16_000).astype(np.float32), 16_000)
    return tmp_path


def _write(path: Path, header: list[str], rows: list[list[str]], delimiter: str = "\t") -> Path:
    path.write_text("\n".join(delimiter.join(row) for row in [header, *rows]) + "\n", encoding="utf-8")
    return path


def _recognizer():
    from ptasr.model.config import Wav2Vec2Config
    from ptasr.model.wav2vec2 import Wav2Vec2CTC
    from ptasr.recognition.recognizer import Recognizer

    torch.manual_seed(0)
    vocab = Vocabulary.build(SENTENCES)
    model = Wav2Vec2CTC(Wav2Vec2Config.preset("tiny", vocab_size=len(vocab), pad_token_id=vocab.pad_id))
    return Recognizer(model, vocab, TextNormalizer())


# --- a. one reader: a TSV is a manifest unless its columns are Common Voice's ----------------------------------


@pytest.mark.parametrize("header", [["audio", "sentence"], ["path", "text"], ["path", "sentence"]])
def test_a_manifest_tsv_reads_alike_in_fit_and_evaluate(clips: Path, header: list[str]) -> None:
    # clips/ lies beside the TSV, as in a release: still a manifest, its paths start at its folder
    tsv = _write(clips / "mine.tsv", header, [[f"clips/{i}.wav", s] for i, s in enumerate(SENTENCES)])
    training = ManifestFile(tsv).read_split("", TextNormalizer())
    data = load_eval_set(str(tsv), "test", TextNormalizer())
    assert training.keys == [str(clips / "clips" / f"{i}.wav") for i in range(3)]
    assert data.audio == training.keys and data.references == training.texts == SENTENCES
    from ptasr.data.sources import DataSource, open_source  # the one function both sides call

    source, splits = open_source(DataSource(str(tsv)), "val")
    assert isinstance(source, ManifestFile) and splits == [""]


def test_a_common_voice_split_is_recognised_by_its_columns_in_fit_too(tmp_path: Path) -> None:
    from ptasr.data import SpeechDataModule
    from ptasr.data.sources import DataSource, open_source  # the one function both sides call

    corpus = make_corpus(tmp_path / "cv", {"train": 4, "dev": 2, "test": 3})
    test_tsv = corpus.root / "test.tsv"
    # data.val given a release's split TSV reads its clips from clips/, as evaluate --data does
    dm = SpeechDataModule([DataSource(str(corpus.root), splits=["train"])], str(test_tsv), loading=NO_WORKERS)
    dm.setup("validate")
    data = load_eval_set(str(test_tsv), "dev", dm.normalizer)
    assert len(dm._manifests["val"]) == 3 and data.split == "test"
    assert sorted(dm._manifests["val"].texts) == sorted(data.references)
    source, splits = open_source(DataSource(str(test_tsv)), "val")
    assert isinstance(source, CommonVoiceRelease) and splits == ["test"]


# --- b. not UTF-8: one line naming the file, the line, the byte and the fix ----------------------------------


@pytest.mark.parametrize("name", ["latin.csv", "latin.tsv", "latin.jsonl", "test.tsv"])
def test_b_latin1_manifest_is_one_line_in_fit_and_evaluate(clips: Path, name: str) -> None:
    from ptasr.data import SpeechDataModule

    path = clips / name
    if name == "latin.jsonl":
        text = "".join(json.dumps({"path": f"clips/{i}.wav", "text": s}, ensure_ascii=False) + "\n"
                       for i, s in enumerate(SENTENCES))
    elif name == "test.tsv":  # a Common Voice split
        text = "client_id\tpath\tsentence\tup_votes\tdown_votes\n" + "".join(
            f"c\t{i}.wav\t{s}\t2\t0\n" for i, s in enumerate(SENTENCES))
    else:
        sep = "," if name.endswith(".csv") else "\t"
        text = f"path{sep}text\n" + "".join(f"clips/{i}.wav{sep}{s}\n" for i, s in enumerate(SENTENCES))
    path.write_bytes(text.encode("latin-1"))  # "sofá": 0xe1 on the first row's line
    byte = text.encode("latin-1").index(b"\xe1") + 1
    line = 1 if name.endswith(".jsonl") else 2  # JSON lines have no header line
    expected = f"{path} line {line} (byte {byte}, 0xe1) is not UTF-8; save it as UTF-8, e.g. from Latin-1: iconv -f latin1"
    with pytest.raises(DataError, match=r"^" + expected.replace("(", r"\(").replace(")", r"\)")):
        load_eval_set(str(path), "test", TextNormalizer())
    with pytest.raises(DataError, match="is not UTF-8"):
        SpeechDataModule(str(path), str(path), loading=NO_WORKERS).vocab  # noqa: B018


def test_b_latin1_is_one_line_from_the_command_line(clips: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = clips / "latin.csv"
    path.write_bytes("path,text\nclips/0.wav,sofá\n".encode("latin-1"))
    from test_cli import write_checkpoint

    checkpoint = write_checkpoint(clips / "m.ckpt", Vocabulary.build(SENTENCES))
    assert main(["evaluate", str(checkpoint), "--data", str(path), "--output-dir", str(clips / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "UnicodeDecodeError" not in err
    assert f"{path} line 2" in err and "iconv -f latin1 -t utf-8" in err


# --- d. impossible durations: refused in one line, in fit and in evaluate --------------------------------------


@pytest.mark.parametrize("value", ["-3", "0", "nan", "1e9", "inf"])
def test_d_impossible_duration_names_the_file_line_and_value(clips: Path, value: str) -> None:
    from ptasr.data import SpeechDataModule

    rows = [[f"clips/{i}.wav", s, "1.0"] for i, s in enumerate(SENTENCES)]
    rows[1][2] = value
    path = _write(clips / "d.csv", ["path", "text", "duration"], rows, delimiter=",")
    with pytest.raises(DataError, match=rf"^{path} line 3: duration '{value}' is not a possible clip length .*drop "
                                        r"the duration column"):
        load_eval_set(str(path), "test", TextNormalizer())
    with pytest.raises(DataError, match=rf"{path} line 3: duration '{value}'"):
        SpeechDataModule(str(path), str(path), loading=NO_WORKERS).setup("fit")


def test_d_no_clips_left_names_the_sources_readably(clips: Path) -> None:
    from ptasr.data import SpeechDataModule

    path = _write(clips / "ok.csv", ["path", "text", "duration"],
                  [[f"clips/{i}.wav", s, "1.0"] for i, s in enumerate(SENTENCES)], delimiter=",")
    dm = SpeechDataModule(str(path), str(path), filters=FilterSettings(max_duration=0.5), loading=NO_WORKERS)
    with pytest.raises(DataError, match=rf"no train clips left after filtering ok \({path}\); see the counts") as error:
        dm.setup("fit")
    assert "ManifestFile(" not in str(error.value) and "[(" not in str(error.value)


# --- h. a folder listed as a clip: said so, skipped and counted, in fit and in evaluate -----------------------


def test_h_a_directory_listed_as_a_clip(clips: Path, caplog: pytest.LogCaptureFixture) -> None:
    (clips / "clips" / "sub").mkdir()
    path = _write(clips / "h.tsv", ["path", "text"],
                  [["clips/0.wav", SENTENCES[0]], ["clips/sub", SENTENCES[1]], ["clips/2.wav", SENTENCES[2]]])
    manifest_file = ManifestFile(path)
    with caplog.at_level(logging.WARNING):
        kept, report = filter_manifest(manifest_file, manifest_file.read_split("", TextNormalizer()),
                                       FilterSettings(), "h")
    assert len(kept) == 2 and report.removed["unreadable audio header"] == 1
    assert f"{clips / 'clips' / 'sub'} is a directory, not an audio file" in caplog.text
    assert "Format not recognised" not in caplog.text
    evaluation = evaluate(_recognizer(), load_eval_set(str(path), "test", TextNormalizer()))
    assert evaluation.skipped == [f"{clips / 'clips' / 'sub'}: {clips / 'clips' / 'sub'} is a directory, not an "
                                  f"audio file"]
    assert len(evaluation.scored) == 2


# --- g. text defaults that keep words whole; advice that keeps labels and audio in agreement ------------------


def test_g_default_normaliser_keeps_words_whole_in_several_languages() -> None:
    from ptasr.data import SpeechDataModule

    normalize = SpeechDataModule(loading=NO_WORKERS).normalizer
    cases = {
        "O primeiro-ministro chegou em 300 a.C., disse ele.": "o primeiro-ministro chegou em 300 a c disse ele",  # pt
        "¿Qué tal? Los EE.UU. y el franco-alemán.": "qué tal los ee uu y el franco-alemán",  # es
        "« Aujourd'hui, l’eau est peut-être froide », dit M. Dupont.":
            "aujourd'hui l’eau est peut-être froide dit m dupont",  # fr
        "Don't go to the U.S. — it's well-known.": "don't go to the u s it's well-known",  # en
        "„Hallo“, sagte er z.B. in Baden-Württemberg.": "hallo sagte er z b in baden-württemberg",  # de
        "L'home va al col·legi: és a l'escola!": "l'home va al col·legi és a l'escola",  # ca
    }
    assert {text: normalize(text) for text in cases} == cases


def test_g_reference_configs_keep_the_reference_text_rules() -> None:
    from ptasr.train.cli import CONFIG_DIR, cli_main

    # the demo's vocabulary and figures were made with the reference's rules ("guarda-chuva" -> "guardachuva")
    cli = cli_main(["-c", str(CONFIG_DIR / "demo.yaml"), "--trainer.logger", "false"], run=False)
    assert cli.datamodule.normalizer.to_dict() == TextNormalizer().to_dict()
    assert cli.datamodule.normalizer("Eles levam um guarda-chuva…") == "eles levam um guardachuva"


# --- l. results files never replace another input's ------------------------------------------------------------


def test_l_results_of_two_inputs_never_share_files(clips: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from test_cli import write_checkpoint

    checkpoint = write_checkpoint(clips / "m.ckpt", Vocabulary.build(SENTENCES))
    rows = [[f"clips/{i}.wav", s] for i, s in enumerate(SENTENCES)]
    _write(clips / "a.csv", ["path", "text"], rows, delimiter=",")
    (clips / "a.jsonl").write_text("".join(json.dumps({"path": p, "text": t}) + "\n" for p, t in rows[:2]),
                                   encoding="utf-8")
    out = clips / "out"
    for name in ("a.csv", "a.jsonl"):
        assert main(["evaluate", str(checkpoint), "--data", str(clips / name), "--output-dir", str(out)]) == 0
    csv_results = json.loads((out / "a_csv_eval_results.json").read_text(encoding="utf-8"))
    jsonl_results = json.loads((out / "a_jsonl_eval_results.json").read_text(encoding="utf-8"))
    assert (csv_results["utterances"], jsonl_results["utterances"]) == (3, 2)
    assert len((out / "a_csv_predictions.tsv").read_text(encoding="utf-8").splitlines()) == 4
    # another folder's a.csv would take the same names: refused in one line before any work, files intact
    (clips / "other").mkdir()
    _write(clips / "other" / "a.csv", ["path", "text"], [[f"../clips/{i}.wav", s] for i, s in enumerate(SENTENCES)],
           delimiter=",")
    capsys.readouterr()
    assert main(["evaluate", str(checkpoint), "--data", str(clips / "other" / "a.csv"), "--output-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"holds the results of {clips / 'a.csv'}" in err and "--output-dir" in err
    assert json.loads((out / "a_csv_eval_results.json").read_text(encoding="utf-8")) == csv_results
    # the same input again (another model, say) replaces its own files, as before
    assert main(["evaluate", str(checkpoint), "--data", str(clips / "a.csv"), "--output-dir", str(out)]) == 0


# --- m. the help says what --data takes and where tuned weights live -------------------------------------------


def test_m_evaluate_help_names_what_data_takes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "LM.json" not in text and "lm.arpa.json" in text
    assert "manifest of your own recordings" in text and "client_id, path, sentence, up_votes, down_votes" in text
    assert main(["--help"]) == 0
    top = " ".join(capsys.readouterr().out.split())
    assert "Common Voice split or TSV" not in top and "a manifest of your own recordings" in top


def test_b_latin1_text_for_an_lm_is_one_line(tmp_path: Path) -> None:
    from ptasr.decoding.ngram import read_sentences

    for name in ("sentences.txt", "train.csv"):
        (tmp_path / name).write_bytes("text\no gato dorme no sofá\n".encode("latin-1"))
        with pytest.raises(DataError, match=f"{tmp_path / name} line 2 .*iconv -f latin1 -t utf-8"):
            read_sentences(tmp_path / name)
