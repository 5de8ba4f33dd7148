"""The n-gram estimator (``ptasr lm build``): hand-computed modified Kneser-Ney values, normalisation of every
context, and the ARPA file read back by KenLM and flashlight."""

from __future__ import annotations

import io
import json
import math
import random
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from ptasr.cli import main
from ptasr.decoding.ngram import BOS, EOS, UNK, build, build_from_files, discounts, read_sentences

# <s> a b </s> (twice), <s> b a c </s>, <s> c a b </s>
TINY = ["a b", "a b", "b a c", "c a b"]


def read_arpa(path: Path) -> dict[tuple[str, ...], tuple[float, float]]:
    """n-gram -> (log10 p, log10 back-off), read with nothing from ptasr."""
    entries, order = {}, 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.endswith("-grams:"):
            order = int(line[1:line.index("-")])
        elif order and line and not line.startswith("\\"):
            fields = line.split("\t")
            words = tuple(fields[1].split())
            assert len(words) == order, line
            entries[words] = (float(fields[0]), float(fields[2]) if len(fields) > 2 else 0.0)
    return entries


def query(arpa: dict[tuple[str, ...], tuple[float, float]], context: tuple[str, ...], word: str) -> float:
    """p(word | context) by the ARPA back-off rule (what KenLM computes)."""
    if (*context, word) in arpa:
        return 10 ** arpa[(*context, word)][0]
    if not context:
        return 10 ** arpa[(UNK,)][0]
    backoff = 10 ** arpa[context][1] if context in arpa else 1.0
    return backoff * query(arpa, context[1:], word)


@pytest.fixture
def tiny_bigram(tmp_path: Path) -> dict[tuple[str, ...], tuple[float, float]]:
    return read_arpa(build(TINY, order=2).write_arpa(tmp_path / "lm.arpa"))


def test_unigrams_by_hand(tiny_bigram) -> None:
    # Continuation counts: a follows <s>, b, c -> 3; b follows <s>, a -> 2; c: a, <s> -> 2; </s>: b, c -> 2.
    # t1 = 0, so the discounts are the fallback 0.5, 1, 1.5. Total 9; gamma = (1 * 3 + 1.5 * 1) / 9 = 0.5,
    # spread uniformly over a, b, c, </s>, <unk> (0.1 each).
    expected = {"a": (3 - 1.5) / 9 + 0.1, "b": 1 / 9 + 0.1, "c": 1 / 9 + 0.1, EOS: 1 / 9 + 0.1, UNK: 0.1}
    for word, p in expected.items():
        assert 10 ** tiny_bigram[(word,)][0] == pytest.approx(p, rel=1e-6), word
    assert tiny_bigram[(BOS,)][0] == 0.0  # never predicted; lmplz writes 0


def test_bigrams_and_backoffs_by_hand(tiny_bigram) -> None:
    p_b, p_a, p_end = 1 / 9 + 0.1, 1.5 / 9 + 0.1, 1 / 9 + 0.1
    # After "a": a b (3), a c (1); total 4, gamma = (0.5 * 1 + 1.5 * 1) / 4 = 0.5.
    assert 10 ** tiny_bigram[("a", "b")][0] == pytest.approx((3 - 1.5) / 4 + 0.5 * p_b, rel=1e-6)
    assert 10 ** tiny_bigram[("a", "c")][0] == pytest.approx((1 - 0.5) / 4 + 0.5 * p_b, rel=1e-6)
    assert 10 ** tiny_bigram[("a",)][1] == pytest.approx(0.5, rel=1e-6)
    # After "<s>": <s> a (2), <s> b (1), <s> c (1); gamma = (0.5 * 2 + 1 * 1) / 4 = 0.5.
    assert 10 ** tiny_bigram[(BOS, "a")][0] == pytest.approx((2 - 1) / 4 + 0.5 * p_a, rel=1e-6)
    # unseen: back off
    assert query(tiny_bigram, ("a",), EOS) == pytest.approx(0.5 * p_end, rel=1e-6)


def test_adjusted_counts_keep_raw_counts_after_sentence_start() -> None:
    model = build(TINY, order=3)
    bigrams = model.orders[1]
    adjusted = {(model.vocab[model.orders[0].word[p]], model.vocab[w]): int(a)
                for p, w, a in zip(bigrams.prefix, bigrams.word, bigrams.adjusted)}
    # <s> a: raw count 2 (nothing precedes <s>); a b: seen after <s> and c -> 2, although its raw count is 3
    assert adjusted == {(BOS, "a"): 2, (BOS, "b"): 1, (BOS, "c"): 1, ("a", "b"): 2, ("a", "c"): 1,
                        ("b", EOS): 1, ("b", "a"): 1, ("c", EOS): 1, ("c", "a"): 1}
    assert int(model.orders[2].count.sum()) == 2 * 2 + 3 + 3  # every trigram occurrence, raw


def test_discounts_from_counts_of_counts() -> None:
    # t = 10, 4, 3, 1: Y = 10 / 18; D1 = 1 - 2Y 4/10, D2 = 2 - 3Y 3/4, D3+ = 3 - 4Y 1/3
    adjusted = np.array([1] * 10 + [2] * 4 + [3] * 3 + [4] + [7] * 5)
    y = 10 / 18
    assert discounts(adjusted) == pytest.approx((1 - 2 * y * 0.4, 2 - 3 * y * 0.75, 3 - 4 * y / 3))
    assert discounts(np.array([1, 1, 2, 3])) is None  # no 4s: lmplz needs --discount_fallback here


