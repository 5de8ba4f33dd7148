"""Your own recordings and several corpora: manifest files, audio formats, sources with weights, the alphabet
table, the dev/test notice, CTC feasibility on the decoded length, the largest batch first. Offline, CPU.

Recordings are made here: espeak-ng speech (a bundled clip's where espeak-ng is missing) written as WAV at
8, 22.05 and 44.1 kHz, stereo FLAC, Ogg Opus and stereo Ogg Vorbis.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from ptasr.data.dataset import ClipDataset, collate_clips
from ptasr.data.filters import FilterSettings, filter_manifest
from ptasr.data.manifests import ManifestFile
from ptasr.data.settings import BatchSettings, LoadingSettings
from ptasr.data.sources import DataSource
from ptasr.data.table import Manifest
from ptasr.data.testing import make_corpus, make_recordings, write_manifest
from ptasr.data.text import WORD_INTERNAL_PUNCTUATION, AlphabetReport, TextNormalizer, Vocabulary

NO_WORKERS = LoadingSettings(num_workers=0)
SENTENCES = [
    "o gato dorme no sofá", "a casa é azul", "chove muito hoje", "bom dia a todos", "uma frase curta",
    "o rio corre para o mar", "as crianças brincam", "o pão está quente", "ela lê um livro", "nós vamos à praia",
    "o céu está limpo", "ele canta bem", "a porta está aberta", "o café é forte", "a lua brilha",
    "eu gosto de música",
]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PTASR_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    """16 clips in six formats in ``folder/audio``; train (12), val (4) manifests are written by the tests."""
    folder = tmp_path_factory.mktemp("mine")
    return folder, make_recordings(folder, SENTENCES)


# --------------------------------------------------------------------------------------------------------
# Reading manifests
# --------------------------------------------------------------------------------------------------------


def test_manifest_formats_and_column_names_read_alike(recordings, tmp_path):
    folder, recs = recordings
    normalizer = TextNormalizer()
    read = {}
    for name, audio, text in (("a.csv", "path", "text"), ("b.tsv", "audio", "sentence"),
                              ("c.jsonl", "file", "transcript")):
        write_manifest(folder / name, recs[:4], audio_column=audio, text_column=text)
        read[name] = ManifestFile(folder / name).read_split("", normalizer)
    first = read["a.csv"]
    assert first.keys == [str(folder / r.path) for r in recs[:4]]  # relative to the manifest's folder
    assert first.texts == [normalizer(r.text) for r in recs[:4]] and first.client_ids == ["me"] * 4
    np.testing.assert_allclose(first.durations, [round(r.duration, 3) for r in recs[:4]])
    for other in read.values():
        assert (other.keys, other.texts, other.client_ids) == (first.keys, first.texts, first.client_ids)
        np.testing.assert_allclose(other.durations, first.durations)
    (tmp_path / "bad.csv").write_text("file_name,words\nx.wav,hello\n")
    with pytest.raises(ValueError, match="no path column .*path/audio/file.*'file_name', 'words'"):
        ManifestFile(tmp_path / "bad.csv").read_split("", normalizer)
    (tmp_path / "bad.txt").write_text("path,text\n")
    with pytest.raises(ValueError, match="must end in .csv, .tsv, .jsonl"):
        ManifestFile(tmp_path / "bad.txt")


def test_csv_quotes_and_absolute_paths(recordings, tmp_path):
    folder, recs = recordings
    absolute = folder / recs[0].path
    (tmp_path / "q.csv").write_text(f'path,text\n{absolute},"Olá, disse ele ""bom dia"""\n', encoding="utf-8")
    rows = ManifestFile(tmp_path / "q.csv").read_split("", TextNormalizer())
    assert rows.keys == [str(absolute)] and rows.texts == ["olá disse ele bom dia"]
    assert np.isnan(rows.durations).all()  # no duration column: read from the header at filtering


