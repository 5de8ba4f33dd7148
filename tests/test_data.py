"""Data part: TSV parsing, text, filters, sampler, audio, loading, the data module. Offline, CPU, seconds."""

from __future__ import annotations

import csv
import json
import logging
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from ptasr.data import BUNDLED_CORPUS, TextNormalizer, Vocabulary
from ptasr.data.audio import AudioDecodeError, load_audio, resample
from ptasr.data.commonvoice import CommonVoiceRelease, read_clip_durations, read_tsv
from ptasr.data.dataset import ClipDataset, ClipLoader, collate_clips
from ptasr.data.filters import FilterSettings, build_manifest, check_leakage, ctc_feasible
from ptasr.data.huggingface import HFDatasetSource
from ptasr.data.sampler import BucketBatchSampler
from ptasr.data.settings import BatchSettings, LoadingSettings, TextSettings
from ptasr.data.sources import DataSource
from ptasr.data.testing import make_corpus
from ptasr.lengths import conv_output_lengths

KERNELS, STRIDES = (10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    # header-duration caches and extracted archives go to the test's folder, never ~/.cache
    monkeypatch.setenv("PTASR_CACHE", str(tmp_path / "cache"))


# --------------------------------------------------------------------------------------------------------
# TSV parsing
# --------------------------------------------------------------------------------------------------------

NO_WORKERS = LoadingSettings(num_workers=0)
OLD_HEADER = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccent\tlocale\tsegment"
V17_HEADER = ("client_id\tpath\tsentence_id\tsentence\tsentence_domain\tup_votes\tdown_votes\tage\tgender\taccents"
              "\tvariant\tlocale\tsegment")


@pytest.mark.parametrize("line_end", ["\n", "\r\n"])
def test_tsv_old_schema_keeps_unmatched_quotes(tmp_path, line_end):
    rows = [OLD_HEADER,
            'c1\ta.mp3\t"Olá, disse ela.\t2\t0\ttwenties\tfemale\tportugal\tpt\t',
            'c2\tb.mp3\tEle leu "Os Lusíadas" ontem.\t3\t0\t\t\t\tpt\t',
            "c3\tc.mp3\tSem aspas.\t2\t1\tthirties\tmale\tbrasil\tpt\t"]
    path = tmp_path / "train.tsv"
    path.write_bytes(line_end.join(rows + [""]).encode())
    table = read_tsv(path)
    # with the csv default (QUOTE_MINIMAL) row 1's quote would swallow everything up to row 2's quote
    assert table["sentence"] == ['"Olá, disse ela.', 'Ele leu "Os Lusíadas" ontem.', "Sem aspas."]
    assert table["path"] == ["a.mp3", "b.mp3", "c.mp3"]
    assert table["accent"] == ["portugal", "", "brasil"]
    assert table["age"] == ["twenties", "", "thirties"]
    assert all(not v.endswith("\r") for column in table.values() for v in column)


def test_tsv_v17_schema_by_header_name(tmp_path):
    path = tmp_path / "validated.tsv"
    path.write_text(V17_HEADER + "\n"
                    + "c1\tx.mp3\tabc123\tUma frase.\t\t2\t0\tfourties\tmale_masculine\tSão Paulo\t\tpt\t\n",
                    encoding="utf-8")
    table = read_tsv(path)
    assert table["sentence"] == ["Uma frase."]
    assert table["accent"] == ["São Paulo"]  # v17 calls it "accents"
    assert table["gender"] == ["male_masculine"]


def test_tsv_skips_malformed_rows_and_names_missing_columns(tmp_path, caplog):
    path = tmp_path / "train.tsv"
    path.write_text(OLD_HEADER + "\nc1\ta.mp3\tBoa.\t2\t0\t\t\t\tpt\t\nonly\tthree\tfields\n\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        assert read_tsv(path)["path"] == ["a.mp3"]
    assert "skipped 1 rows" in caplog.text
    bad = tmp_path / "bad.tsv"
    bad.write_text("client_id\tfile\ttext\nc\ta.mp3\tOi\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['path', 'sentence'\]"):
        read_tsv(bad)


def test_clip_durations_in_seconds(tmp_path):
    path = tmp_path / "clip_durations.tsv"
    path.write_text("clip\tduration[ms]\r\na.mp3\t1500\r\nb.mp3\t20001\r\n", encoding="utf-8")
    assert read_clip_durations(path) == {"a.mp3": 1.5, "b.mp3": 20.001}


@pytest.mark.parametrize("schema", ["old", "v17"])
def test_fixture_corpus_schemas_read_alike(tmp_path, schema):
    corpus = make_corpus(tmp_path / schema, schema=schema, crlf=True, defects=["quoted"])
    rows = CommonVoiceRelease(corpus.root).read_split("train", TextNormalizer())
    reference = read_tsv(Path(BUNDLED_CORPUS) / "train.tsv")
    assert rows.ids == reference["path"][:8]
    assert read_tsv(corpus.root / "train.tsv")["sentence"][0] == '"' + reference["sentence"][0]
    assert rows.texts[0] == TextNormalizer()(reference["sentence"][0])
    assert rows.accents == reference["accent"][:8]


# --------------------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------------------


def test_normalizer_reference_behaviour():
    normalize = TextNormalizer()
    assert normalize('"Olá", disse-me; ela: 100% “certo”… — ‘sim’ – não? ! �') == "olá disseme ela 100 certo sim não"
    decomposed = "ac\u0327a\u0303o"  # "ação" typed with combining marks
    assert normalize(decomposed) == "ação" and len(normalize(decomposed)) == 4
    assert normalize("  MUITO\t espaço \n") == "muito espaço"
    assert TextNormalizer(lowercase=False)("Olá") == "Olá"
    assert TextNormalizer(strip_accents=True)("Coração à ÉPOCA") == "coracao a epoca"
    assert TextNormalizer(chars_to_ignore="")("a-b, c.") == "a-b, c."


def test_normalizer_round_trip(tmp_path):
    normalizer = TextNormalizer(chars_to_ignore=",.", lowercase=False, strip_accents=True)
    assert TextNormalizer.from_dict(json.loads(json.dumps(normalizer.to_dict()))).to_dict() == normalizer.to_dict()
    normalizer.save(tmp_path)
    assert TextNormalizer.load(tmp_path)("Ação, já.") == normalizer("Ação, já.") == "Acao ja"


def _hf_reference_vocab(texts: list[str]) -> dict[str, int]:
    # run_speech_recognition_ctc.py's create_vocabulary_from_data, verbatim in effect
    vocab_list = sorted(set("".join(texts)))
    vocab_dict = {v: k for k, v in enumerate(vocab_list)}
    vocab_dict["|"] = vocab_dict[" "]
    del vocab_dict[" "]
    vocab_dict["[UNK]"] = len(vocab_dict)
    vocab_dict["[PAD]"] = len(vocab_dict)
    return vocab_dict


def test_vocabulary_matches_hf_script_and_round_trips(tmp_path):
    texts = [TextNormalizer()(s) for s in read_tsv(Path(BUNDLED_CORPUS) / "train.tsv")["sentence"]]
    vocab = Vocabulary.build(texts)
    path = vocab.save(tmp_path)
    assert json.loads(path.read_text(encoding="utf-8")) == _hf_reference_vocab(texts)
    assert vocab.pad_id == len(vocab) - 1 and vocab.tokens[-2:] == ["[UNK]", "[PAD]"] and vocab.tokens[0] == "|"
    assert Vocabulary.load(path) == vocab == Vocabulary.from_dict(json.loads(json.dumps(vocab.to_dict())))
    for text in texts[:50]:
        assert vocab.decode(vocab.encode(text)) == text
    assert vocab.encode("a@b") == [vocab.tokens.index("a"), vocab.unk_id, vocab.tokens.index("b")]
    assert vocab.unknown_chars(["a@b@", "ñ"]) == {"@": 2, "ñ": 1}


def test_vocabulary_agrees_with_transformers_tokenizer(tmp_path):
    transformers = pytest.importorskip("transformers")
    texts = ["olá mãe", "pão e água"]
    vocab = Vocabulary.build(texts)
    vocab.save(tmp_path)
    tokenizer = transformers.Wav2Vec2CTCTokenizer(str(tmp_path / "vocab.json"), unk_token="[UNK]", pad_token="[PAD]",
                                                  word_delimiter_token="|")
    assert tokenizer("pão mãe").input_ids == vocab.encode("pão mãe")
    assert tokenizer.pad_token_id == vocab.pad_id


def test_vocabulary_loads_hf_folders_with_other_special_names(tmp_path):
    (tmp_path / "vocab.json").write_text(json.dumps({"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, "E": 5}))
    vocab = Vocabulary.load(tmp_path)
    assert (vocab.pad_id, vocab.unk_id, vocab.encode("E E")) == (0, 3, [5, 4, 5])
    with pytest.raises(ValueError, match="add it to the normaliser's chars_to_ignore"):
        Vocabulary.build(["a|b"])


# --------------------------------------------------------------------------------------------------------
# Filters and leakage
# --------------------------------------------------------------------------------------------------------


def test_ctc_feasibility_counts_repeats():
    one_second = np.array([1.0, 1.0, 1.0])  # 16000 samples -> 49 frames
    assert conv_output_lengths(16000, KERNELS, STRIDES) == 49
    texts = ["a" * 25, "a" * 26, "ab" * 24 + "a"]  # 25 + 24 repeats = 49; 26 + 25 = 51; 49 labels, no repeats
    assert ctc_feasible(texts, one_second, FilterSettings()).tolist() == [True, False, True]


def test_filter_counts_with_clip_durations(tmp_path):
    corpus = make_corpus(tmp_path, clips_per_split={"train": 10, "dev": 2, "test": 2},
                         defects=["missing", "empty_text", "long", "corrupt", "truncated"])
    durations = read_clip_durations(corpus.root / "clip_durations.tsv")
    longest = max(durations[c] for c in corpus.splits["train"] if c not in corpus.defects.values())
    settings = FilterSettings(max_duration=longest - 0.001)  # drops exactly the longest healthy clip
    manifest, (report,) = build_manifest(CommonVoiceRelease(corpus.root), ["train"], TextNormalizer(), settings)
    assert report.removed == {"missing file": 1, "empty text": 1, "unreadable audio header": 0,
                              "outside duration bounds": 1, "CTC-infeasible": 1}
    assert report.total == 10 and report.kept == len(manifest) == 6
    # broken files keep their listed durations, so they pass setup and are caught while loading
    assert {corpus.defects["corrupt"], corpus.defects["truncated"]} <= set(manifest.ids)
    assert str(report) == ("train: kept 6 of 10 clips; removed: 1 missing file, 1 empty text, "
                           "1 outside duration bounds, 1 CTC-infeasible")


def test_header_durations_are_read_once_and_cached(tmp_path):
    corpus = make_corpus(tmp_path / "c", defects=["corrupt", "empty"], clip_durations=False)
    release = CommonVoiceRelease(corpus.root, cache_dir=tmp_path / "cache")
    manifest, (report,) = build_manifest(release, ["train"], TextNormalizer(), FilterSettings())
    assert report.removed["unreadable audio header"] == 2 and report.kept == 6
    listed = read_clip_durations(Path(BUNDLED_CORPUS) / "clip_durations.tsv")
    assert np.allclose(manifest.durations, [listed[c] for c in manifest.ids], atol=1e-3)
    cache_files = list((tmp_path / "cache" / "durations").iterdir())
    assert len(cache_files) == 1 and len(cache_files[0].read_text().splitlines()) == 8
    again, _ = build_manifest(release, ["train"], TextNormalizer(), FilterSettings())
    assert np.array_equal(again.durations, manifest.durations)


def test_leakage_guard(tmp_path, caplog):
    corpus = make_corpus(tmp_path)
    release = CommonVoiceRelease(corpus.root)
    train, _ = build_manifest(release, ["train", "dev"], TextNormalizer(), FilterSettings())
    dev, _ = build_manifest(release, ["dev"], TextNormalizer(), FilterSettings())
    test, _ = build_manifest(release, ["test"], TextNormalizer(), FilterSettings())
    assert check_leakage(train, test, "test") == (0, 0)
    with caplog.at_level(logging.WARNING):
        assert check_leakage(train, dev, "dev") == (2, 2)
    assert "leakage: 2 of 2 dev clips" in caplog.text
    with pytest.raises(ValueError, match="leakage"):
        check_leakage(train, dev, "dev", action="raise")


# --------------------------------------------------------------------------------------------------------
# Sampler
# --------------------------------------------------------------------------------------------------------


def _durations(n: int = 203, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.5, 12.0, n)


@pytest.mark.parametrize("mode", [dict(batch_size=8), dict(batch_size=None, max_batch_seconds=40.0),
                                  dict(batch_size=6, max_batch_seconds=30.0)])
@pytest.mark.parametrize("shuffle", [True, False])
def test_sampler_every_clip_once_within_budget(mode, shuffle):
    durations = _durations()
    sampler = BucketBatchSampler(durations, **mode, num_buckets=7, shuffle=shuffle, seed=3)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert sorted(i for b in batches for i in b) == list(range(len(durations)))
        for batch in batches:
            if mode["batch_size"] is not None:
                assert len(batch) <= mode["batch_size"]
            if mode.get("max_batch_seconds") and len(batch) > 1:
                assert len(batch) * durations[batch].max() <= mode["max_batch_seconds"]


def test_sampler_buckets_cut_padding():
    durations = _durations(1000)
    def padding(batches):
        return sum(len(b) * durations[b].max() - durations[b].sum() for b in batches) / durations.sum()
    bucketed = padding(list(BucketBatchSampler(durations, batch_size=16, num_buckets=20)))
    unbucketed = padding(list(BucketBatchSampler(durations, batch_size=16, num_buckets=1)))
    assert bucketed < 0.1 < unbucketed


def test_sampler_reshuffles_per_epoch_reproducibly():
    durations = _durations()
    a, b = BucketBatchSampler(durations, seed=7), BucketBatchSampler(durations, seed=7)
    epoch0 = list(a)
    a.set_epoch(1)
    epoch1 = list(a)
    assert epoch0 != epoch1 and len(epoch0) == len(epoch1)
    assert list(b) == epoch0
    assert list(BucketBatchSampler(durations, seed=8)) != epoch0
    evaluation = BucketBatchSampler(durations, batch_size=8, shuffle=False)
    first = list(evaluation)
    evaluation.set_epoch(5)
    assert list(evaluation) == first
    assert durations[first[0]].min() >= durations[first[-1]].max()  # longest first


@pytest.mark.parametrize("world", [2, 3, 4])
@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("mode", [dict(batch_size=16), dict(batch_size=None, max_batch_seconds=50.0)])
def test_sampler_ddp_shards_disjoint_equal_complete(world, shuffle, mode):
    durations = _durations(203)
    ranks = [BucketBatchSampler(durations, **mode, shuffle=shuffle, seed=1, num_replicas=world, rank=r)
             for r in range(world)]
    for sampler in ranks:
        sampler.set_epoch(2)
    shards = [list(s) for s in ranks]
    assert len({len(s) for s in shards} | {len(s) for s in ranks}) == 1  # equal counts, len() agrees
    clips = [i for shard in shards for batch in shard for i in batch]
    assert sorted(clips) == list(range(len(durations)))  # disjoint and complete: no clip repeated or lost


@pytest.mark.parametrize("world", [2, 4])
def test_sampler_ddp_ranks_take_one_bucket_per_step(world):
    # The ranks wait for each other at every step's all-reduce: their batches should be equally long.
    durations = _durations(1000)
    ranks = [BucketBatchSampler(durations, batch_size=8, num_buckets=10, seed=3, num_replicas=world, rank=r)
             for r in range(world)]
    bucket_of = {int(i): b for b, bucket in enumerate(ranks[0]._buckets) for i in bucket}
    steps = list(zip(*(list(sampler) for sampler in ranks)))
    mixed = [step for step in steps if len({bucket_of[batch[0]] for batch in step}) > 1]
    # only steps made of buckets' leftover batches (fewer than `world` in a bucket) may mix two buckets
    assert len(steps) > 25 and len(mixed) <= len(ranks[0]._buckets)
    for step in steps:
        assert all(len({bucket_of[i] for i in batch}) == 1 for batch in step)


def test_sampler_single_process_order_is_a_plain_shuffle_of_the_batches():
    durations = _durations(300)
    sampler = BucketBatchSampler(durations, batch_size=8, seed=5)
    sampler.set_epoch(1)
    rng = np.random.default_rng([5, 1])
    batches = []
    for bucket, sizes in zip(sampler._buckets, sampler._sizes):
        members, bounds = rng.permutation(bucket), np.cumsum([0] + sizes)
        batches += [members[a:b].tolist() for a, b in zip(bounds[:-1], bounds[1:])]
    shuffled = [batches[i] for i in rng.permutation(len(batches))]
    largest = max(shuffled, key=lambda b: len(b) * durations[b].max())
    assert list(sampler) == [largest] + [b for b in shuffled if b is not largest]  # the largest first, then as drawn


def _padded(durations, batch):
    return len(batch) * durations[batch].max() if batch else 0.0


@pytest.mark.parametrize("mode", [dict(batch_size=8), dict(batch_size=None, max_batch_seconds=40.0),
                                  dict(batch_size=6, max_batch_seconds=30.0)])
@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_sampler_first_batch_is_the_largest(mode, shuffle, world):
    # a batch that does not fit in memory should fail at the first step, not hours into the run
    durations = _durations(203)
    for epoch in range(3):
        shards = []
        for rank in range(world):
            sampler = BucketBatchSampler(durations, **mode, num_buckets=7, shuffle=shuffle, seed=epoch,
                                         num_replicas=world, rank=rank)
            sampler.set_epoch(epoch)
            shards.append(list(sampler))
        largest = max(_padded(durations, b) for shard in shards for b in shard)
        assert max(_padded(durations, shard[0]) for shard in shards) == largest  # the first step holds it
        if not shuffle:  # evaluation: every rank's first batch is its own largest
            assert all(_padded(durations, s[0]) == max(_padded(durations, b) for b in s) for s in shards)


@pytest.mark.parametrize("mode", [dict(batch_size=8), dict(batch_size=None, max_batch_seconds=40.0)])
def test_sampler_weights_draw_clips_as_often_as_they_say(mode):
    durations = _durations(400)
    weights = np.where(np.arange(400) < 200, 2.0, 0.5)  # the first "corpus" twice, the second half the time
    sampler = BucketBatchSampler(durations, **mode, num_buckets=5, seed=2, weights=weights)
    seen_half = set()
    for epoch in range(4):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        counts = np.bincount([i for b in batches for i in b], minlength=400)
        assert (counts[:200] == 2).all()  # every clip of weight 2 exactly twice
        assert set(counts[200:]) <= {0, 1} and abs(counts[200:].sum() - 100) <= 5  # a half of weight 0.5
        seen_half |= set(np.flatnonzero(counts[200:]))
        if mode.get("max_batch_seconds"):
            assert all(len(b) * durations[b].max() <= 40.0 for b in batches if len(b) > 1)
    assert len(seen_half) > 150  # another half each epoch
    state = sampler.state_dict()
    resumed = BucketBatchSampler(durations, **mode, num_buckets=5, seed=2, weights=weights)
    resumed.load_state_dict({**state, "batches_done": 3})
    assert list(resumed) == batches[3:]  # weighted draws resume exactly too
    unweighted = BucketBatchSampler(durations, **mode, num_buckets=5, seed=2, weights=np.ones(400))
    assert list(unweighted) == list(BucketBatchSampler(durations, **mode, num_buckets=5, seed=2))


def test_sampler_ddp_with_fewer_clips_than_ranks_gives_spare_ranks_an_empty_batch():
    shards = [list(BucketBatchSampler([1.0, 2.0], batch_size=4, num_replicas=3, rank=r)) for r in range(3)]
    assert [len(s) for s in shards] == [1, 1, 1]  # every rank steps together
    assert sorted(i for s in shards for b in s for i in b) == [0, 1]  # each clip once: scored once


@pytest.mark.parametrize("rank", [0, 1])
def test_sampler_resumes_mid_epoch_exactly(rank):
    durations = _durations()
    sampler = BucketBatchSampler(durations, batch_size=8, seed=11, num_replicas=2, rank=rank)
    sampler.set_epoch(3)
    full = list(sampler)
    iterator = iter(sampler)
    consumed = [next(iterator) for _ in range(5)]
    state = json.loads(json.dumps(sampler.state_dict()))  # checkpoints serialise it
    assert state["epoch"] == 3 and state["batches_done"] == 5

    resumed = BucketBatchSampler(durations, batch_size=8, seed=11, num_replicas=2, rank=rank)
    resumed.load_state_dict(state)
    resumed.set_epoch(3)  # Lightning calls this again for the resumed epoch; the position must survive
    assert consumed + list(resumed) == full
    resumed.set_epoch(4)
    assert len(list(resumed)) == len(full)  # the next epoch starts from its beginning
    with pytest.raises(ValueError, match="seed"):
        BucketBatchSampler(durations, batch_size=8, seed=12).load_state_dict(state)


# --------------------------------------------------------------------------------------------------------
# Audio
# --------------------------------------------------------------------------------------------------------


def test_48k_mp3_becomes_16k(tmp_path):
    seconds = np.arange(72_000) / 48_000  # 1.5 s
    tone = 0.3 * np.sin(2 * np.pi * 440 * seconds) + 0.2
    path = tmp_path / "tone.mp3"
    sf.write(path, tone, 48_000, format="MP3")
    waveform = load_audio(path)
    assert waveform.dtype == torch.float32 and waveform.shape == (24_000,)
    assert abs(float(waveform.mean())) < 1e-4 and abs(float(waveform.std()) - 1) < 1e-3


def test_stereo_44k1_is_downmixed_and_resampled_like_torchaudio(tmp_path):
    rng = np.random.default_rng(0)
    stereo = rng.uniform(-0.5, 0.5, (44_100, 2)).astype(np.float32)
    path = tmp_path / "stereo.flac"
    sf.write(path, stereo, 44_100)
    decoded, _ = sf.read(path, dtype="float32")
    expected = torchaudio.functional.resample(torch.from_numpy(decoded.mean(axis=1)), 44_100, 16_000)
    torch.testing.assert_close(resample(torch.from_numpy(decoded.mean(axis=1)), 44_100), expected,
                               atol=1e-4, rtol=1e-4)
    assert load_audio(path).shape == (16_000,) and load_audio(path.read_bytes()).shape == (16_000,)


def test_unreadable_audio_raises_named_error(tmp_path):
    path = tmp_path / "bad.mp3"
    path.write_bytes(b"not audio" * 50)
    with pytest.raises(AudioDecodeError, match="bad.mp3"):
        load_audio(path)


# --------------------------------------------------------------------------------------------------------
# Dataset, collate, loader
# --------------------------------------------------------------------------------------------------------


def _dataset(corpus_root: Path, splits=("train",)) -> ClipDataset:
    manifest, _ = build_manifest(CommonVoiceRelease(corpus_root), list(splits), TextNormalizer(), FilterSettings())
    return ClipDataset(manifest, Vocabulary.build(manifest.texts))


def test_broken_clips_are_skipped_and_counted(tmp_path, caplog):
    corpus = make_corpus(tmp_path, defects=["corrupt", "empty", "truncated"])
    dataset = _dataset(corpus.root)
    with caplog.at_level(logging.WARNING):
        batch = collate_clips(dataset[list(range(len(dataset)))])
    assert batch["num_skipped"] == 3 and len(batch["ids"]) == 5
    assert not set(corpus.defects.values()) & set(batch["ids"])
    assert all(corpus.defects[d] in caplog.text for d in ("corrupt", "empty", "truncated"))
    assert "truncated" in caplog.text
    empty = collate_clips(dataset[[0, 1]])  # both broken: an empty batch, not an error
    assert empty["num_skipped"] == 2 and empty["waveforms"].shape == (0, 0) and empty["labels"].shape == (0, 0)
    loader = ClipLoader(dataset, BucketBatchSampler(dataset.manifest.durations, batch_size=3, seed=0))
    assert sum(len(b["ids"]) for b in loader) == 5 and loader.num_skipped == 3


def test_collate_pads_and_lengths_are_exact(tmp_path):
    dataset = _dataset(make_corpus(tmp_path).root)
    examples = dataset[[0, 1, 2]]
    batch = collate_clips(examples)
    for i, example in enumerate(examples):
        n, m = batch["lengths"][i], batch["label_lengths"][i]
        assert torch.equal(batch["waveforms"][i, :n], example.waveform) and not batch["waveforms"][i, n:].any()
        assert torch.equal(batch["labels"][i, :m], example.labels) and (batch["labels"][i, m:] == -100).all()
        expected = math.ceil(round(dataset.manifest.durations[i] * 48_000) / 3)
        assert abs(int(n) - expected) <= 16  # clip_durations.tsv is rounded to the millisecond
    assert batch["waveforms"].shape[1] == int(batch["lengths"].max())
    # Padded to a multiple of 0.5 s: only the width changes.
    bucketed = collate_clips(examples, pad_to_multiple=8000)
    width = bucketed["waveforms"].shape[1]
    assert width % 8000 == 0 and 0 <= width - int(batch["lengths"].max()) < 8000
    assert torch.equal(bucketed["waveforms"][:, : batch["waveforms"].shape[1]], batch["waveforms"])
    assert not bucketed["waveforms"][:, batch["waveforms"].shape[1]:].any()
    for key in ("lengths", "labels", "label_lengths"):
        assert torch.equal(bucketed[key], batch[key])


def test_loader_resumes_mid_epoch_with_prefetching_worker(tmp_path):
    dataset = _dataset(make_corpus(tmp_path, clips_per_split={"train": 16}).root)
    def loader():
        return ClipLoader(dataset, BucketBatchSampler(dataset.manifest.durations, batch_size=2, seed=5),
                          num_workers=1, prefetch_factor=4)
    first = loader()
    first.sampler.set_epoch(1)
    full = [b["ids"] for b in first]
    iterator = iter(first)
    consumed = [next(iterator)["ids"] for _ in range(3)]
    state = first.state_dict()
    del iterator  # the worker had already taken batches beyond the third
    assert state["batches_done"] == 3
    second = loader()
    second.load_state_dict(state)
    rest = iter(second)
    consumed += [next(rest)["ids"] for _ in range(2)]
    assert second.state_dict()["batches_done"] == 5  # a checkpoint after a resume counts from the epoch start
    assert consumed + [b["ids"] for b in rest] == full


# --------------------------------------------------------------------------------------------------------
# Data module
# --------------------------------------------------------------------------------------------------------


def test_datamodule_on_bundled_corpus_gives_contract_batches(tmp_path):
    from ptasr.data import SpeechDataModule

    dm = SpeechDataModule(batching=BatchSettings(batch_size=4), loading=NO_WORKERS)
    assert dm.vocab_size == len(dm.vocab) and dm.pad_token_id == dm.vocab_size - 1  # before setup
    assert dm.vocab.tokens[0] == "|" and "ã" in dm.vocab.tokens and "ç" in dm.vocab.tokens
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"waveforms", "lengths", "labels", "label_lengths", "texts", "ids", "age", "gender",
                          "accent", "sources", "num_skipped"}
    size = len(batch["ids"])
    assert size == 4 and batch["num_skipped"] == 0
    assert batch["waveforms"].dtype == torch.float32 and batch["waveforms"].shape[0] == size
    assert batch["waveforms"].shape[1] == int(batch["lengths"].max())
    for key in ("lengths", "labels", "label_lengths"):
        assert batch[key].dtype == torch.int64
    assert batch["labels"].shape == (size, int(batch["label_lengths"].max()))
    for i in range(size):
        labels = batch["labels"][i, : batch["label_lengths"][i]].tolist()
        assert dm.vocab.decode(labels) == batch["texts"][i] == dm.normalizer(batch["texts"][i])
        assert batch["ids"][i].startswith("common_voice_pt_") and batch["ids"][i].endswith(".mp3")
    rows = {}  # the training rows (train + dev) as the bundled TSVs give them, by clip
    for split in ("train", "dev"):
        with open(Path(BUNDLED_CORPUS) / f"{split}.tsv", encoding="utf-8", newline="") as f:
            rows.update((row["path"], row) for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    for key in ("age", "gender", "accent"):
        assert batch[key] == [rows[clip][key] for clip in batch["ids"]], key
    assert {len(list(dm.val_dataloader())), len(dm.val_dataloader())} == {7}  # 50 test clips, 8 per batch


def test_datamodule_pads_batches_to_a_multiple_of_the_given_duration():
    from ptasr.data import SpeechDataModule

    dm = SpeechDataModule(batching=BatchSettings(batch_size=4, pad_to_multiple_seconds=0.5), loading=NO_WORKERS)
    dm.setup("fit")
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        for batch in loader:
            width = batch["waveforms"].shape[1]
            assert width % 8000 == 0 and 0 <= width - int(batch["lengths"].max()) < 8000
    with pytest.raises(ValueError, match="pad_to_multiple_seconds must be positive"):
        SpeechDataModule(batching=BatchSettings(pad_to_multiple_seconds=0), loading=NO_WORKERS)


def test_datamodule_leakage_and_vocab_path(tmp_path):
    from ptasr.data import SpeechDataModule

    corpus = make_corpus(tmp_path / "c")
    with pytest.raises(ValueError, match="leakage"):
        SpeechDataModule(str(corpus.root), [DataSource(str(corpus.root), splits=["dev"])],
                         filters=FilterSettings(leakage="raise"), loading=NO_WORKERS).setup("fit")
    vocab = Vocabulary(["|", "a", "e", "o", "[UNK]", "[PAD]"])
    vocab.save(tmp_path)
    dm = SpeechDataModule(str(corpus.root), str(corpus.root), text=TextSettings(vocab_path=str(tmp_path / "vocab.json")),
                          loading=NO_WORKERS)
    assert dm.vocab == vocab
    with pytest.warns(UserWarning, match="not in .* and become \\[UNK\\]"):
        dm.setup("fit")
    with pytest.raises(ValueError, match="vocabulary"):
        SpeechDataModule(str(corpus.root), str(corpus.root), loading=NO_WORKERS).load_state_dict(dm.state_dict())


def test_datamodule_reads_release_archive_once(tmp_path):
    from ptasr.data import SpeechDataModule

    corpus = make_corpus(tmp_path / "src" / "cv-corpus-99.0" / "pt")
    archive = tmp_path / "cv-corpus-99.0-pt.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(corpus.root.parent, arcname="cv-corpus-99.0")
    first = SpeechDataModule(str(archive), str(archive), loading=NO_WORKERS)
    second = SpeechDataModule(str(archive), str(archive), loading=NO_WORKERS)
    [(release, _, _), *_] = first.parts("train")
    assert release.root == second.parts("val")[0][0].root and release.root.name == "pt"
    assert (tmp_path / "cache" / "releases") in release.root.parents
    assert first.vocab == second.vocab
    (tmp_path / "other.tar.gz").write_bytes(b"not a tar archive at all")
    with pytest.raises(ValueError, match="not a tar archive"):
        SpeechDataModule(str(tmp_path / "other.tar.gz"), str(archive), loading=NO_WORKERS).parts("train")


def test_hf_parquet_dataset_source(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    corpus = make_corpus(tmp_path / "c", clips_per_split={"train": 3, "test": 2}, defects=["corrupt"])
    features = {"audio": {"_type": "Audio"}, "sentence": {"dtype": "string", "_type": "Value"}}
    (tmp_path / "hf_data" / "data").mkdir(parents=True)
    for split in ("train", "test"):
        rows = read_tsv(corpus.root / f"{split}.tsv")
        audio = [{"bytes": (corpus.root / "clips" / p).read_bytes(), "path": p} for p in rows["path"]]
        table = pa.table({"audio": audio, "sentence": rows["sentence"]})
        table = table.replace_schema_metadata({b"huggingface": json.dumps({"info": {"features": features}})})
        pq.write_table(table, tmp_path / "hf_data" / "data" / f"{split}-00000-of-00001.parquet")
    source = HFDatasetSource(str(tmp_path / "hf_data"), cache_dir=tmp_path / "cache")
    manifest, reports = build_manifest(source, ["train", "test"], TextNormalizer(), FilterSettings())
    assert [r.kept for r in reports] == [2, 2] and reports[0].removed["unreadable audio header"] == 1
    assert manifest.ids == corpus.splits["train"][1:] + corpus.splits["test"]
    batch = collate_clips(ClipDataset(manifest, Vocabulary.build(manifest.texts))[[0, 1, 2, 3]])
    assert batch["num_skipped"] == 0 and batch["texts"] == manifest.texts

    from ptasr.data import SpeechDataModule

    hf_data = str(tmp_path / "hf_data")
    dm = SpeechDataModule([DataSource(hf_data, splits=["train"])], hf_data, loading=LoadingSettings(num_workers=0,
                          cache_dir=str(tmp_path / "cache")))
    # like the reference, the vocabulary covers every row's text, filtered or not
    texts = [TextNormalizer()(sentence) for split in ("train", "test")
             for sentence in read_tsv(corpus.root / f"{split}.tsv")["sentence"]]
    assert dm.vocab == Vocabulary.build(texts)
    dm.setup("fit")
    assert sorted(i for b in dm.train_dataloader() for i in b["ids"]) == sorted(corpus.splits["train"][1:])


def test_lightning_resumes_mid_epoch_exactly(tmp_path):
    """A fit interrupted mid-epoch and resumed from its checkpoint trains on exactly the remaining batches."""
    import lightning.pytorch as pl

    from ptasr.data import SpeechDataModule

    class Recorder(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)
            self.seen: list[tuple[str, ...]] = []

        def training_step(self, batch, batch_idx):
            self.seen.append(tuple(batch["ids"]))
            return self.layer(batch["waveforms"].mean(dim=1, keepdim=True)).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    corpus = make_corpus(tmp_path / "c", clips_per_split={"train": 12, "dev": 2, "test": 2})

    def fit(max_epochs: int, ckpt_path: str | None = None) -> Recorder:
        dm = SpeechDataModule(str(corpus.root), str(corpus.root), batching=BatchSettings(batch_size=2, seed=3),
                              loading=LoadingSettings(num_workers=1))  # 7 batches per epoch
        model = Recorder()
        checkpoints = pl.callbacks.ModelCheckpoint(tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1,
                                                   filename="{step}")
        logger = pl.loggers.CSVLogger(tmp_path, name="run", version=0)
        trainer = pl.Trainer(max_epochs=max_epochs, limit_val_batches=0, logger=logger, enable_progress_bar=False,
                             enable_model_summary=False, callbacks=[checkpoints], default_root_dir=tmp_path)
        trainer.fit(model, dm, ckpt_path=ckpt_path)
        return model

    full = fit(max_epochs=2).seen
    assert len(full) == 14 and full[:7] != full[7:]  # two epochs, reshuffled
    resumed = fit(max_epochs=2, ckpt_path=str(tmp_path / "ckpt" / "step=9.ckpt")).seen  # epoch 1 after 2 batches
    assert resumed == full[9:]
    # setup writes no text files: train.py writes them once fit starts, after the checkpoint's checks (test_trust)
    assert not list(tmp_path.rglob("vocab.json")) and not list(tmp_path.rglob("normalizer.json"))


def test_lightning_finds_our_sampler_and_sets_its_epoch(tmp_path):
    """Lightning injects a DistributedSampler unless the loader's sampler is one, and calls set_epoch only on
    ``loader.sampler`` / ``loader.batch_sampler.sampler``: ours must be where it looks."""
    from lightning.fabric.utilities.data import _set_sampler_epoch
    from torch.utils.data import DistributedSampler

    dataset = _dataset(make_corpus(tmp_path).root)
    loader = ClipLoader(dataset, BucketBatchSampler(dataset.manifest.durations, batch_size=2, seed=0))
    assert isinstance(loader.sampler, DistributedSampler)
    _set_sampler_epoch(loader, 4)
    assert loader.sampler.epoch == 4 and len(loader) == len(loader.sampler)


def test_lightning_recreates_our_loader_for_predict(tmp_path):
    """For predict, Lightning re-creates the loader from the arguments of its call in ``predict_dataloader``
    plus ``sampler=``, ``shuffle=False`` and ``batch_sampler=None``: every clip still comes out once."""
    import lightning.pytorch as pl

    dataset = _dataset(make_corpus(tmp_path, clips_per_split={"train": 7}).root)

    class Clips(pl.LightningDataModule):
        def predict_dataloader(self):
            return ClipLoader(dataset, sampler=BucketBatchSampler(dataset.manifest.durations, batch_size=2,
                                                                  shuffle=False), num_workers=1, pad_to_multiple=4000)

    class Ids(pl.LightningModule):
        def predict_step(self, batch, batch_idx):
            assert batch["waveforms"].shape[1] % 4000 == 0  # the re-created loader still pads
            return batch["ids"]

    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    batches = trainer.predict(Ids(), datamodule=Clips())
    assert len(batches) == 4 and sorted(i for b in batches for i in b) == sorted(dataset.manifest.ids)
    with pytest.raises(ValueError, match="BucketBatchSampler decides"):
        ClipLoader(dataset, sampler=BucketBatchSampler(dataset.manifest.durations), shuffle=True)


def test_data_modules_other_than_datamodule_import_without_lightning_or_model():
    import subprocess
    import sys

    code = ("import sys, ptasr.data, ptasr.data.dataset, ptasr.data.testing; "
            "print('lightning' in sys.modules, any(m.startswith('ptasr.model') for m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]