def random_corpus(sentences: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(30)]
    weights = [1 / (i + 1) for i in range(30)]
    return [" ".join(rng.choices(words, weights, k=rng.randint(1, 8))) for _ in range(sentences)]


def test_every_context_is_a_distribution(tmp_path: Path) -> None:
    model = build(random_corpus(400), order=4)
    assert all(d != (0.5, 1.0, 1.5) for d in (level.discounts for level in model.orders[1:]))  # real discounts
    arpa = read_arpa(model.write_arpa(tmp_path / "lm.arpa"))
    vocab = [w for w in model.vocab if w != BOS]
    contexts = [ngram for ngram in arpa if len(ngram) < 4 and ngram[-1] != EOS]
    for context in random.Random(1).sample(contexts, 40) + [(), ("nowhere",), (BOS,)]:
        assert sum(query(arpa, context, w) for w in vocab) == pytest.approx(1.0, abs=1e-5), context


def test_kenlm_reads_what_the_back_off_rule_says(tmp_path: Path) -> None:
    kenlm = pytest.importorskip("kenlm", reason="the kenlm module is not installed (pip install kenlm)")
    path = build(random_corpus(300), order=3).write_arpa(tmp_path / "lm.arpa")
    arpa, model = read_arpa(path), kenlm.Model(str(path))
    assert model.order == 3
    for sentence in random_corpus(20, seed=5) + ["w1 unseen w2"]:
        words = [BOS, *sentence.split(), EOS]
        ours = sum(math.log10(query(arpa, tuple(w if (w,) in arpa else UNK for w in words[max(0, i - 2):i]),
                                    words[i] if (words[i],) in arpa else UNK)) for i in range(1, len(words)))
        assert model.score(sentence, bos=True, eos=True) == pytest.approx(ours, abs=1e-4), sentence


def test_flashlight_kenlm_loads_it(tmp_path: Path) -> None:
    pytest.importorskip("flashlight.lib.text.decoder", reason="flashlight-text (pip install 'ptasr[lm]') is missing")
    from flashlight.lib.text.decoder.kenlm import KenLM
    from flashlight.lib.text.dictionary import Dictionary

    path = build(TINY, order=2).write_arpa(tmp_path / "lm.arpa")
    words = ["<unk>", "a", "b", "c"]
    lm = KenLM(str(path), Dictionary(words))
    state, score = lm.score(lm.start(False), words.index("a"))
    assert score == pytest.approx(math.log10((2 - 1) / 4 + 0.5 * (1.5 / 9 + 0.1)), abs=1e-5)


def test_read_sentences_from_manifests_and_text(tmp_path: Path) -> None:
    (tmp_path / "a.tsv").write_text('path\tsentence\nx.mp3\t"Olá, mundo\n', encoding="utf-8")  # CV: no quoting
    (tmp_path / "b.jsonl").write_text(json.dumps({"audio": "x.wav", "text": "bom dia"}) + "\n", encoding="utf-8")
    (tmp_path / "c.csv").write_text("file,transcript\nx.wav,\"boa noite, João\"\n", encoding="utf-8")
    (tmp_path / "d.txt").write_text("uma frase\noutra frase\n", encoding="utf-8")
    assert read_sentences(tmp_path / "a.tsv") == ['"Olá, mundo']
    assert read_sentences(tmp_path / "b.jsonl") == ["bom dia"]
    assert read_sentences(tmp_path / "c.csv") == ["boa noite, João"]
    assert read_sentences(tmp_path / "d.txt") == ["uma frase", "outra frase"]
    (tmp_path / "e.tsv").write_text("path\twords\nx\ty\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"e\.tsv has no text column .*'path', 'words'"):
        read_sentences(tmp_path / "e.tsv")


def test_exclude_drops_normalised_matches(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("Bom dia!\nboa noite\nbom dia\nOlá\n", encoding="utf-8")
    (tmp_path / "test.txt").write_text("BOM DIA.\n", encoding="utf-8")
    from ptasr.data.text import TextNormalizer

    built = build_from_files([tmp_path / "train.txt"], tmp_path / "lm" / "lm.arpa", order=2,
                             normalizer=TextNormalizer(), exclude=[tmp_path / "test.txt"])
    assert (built.sentences, built.excluded, built.words) == (4, 2, 3)
    assert (tmp_path / "lm" / "unigrams.txt").read_text(encoding="utf-8").split() == ["boa", "noite", "olá"]


def test_cli_lm_build(tmp_path: Path) -> None:
    corpus = Path(__file__).parents[1] / "ptasr" / "assets" / "cv-tiny-pt"
    normalizer = tmp_path / "normalizer.json"
    normalizer.write_text(json.dumps({"chars_to_ignore": ",.!?", "lowercase": True, "strip_accents": True}))
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(["lm", "build", str(corpus / "train.tsv"), str(corpus / "test.tsv"), "-o", str(tmp_path / "lm.arpa"),
                     "--order", "3", "--normalizer", str(normalizer), "--exclude", str(corpus / "test.tsv")])
    assert code == 0
    assert "dropped 50 of 470 sentences" in out.getvalue()
    arpa = read_arpa(tmp_path / "lm.arpa")
    assert max(len(ngram) for ngram in arpa) == 3
    assert ("nao",) in arpa and ("não",) not in arpa  # the given normaliser strips accents