def test_every_format_decodes_and_header_durations_are_cached(recordings, monkeypatch):
    folder, recs = recordings
    write_manifest(folder / "nodur.csv", recs, durations=False)
    source = ManifestFile(folder / "nodur.csv")
    manifest, report = filter_manifest(source, source.read_split("", TextNormalizer()), FilterSettings(), "x")
    assert report.kept == len(recs) == len(manifest)
    np.testing.assert_allclose(manifest.durations, [r.duration for r in recs], atol=2e-3)
    assert {(r.path.rsplit(".", 1)[1], r.sample_rate, r.channels) for r in recs} >= {
        ("wav", 8000, 1), ("wav", 22050, 1), ("wav", 44100, 1), ("flac", 32000, 2), ("opus", 48000, 1)}
    dataset = ClipDataset(manifest, Vocabulary.build(manifest.texts))
    for i, rec in enumerate(recs):
        example = dataset.load(i)
        assert example is not None and abs(len(example.waveform) / 16000 - rec.duration) < 0.01, rec
    # the second start reads no header: the durations come from the cache
    monkeypatch.setattr("ptasr.data.cache.audio_duration", lambda _: pytest.fail("header read again"))
    again, _ = filter_manifest(source, source.read_split("", TextNormalizer()), FilterSettings(), "x")
    np.testing.assert_allclose(again.durations, manifest.durations)


# --------------------------------------------------------------------------------------------------------
# The data module on manifests, and on several corpora
# --------------------------------------------------------------------------------------------------------


def _own_data(folder: Path, recs, tmp_path: Path) -> dict[str, str]:
    """train.csv (12 clips, one missing, one corrupt), val.jsonl (4 clips)."""
    train = list(recs[:12])
    (folder / "audio" / "corrupt.wav").write_bytes(b"not audio at all" * 100)
    bad = [type(recs[0])("audio/corrupt.wav", "um arquivo quebrado", 1.0, 16000, 1),
           type(recs[0])("audio/missing.wav", "um arquivo perdido", 1.0, 16000, 1)]
    write_manifest(folder / "train.csv", train + bad)
    write_manifest(folder / "val.jsonl", recs[12:], durations=False)
    return {"train": str(folder / "train.csv"), "val": str(folder / "val.jsonl")}


def test_datamodule_trains_on_manifests_with_the_same_filters(recordings, tmp_path, caplog):
    from ptasr.data import SpeechDataModule

    folder, recs = recordings
    paths = _own_data(folder, recs, tmp_path)
    dm = SpeechDataModule(paths["train"], paths["val"], batching=BatchSettings(batch_size=4, eval_batch_size=4),
                          loading=NO_WORKERS)
    assert set("".join(SENTENCES).replace(" ", "")) <= set(dm.vocab.tokens)  # one vocabulary over all
    with caplog.at_level(logging.INFO):
        dm.setup("fit")
    log = caplog.text
    # sources named readably (their name and path, not a Python repr)
    assert f"train <- train ({folder / 'train.csv'}): kept 13 of 14 clips; removed: 1 missing file" in log
    assert f"val <- val ({folder / 'val.jsonl'}): kept" in log and "ManifestFile(" not in log
    assert "alphabet:" in log
    # the test set defaults to the validation manifest here, and the notice says so once, with advice that fits
    # a manifest (it has no other split)
    assert log.count("is also a test set") == 1
    assert "unbiased one, set data.test to other clips" in log and "splits: [dev]" not in log
    batches = list(dm.train_dataloader())
    assert sum(b["num_skipped"] for b in batches) == 1  # the corrupt file: skipped, counted, not fatal
    assert sorted(i for b in batches for i in b["ids"]) == sorted(str(folder / r.path) for r in recs[:12])
    assert sum(len(b["ids"]) for b in dm.val_dataloader()) == 4


def test_datamodule_refuses_own_training_data_validated_on_the_demo_corpus(recordings, tmp_path):
    from ptasr.data import SpeechDataModule

    folder, recs = recordings
    paths = _own_data(folder, recs, tmp_path)
    with pytest.raises(ValueError, match="data.val is not set"):
        SpeechDataModule(paths["train"])
    with pytest.raises(ValueError, match="data.train is empty"):
        SpeechDataModule([], paths["val"])


def test_leakage_guard_covers_manifests(recordings, tmp_path):
    from ptasr.data import SpeechDataModule

    folder, recs = recordings
    write_manifest(folder / "t.csv", recs[:6])
    write_manifest(folder / "v.csv", recs[4:8])
    dm = SpeechDataModule(str(folder / "t.csv"), str(folder / "v.csv"), filters=FilterSettings(leakage="raise"),
                          loading=NO_WORKERS)
    with pytest.raises(ValueError, match="leakage: 2 of 4 validation"):
        dm.setup("fit")


def test_several_sources_one_vocabulary_weights_and_reports(recordings, tmp_path, caplog):
    from ptasr.data import SpeechDataModule
    folder, recs = recordings
    paths = _own_data(folder, recs, tmp_path)
    corpus = make_corpus(tmp_path / "cv", {"train": 10, "dev": 4, "test": 4})
    sources = [DataSource(str(corpus.root), splits=["train"]), DataSource(paths["train"], weight=2.0)]
    dm = SpeechDataModule(sources, [DataSource(str(corpus.root), splits=["dev"])],
                          batching=BatchSettings(batch_size=4, num_buckets=2), loading=NO_WORKERS)
    cv_text = [t for t in dm.rows("train", dm.parts("train")[0][0]).texts]
    mine = [TextNormalizer()(r.text) for r in recs[:12]]
    assert set("".join(cv_text + mine).replace(" ", "")) <= set(dm.vocab.tokens)
    with caplog.at_level(logging.INFO):
        dm.setup("fit")
    assert f"train <- cv_train ({corpus.root} train): kept" in caplog.text
    assert f"train <- train ({folder / 'train.csv'}): kept" in caplog.text
    assert f"val <- cv_dev ({corpus.root} dev): kept 4 of 4" in caplog.text
    counts: dict[str, int] = {}
    for epoch in range(2):
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            for clip in batch["ids"]:
                counts[clip] = counts.get(clip, 0) + 1
    # release clips once per epoch, manifest clips twice (weight 2); the corrupt one is never delivered
    assert {counts[c] for c in corpus.splits["train"]} == {2}
    assert {counts[str(folder / r.path)] for r in recs[:12]} == {4}
    assert len(loader) == len(dm.train_dataloader()) and len(counts) == 22


def test_several_sources_from_the_command_line_train(recordings, tmp_path):
    from helpers import SMALL_MODEL, SMALL_RUN

    from ptasr.train.cli import cli_main

    folder, recs = recordings
    paths = _own_data(folder, recs, tmp_path)
    corpus = make_corpus(tmp_path / "cv", {"train": 6, "dev": 2, "test": 2})
    sources = json.dumps([{"path": str(corpus.root), "splits": ["train"]}, {"path": paths["train"], "weight": 0.5}])
    cli = cli_main(["fit", f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}", *SMALL_MODEL, *SMALL_RUN,
                    f"--data.train={sources}", f"--data.val=[{{path: {corpus.root}, splits: [dev]}}]",
                    "--trainer.max_steps=3"])
    assert cli.trainer.global_step == 3
    run = tmp_path / "runs" / "demo" / "version_0"
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "vocab.json").is_file()


def test_fit_on_a_manifest_of_own_recordings(recordings, tmp_path):
    from helpers import SMALL_MODEL, SMALL_RUN

    from ptasr.evaluation.evaluate import load_eval_set
    from ptasr.train.cli import cli_main

    folder, recs = recordings
    paths = _own_data(folder, recs, tmp_path)
    cli = cli_main(["fit", f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}", *SMALL_MODEL, *SMALL_RUN,
                    f"--data.train={paths['train']}", f"--data.val={paths['val']}",
                    "--trainer.max_steps=4"])
    assert cli.trainer.global_step == 4 and "val/wer" in cli.trainer.callback_metrics
    # `ptasr evaluate --data` reads the same manifest
    data = load_eval_set(paths["val"], "test", TextNormalizer(), None)
    assert data.audio == [str(folder / r.path) for r in recs[12:]]
    assert data.references == [TextNormalizer()(r.text) for r in recs[12:]]
    # the model card names the manifests it trained and validated on, not the bundled corpus
    from ptasr.cli import main

    assert main(["export", str(Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt"), str(tmp_path / "hf")]) == 0
    card = (tmp_path / "hf" / "README.md").read_text(encoding="utf-8")
    assert f"trained with ptasr on {Path(paths['train']).name}." in card
    assert f"    dataset:\n      name: {Path(paths['val']).name}\n" in card and "cv-tiny-pt" not in card


# --------------------------------------------------------------------------------------------------------
# The alphabet, reported
# --------------------------------------------------------------------------------------------------------


def _report(texts, chars_to_ignore="", **kwargs):
    normalizer = TextNormalizer(chars_to_ignore, **kwargs)
    report = AlphabetReport.build([normalizer(t) for t in texts], chars_to_ignore)
    # the suggested value really removes every flagged punctuation mark, and nothing spoken (digits, symbols,
    # letters of another script stay: deleting them would make labels disagree with the audio)
    cleaned = TextNormalizer(report.suggested_chars_to_ignore, **kwargs)
    left = set("".join(cleaned(t) for t in texts))
    assert not {c for c in left if "P" in report.flags.get(c, "") and c not in WORD_INTERNAL_PUNCTUATION}
    assert not {c for c in report.suggested_chars_to_ignore if set(report.flags.get(c.lower(), "")) & set("SDX")}
    return report


def test_alphabet_flags_latin_punctuation_and_digits():
    texts = ["«Olá», disse ela. ¿Tens 12 anos?", "O preço é 5 € hoje"] * 400 + ["Adeus"]
    report = _report(texts, ",.")
    flags = report.flags
    assert report.script == "LATIN"
    assert "P" in flags["«"] and "P" in flags["»"] and "P" in flags["¿"] and "P" in flags["?"]
    assert "D" in flags["1"] and "D" in flags["5"] and "S" in flags["€"]
    assert flags["o"] == "" and flags["á"] == ""
    assert "R" in flags["u"] and "P" not in flags["u"]  # only in "Adeus": rare, not removed
    assert "u" not in report.suggested_chars_to_ignore and report.suggested_chars_to_ignore.startswith(",.")
    table = report.table()
    assert "data.text.chars_to_ignore:" in table and "strip_punctuation" in table and "«" in table
    # "tens 12 anos" must not become "tens anos" while the audio says "doze": spell out or leave out, with a count
    assert report.suggested_chars_to_ignore == ",.?«»¿" and report.spoken == 800
    assert "800 transcripts hold them" in table and "spell them out" in table


def test_alphabet_flags_latin_letters_in_a_cyrillic_corpus():
    texts = ["Привет мир", "это тест", "мы говорим по-русски"] * 10 + ["это OK"] * 12
    report = _report(texts)
    assert report.script == "CYRILLIC"
    assert "X" in report.flags["o"] and "X" in report.flags["k"] and report.flags["и"] == ""
    # "это OK" is spoken: deleting "ok" would leave a label the audio does not say; the advice counts them
    assert report.suggested_chars_to_ignore == "" and report.spoken == 12 and '(e.g. "это ok")' in report.table()
    assert "P" in report.flags["-"]  # "по-русски": flagged, but not advised away (that would join the words)


def test_alphabet_flags_the_devanagari_danda():
    texts = ["नमस्ते दुनिया।", "यह एक परीक्षण है।"] * 10
    report = _report(texts)
    assert report.script == "DEVANAGARI"
    assert "P" in report.flags["।"] and report.flags["न"] == "" and report.flags["\u094d"] == ""  # virama: a mark
    assert "◌्" in report.table()


def test_alphabet_flags_nothing_rare_in_a_tiny_corpus():
    report = _report(["o gato dorme", "a casa é azul"])  # 20 characters: every symbol is "rare"
    assert report.rare_below == 0 and not report.flagged
    # with something flagged, the legend says why nothing is rare rather than "R rare (fewer than 0)"
    table = _report(["o gato dorme", "ele tem 20 anos"]).table()
    assert "fewer than 0" not in table and "R rare" not in table and "none is flagged rare" in table
    assert "D digit" in table and "1 transcripts hold them" in table


def test_strip_punctuation_keeps_word_internal_apostrophes_and_hyphens():
    normalizer = TextNormalizer("", strip_punctuation=True)
    assert normalizer("«Olá!» ¿Qué tal? d'água, guarda-chuva — fim।") == "olá qué tal d'água guarda-chuva fim"
    assert normalizer("'citação' -x- a—b") == "citação x a b"
    assert TextNormalizer.from_dict(normalizer.to_dict()).strip_punctuation
    assert "strip_punctuation" not in TextNormalizer().to_dict()  # old normalizer.json files stay equal


# --------------------------------------------------------------------------------------------------------
# Validation on test, said once; the largest batch first; CTC feasibility on the decoded length
# --------------------------------------------------------------------------------------------------------


def test_validation_on_the_test_split_is_said_once(tmp_path, caplog):
    from ptasr.data import SpeechDataModule

    corpus = make_corpus(tmp_path / "cv", {"train": 6, "dev": 2, "test": 2})
    with caplog.at_level(logging.INFO):
        train = [DataSource(str(corpus.root), splits=["train"])]
        SpeechDataModule(train, str(corpus.root), loading=NO_WORKERS).setup("fit")
        assert caplog.text.count("is also a test set") == 1 and "splits: [dev] in data.val" in caplog.text
        caplog.clear()
        SpeechDataModule(train, [DataSource(str(corpus.root), splits=["dev"])], loading=NO_WORKERS).setup("fit")
        assert "also a test set" not in caplog.text


def test_first_training_and_validation_batches_are_the_largest():
    from ptasr.data import SpeechDataModule

    dm = SpeechDataModule(batching=BatchSettings(batch_size=None, max_batch_seconds=12.0, eval_batch_size=7),
                          loading=NO_WORKERS)
    dm.setup("fit")
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        for epoch in range(2):
            loader.sampler.set_epoch(epoch)
            sizes = [int(b["waveforms"].numel()) for b in loader]
            assert sizes[0] == max(sizes), (epoch, sizes[:5])


def test_a_clip_too_short_for_its_text_once_decoded_is_dropped_and_counted(tmp_path, caplog):
    import soundfile as sf

    # 0.5 s decode to 24 frames, the listed 0.54 s would give 26: the manifest filter passes 25 labels, and the
    # clip decodes to 0.93 of its listed length, above the truncation threshold (0.9)
    sf.write(tmp_path / "short.wav", np.random.default_rng(0).normal(0, 0.1, 8000), 16000)
    text = "abcdefghijklmnopqrstuvwxy"
    manifest = Manifest([str(tmp_path / "short.wav")] * 2, [str(tmp_path / "short.wav")] * 2, [text, "abc"],
                        ["", ""], ["", ""], ["", ""], ["", ""], reader=lambda key: key,
                        durations=np.array([0.54, 0.5]))
    from ptasr.data.filters import ctc_feasible

    assert ctc_feasible(manifest.texts, manifest.durations, FilterSettings()).all()  # the listed length passes
    dataset = ClipDataset(manifest, Vocabulary.build(manifest.texts))
    with caplog.at_level(logging.WARNING):
        batch = collate_clips(dataset[[0, 1]])
    assert batch["num_skipped"] == 1 and batch["texts"] == ["abc"]
    assert "CTC-infeasible" in caplog.text
    logits = torch.zeros(24, 1, len(dataset.vocab)).log_softmax(-1)
    labels = torch.tensor([dataset.vocab.encode(text)])
    loss = torch.nn.functional.ctc_loss(logits, labels, torch.tensor([24]), torch.tensor([25]),
                                        blank=dataset.vocab.pad_id)
    assert torch.isinf(loss)  # what the clip would have done to its batch with ctc_zero_infinity false


def test_a_hugging_face_dataset_as_one_of_several_sources(recordings, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    from ptasr.data import SpeechDataModule
    from ptasr.data.commonvoice import read_tsv
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    corpus = make_corpus(tmp_path / "cv", {"train": 4, "dev": 2, "test": 2})
    features = {"audio": {"_type": "Audio"}, "sentence": {"dtype": "string", "_type": "Value"}}
    (tmp_path / "hf_data" / "data").mkdir(parents=True)
    rows = read_tsv(corpus.root / "train.tsv")
    table = pa.table({"audio": [{"bytes": (corpus.root / "clips" / p).read_bytes(), "path": p} for p in rows["path"]],
                      "sentence": rows["sentence"]})
    table = table.replace_schema_metadata({b"huggingface": json.dumps({"info": {"features": features}})})
    pq.write_table(table, tmp_path / "hf_data" / "data" / "train-00000-of-00001.parquet")
    folder, recs = recordings
    write_manifest(folder / "few.csv", recs[:3])
    sources = [DataSource(str(tmp_path / "hf_data"), splits=["train"]), DataSource(str(folder / "few.csv"), weight=3.0)]
    dm = SpeechDataModule(sources, [DataSource(str(corpus.root), splits=["dev"])],
                          batching=BatchSettings(batch_size=4), loading=NO_WORKERS)
    dm.setup("fit")
    ids = [i for b in dm.train_dataloader() for i in b["ids"]]
    assert sorted(set(ids)) == sorted(corpus.splits["train"] + [str(folder / r.path) for r in recs[:3]])
    assert len(ids) == 4 + 3 * 3  # the HF rows once, the manifest's three times
