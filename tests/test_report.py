"""``ptasr evaluate --report``: the page's data checked in Python, then the page itself in headless Chromium.

The browser tests need Playwright (``pip install playwright``) and a Chromium on the PATH (Debian:
``apt-get install chromium``; Playwright's own browser download works too where it can reach the network).
Without either they skip, saying which is missing.
"""

from __future__ import annotations

import colorsys
import json
import math
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import pytest
import soundfile as sf
import torch

from ptasr.cli import main
from ptasr.data import BUNDLED_CORPUS
from ptasr.data.commonvoice import read_tsv
from ptasr.data.text import TextNormalizer, Vocabulary
from ptasr.evaluation.report import MAX_COLUMNS, aligned_words, copy_playable, summarise_posteriors
from ptasr.export.hf_folder import write_hf_folder
from ptasr.model.config import Wav2Vec2Config
from ptasr.model.wav2vec2 import Wav2Vec2CTC
from ptasr.recognition.recognizer import Recognizer

CORPUS = Path(BUNDLED_CORPUS)
SPLIT_ROWS = 50  # utterances in the bundled corpus's test split
# How long the browser may take to load a clip (milliseconds): a hang guard, generous for a loaded machine.
LOADED_MS = 120_000
TINY = dict(conv_dim=(32,) * 7, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny model whose head favours characters over the blank, so transcripts are long."""
    normalizer = TextNormalizer()
    vocab = Vocabulary.build(normalizer(s) for split in ("train", "dev", "test")
                             for s in read_tsv(CORPUS / f"{split}.tsv")["sentence"])
    torch.manual_seed(0)
    model = Wav2Vec2CTC(Wav2Vec2Config.preset("tiny", vocab_size=len(vocab), pad_token_id=vocab.pad_id, **TINY))
    with torch.no_grad():
        model.lm_head.weight.normal_(std=3.0)
        model.lm_head.bias[vocab.pad_id] += 1.0  # blanks too, so the greedy path has gaps to draw
    directory = tmp_path_factory.mktemp("model")
    write_hf_folder(Recognizer(model, vocab, normalizer), directory)
    return directory


@pytest.fixture(scope="module")
def evaluated(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``ptasr evaluate --report`` on the bundled test split: the report folder, the results and the page data."""
    out = tmp_path_factory.mktemp("eval")
    assert main(["evaluate", str(model_dir), "--data", str(CORPUS), "--split", "test", "--device", "cpu",
                 "--dtype", "float32", "--output-dir", str(out / "results"), "--report", str(out / "report")]) == 0
    results = json.loads((out / "results" / "cv-tiny-pt_test_eval_results.json").read_text(encoding="utf-8"))
    page = (out / "report" / "index.html").read_text(encoding="utf-8")
    return {"dir": out / "report", "results": results, "page": page, "data": page_data(page),
            "details": details(out / "report"), "model": model_dir}


def page_data(page: str) -> dict[str, Any]:
    match = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)
    assert match, "the page holds no report-data script"
    return json.loads(match.group(1))


def details(directory: Path) -> list[dict[str, Any]]:
    items = []
    for shard, path in enumerate(sorted((directory / "detail").glob("*.js"))):
        prefix = f"ptasrDetail({shard},"
        text = path.read_text(encoding="utf-8").strip()
        assert text.startswith(prefix) and text.endswith(");"), path
        items += json.loads(text[len(prefix):-2])
    return items


def rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [dict(zip(data["columns"], row, strict=True)) for row in data["rows"]]


# --- the generator, without a browser ----------------------------------------------------------------------


def test_page_holds_every_utterance_with_its_rates_audio_and_metadata(evaluated: dict[str, Any]) -> None:
    data, results = evaluated["data"], evaluated["results"]
    table = rows(data)
    split = read_tsv(CORPUS / "test.tsv")
    assert [r["id"] for r in table] == split["path"] and len(table) == SPLIT_ROWS == results["utterances"]
    for row in table:  # jiwer as the oracle, one utterance at a time
        assert row["wer"] == pytest.approx(jiwer.wer(row["reference"], row["prediction"]), abs=1e-6)
        assert row["cer"] == pytest.approx(jiwer.cer(row["reference"], row["prediction"]), abs=1e-6)
        assert re.fullmatch(r"audio/\d{5}\.mp3", row["audio"])
        assert (evaluated["dir"] / row["audio"]).stat().st_size == (CORPUS / "clips" / row["id"]).stat().st_size
    assert {r["gender"] for r in table} == {"male", "female"} and {r["accent"] for r in table} == {"brasil", "portugal"}
    meta = data["meta"]
    assert (meta["model"], meta["data"], meta["split"], meta["dtype"]) == (str(evaluated["model"]), str(CORPUS),
                                                                          "test", "float32")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", meta["date"])
    assert meta["wer"] == results["wer"] and data["by"]["gender"] == results["by"]["gender"]


def test_page_needs_nothing_from_the_network(evaluated: dict[str, Any]) -> None:
    page = evaluated["page"]
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page, re.I)
    assert "@import" not in page and "fetch(" not in page and '<link rel="stylesheet"' not in page


def test_details_align_the_words_and_hold_the_posteriors_the_transcript_came_from(evaluated: dict[str, Any],
                                                                                 model_dir: Path) -> None:
    data, items = evaluated["data"], evaluated["details"]
    vocab, normalizer = Vocabulary.load(model_dir / "vocab.json"), TextNormalizer.load(model_dir / "normalizer.json")
    assert len(items) == SPLIT_ROWS
    for row, item in zip(rows(data), items, strict=True):
        assert " ".join(ref for _, ref, _ in item["align"] if ref) == row["reference"]
        assert " ".join(hyp for _, _, hyp in item["align"] if hyp) == row["prediction"]
        ops = [op for op, _, _ in item["align"]]
        assert [ops.count(op) for op in "sdie"] == item["counts"]
        post = item["post"]
        assert post["step"] == 1 and abs(len(post["path"]) - row["duration"] / 0.02) <= 1  # 20 ms frames
        assert all(0 <= p <= 100 for p in post["blank"] + post["top_prob"])
        ids = [t for k, t in enumerate(post["path"]) if t != data["blank"] and (k == 0 or post["path"][k - 1] != t)]
        assert normalizer(vocab.decode(ids)) == row["prediction"]  # the greedy path of the same model outputs
    assert sum(r["errors"] for r in rows(data)) > 0


def test_details_hold_each_predicted_words_confidence(evaluated: dict[str, Any]) -> None:
    data, items, results = evaluated["data"], evaluated["details"], evaluated["results"]
    confidence = results["confidence"]
    assert data["meta"]["confidence"] == confidence and confidence["words"] > 0
    for row, item in zip(rows(data), items, strict=True):
        assert len(item["conf"]) == len(row["prediction"].split()) and all(0 <= c <= 1 for c in item["conf"])
    assert sum(len(item["conf"]) for item in items) == confidence["words"]


@pytest.mark.parametrize("seed", range(20))
def test_aligned_words_rebuild_both_sides_with_jiwers_counts(seed: int) -> None:
    rng = np.random.default_rng(seed)
    words = ["a", "b", "c", "dd"]
    reference = " ".join(rng.choice(words, size=rng.integers(1, 7)))
    prediction = " ".join(rng.choice(words, size=rng.integers(0, 7)))
    pairs = aligned_words(reference, prediction)
    assert " ".join(r for _, r, _ in pairs if r) == reference and " ".join(h for _, _, h in pairs if h) == prediction
    counts = jiwer.process_words(reference, prediction)
    ops = [op for op, _, _ in pairs]
    assert (ops.count("s"), ops.count("d"), ops.count("i"), ops.count("e")) == (
        counts.substitutions, counts.deletions, counts.insertions, counts.hits)


def test_long_posteriors_are_pooled_to_at_most_max_columns() -> None:
    log_probs = torch.randn(3 * MAX_COLUMNS + 7, 12).log_softmax(dim=-1)  # (T, V)
    post = summarise_posteriors(log_probs, blank=11, seconds_per_frame=0.02)
    assert post.step == 4 and len(post.path) == len(post.blank) == math.ceil((3 * MAX_COLUMNS + 7) / 4)
    assert post.seconds_per_column == pytest.approx(0.08)
    mean = log_probs.exp()[:4].mean(dim=0)
    assert post.blank[0] == round(float(mean[11]) * 100) and post.top[0] == int(mean[:11].argmax())
    assert all(b + p <= 101 for b, p in zip(post.blank, post.top_prob, strict=True))  # rounding: +1 at most


def test_clips_a_browser_cannot_play_are_converted(tmp_path: Path) -> None:
    clip = sorted((CORPUS / "clips").glob("*.mp3"))[0]
    samples, rate = sf.read(clip, dtype="float32")
    sf.write(tmp_path / "clip.aiff", samples, rate)
    out = tmp_path / "out"
    out.mkdir()
    assert copy_playable(str(clip), out, "00000") == "00000.mp3"
    assert copy_playable(clip.read_bytes(), out, "00001") == "00001.mp3"  # audio held in memory (HF datasets)
    assert copy_playable(tmp_path / "clip.aiff", out, "00002") == "00002.wav"
    converted, converted_rate = sf.read(out / "00002.wav", dtype="float32")
    assert converted_rate == rate and np.abs(converted - samples).max() < 1e-3


@pytest.fixture(scope="module")
def recordings_report(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A report of three recordings in other formats: FLAC and Ogg Vorbis (played as they are), AIFF (converted).

    A manifest's ids are absolute paths; two of the clips share a name up to the extension (``take``).
    """
    data = tmp_path_factory.mktemp("recordings")
    (data / "more").mkdir()
    table = read_tsv(CORPUS / "test.tsv")
    lines = ["path\tsentence\tgender"]
    for k, (name, rate) in enumerate([("take.flac", 16000), ("take.ogg", 44100), ("more/rec2.aiff", 22050)]):
        samples, source_rate = sf.read(CORPUS / "clips" / table["path"][k], dtype="float32")
        resampled = np.interp(np.arange(0, len(samples), source_rate / rate), np.arange(len(samples)), samples)
        sf.write(data / name, resampled.astype(np.float32), rate)
        lines.append(f"{name}\t{table['sentence'][k]}\t{table['gender'][k]}")
    (data / "mine.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert main(["evaluate", str(model_dir), "--data", str(data / "mine.tsv"), "--device", "cpu", "--output-dir",
                 str(data / "results"), "--report", str(data / "report")]) == 0
    return data / "report"


def test_recordings_in_other_formats_are_played_or_converted(recordings_report: Path) -> None:
    table = rows(page_data((recordings_report / "index.html").read_text(encoding="utf-8")))
    assert [r["audio"] for r in table] == ["audio/00000.flac", "audio/00001.ogg", "audio/00002.wav"]
    # longer than the file names a link may give (see test_browser_link_names_a_clip_by_its_file_name)
    assert [Path(r["id"]) for r in table] == [recordings_report.parent / name
                                              for name in ("take.flac", "take.ogg", "more/rec2.aiff")]
    samples, rate = sf.read(recordings_report / "audio" / "00002.wav")
    assert rate == 22050 and len(samples) / rate == pytest.approx(table[2]["duration"], abs=0.01)
    assert [r["gender"] for r in table] == read_tsv(CORPUS / "test.tsv")["gender"][:3]


def test_report_folder_with_other_files_is_refused_before_evaluating(model_dir: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "notes.txt").write_text("mine", encoding="utf-8")
    code = main(["evaluate", str(model_dir), "--data", str(CORPUS / "test.tsv"), "--device", "cpu", "--output-dir",
                 str(tmp_path / "results"), "--report", str(tmp_path / "report")])
    err = capsys.readouterr().err
    assert code == 1 and "--report" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "results").exists() and (tmp_path / "report" / "notes.txt").read_text() == "mine"


def test_a_new_report_replaces_an_earlier_one(evaluated: dict[str, Any], model_dir: Path, tmp_path: Path) -> None:
    report = tmp_path / "report"
    shutil.copytree(evaluated["dir"], report)
    assert main(["evaluate", str(model_dir), "--data", str(CORPUS / "test.tsv"), "--limit", "3", "--device", "cpu",
                 "--output-dir", str(tmp_path / "results"), "--report", str(report)]) == 0
    assert len(page_data((report / "index.html").read_text(encoding="utf-8"))["rows"]) == 3
    assert len(list((report / "audio").iterdir())) == 3 and len(details(report)) == 3


# --- the page in a real browser ----------------------------------------------------------------------------


def find_chromium() -> str | None:
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


@pytest.fixture(scope="module")
def browser() -> Any:
    playwright_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright: pip install playwright")
    with playwright_api.sync_playwright() as playwright:
        try:  # a Chromium on the PATH, else the one `playwright install chromium` downloads
            browser = playwright.chromium.launch(executable_path=find_chromium(), args=[
                "--no-sandbox", "--autoplay-policy=no-user-gesture-required"])
        except playwright_api.Error as error:
            if find_chromium() is not None or "Executable doesn't exist" not in str(error):
                raise
            pytest.skip("needs a Chromium: apt-get install chromium (Debian), or `playwright install chromium`")
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any, evaluated: dict[str, Any]) -> Any:
    """The report, loaded; ``page.problems`` collects console errors and uncaught exceptions."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.problems = []
    page.on("console", lambda message: page.problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: page.problems.append(str(error)))
    page.goto((evaluated["dir"] / "index.html").as_uri())
    page.wait_for_selector("html[data-ready]")
    yield page
    page.close()


def redrawn(page: Any) -> None:
    """Wait until the page has drawn its next frame: the table redraws on the animation frame after a scroll. A
    fixed sleep is not enough on a loaded machine, where a frame can take longer."""
    page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")


def table_ids(page: Any) -> list[str]:
    """Every row of the virtualised table, in order, gathered by scrolling it from top to bottom."""
    seen: dict[int, str] = {}
    viewport = page.locator("#viewport")
    height = viewport.evaluate("v => v.scrollHeight")
    for top in range(0, height + 1, 200):
        viewport.evaluate("(v, top) => { v.scrollTop = top; v.dispatchEvent(new Event('scroll')); }", top)
        redrawn(page)
        for top_px, row_id in page.eval_on_selector_all(
                "#spacer .row", "rows => rows.map(r => [parseInt(r.style.top), r.dataset.id])"):
            seen[top_px] = row_id
    return [seen[k] for k in sorted(seen)]


def column(page: Any, cell: int) -> list[float]:
    """The numbers of one table column, rows in view only, top to bottom."""
    page.locator("#viewport").evaluate("v => { v.scrollTop = 0; v.dispatchEvent(new Event('scroll')); }")
    redrawn(page)
    cells = page.eval_on_selector_all(
        "#spacer .row", f"rows => rows.sort((a, b) => parseInt(a.style.top) - parseInt(b.style.top))"
                        f".map(r => r.children[{cell}].textContent)")
    return [float(x) for x in cells]


def test_browser_table_holds_every_utterance_without_console_errors(page: Any, evaluated: dict[str, Any]) -> None:
    table = rows(evaluated["data"])
    assert page.text_content("#count") == f"{SPLIT_ROWS} of {SPLIT_ROWS} utterances"
    ids = table_ids(page)
    assert sorted(ids) == sorted(r["id"] for r in table) and len(ids) == SPLIT_ROWS
    assert ids == [r["id"] for r in sorted(table, key=lambda r: -r["wer"])]  # worst first, ties in corpus order
    charts = page.eval_on_selector_all(".chart[data-breakdown]", "charts => charts.map(c => c.dataset.breakdown)")
    assert charts == ["gender", "age", "accent"]
    bars = page.eval_on_selector_all(".chart[data-breakdown=gender] g[data-group]", "gs => gs.map(g => g.dataset.group)")
    assert bars == list(evaluated["results"]["by"]["gender"])
    assert page.problems == []


def test_browser_filter_and_sort(page: Any, evaluated: dict[str, Any]) -> None:
    table = rows(evaluated["data"])
    target = table[7]
    page.fill("#filter", target["id"].upper())  # filtering ignores case
    assert page.text_content("#count") == f"1 of {SPLIT_ROWS} utterances"
    assert table_ids(page) == [target["id"]]
    word = target["reference"].split()[-1]
    expected = [r for r in table if any(word in r[k].lower() for k in ("id", "reference", "prediction"))
                or word in " · ".join(filter(None, (r["gender"], r["age"], r["accent"])))]
    page.fill("#filter", word)
    assert page.text_content("#count") == f"{len(expected)} of {SPLIT_ROWS} utterances"
    assert sorted(table_ids(page)) == sorted(r["id"] for r in expected)
    page.fill("#filter", "")
    page.click("#table-head button[data-key=wer]")  # from the default (worst first) to best first
    wers = column(page, 1)
    assert wers == sorted(wers) and wers[0] == pytest.approx(min(r["wer"] for r in table), abs=1e-3)
    page.click("#table-head button[data-key=duration]")
    durations = column(page, 3)
    assert durations == sorted(durations, reverse=True) and durations[0] == pytest.approx(
        max(r["duration"] for r in table), abs=0.05)
    assert page.get_attribute("#table-head button[data-key=duration]", "aria-sort") == "descending"
    assert page.problems == []


def test_browser_selected_row_shows_alignment_audio_and_posteriors(page: Any, evaluated: dict[str, Any]) -> None:
    table, items = rows(evaluated["data"]), evaluated["details"]
    index = max(range(SPLIT_ROWS), key=lambda i: (items[i]["counts"][1] > 0, items[i]["counts"][2] > 0,
                                                   table[i]["errors"]))  # one with deletions or insertions
    target = table[index]
    page.fill("#filter", target["id"])
    page.click(f"#spacer .row[data-id='{target['id']}']")
    page.wait_for_selector("#detail .pair")
    assert page.text_content("#detail h2") == target["id"]
    refs = page.eval_on_selector_all("#detail .pair .ref", "spans => spans.map(s => s.textContent)")
    hyps = page.eval_on_selector_all("#detail .pair .hyp", "spans => spans.map(s => s.textContent)")
    assert " ".join(filter(None, refs)) == target["reference"] and " ".join(filter(None, hyps)) == target["prediction"]
    ops = page.eval_on_selector_all("#detail .pair", "pairs => pairs.map(p => p.dataset.op)")
    assert ops == [op for op, _, _ in items[index]["align"]] and set(ops) - {"e"}
    assert page.locator("#detail .posteriors svg rect").count() == len(items[index]["post"]["path"])
    audio = page.locator("#detail audio")
    assert audio.evaluate("a => a.canPlayType('audio/mpeg')") in ("maybe", "probably")
    page.wait_for_function("document.querySelector('#detail audio').readyState >= 2", timeout=LOADED_MS)
    assert audio.evaluate("a => a.duration") == pytest.approx(target["duration"], abs=0.1)
    audio.evaluate("async a => { a.muted = true; await a.play(); }")
    page.wait_for_function("document.querySelector('#detail audio').currentTime > 0", timeout=LOADED_MS)  # it plays
    audio.evaluate("a => a.pause()")
    assert page.evaluate("decodeURIComponent(location.hash.slice(1))") == target["id"]  # a link to this utterance
    assert page.problems == []


def test_browser_colours_each_predicted_word_by_its_confidence(page: Any, evaluated: dict[str, Any]) -> None:
    table, items = rows(evaluated["data"]), evaluated["details"]
    index = max(range(SPLIT_ROWS), key=lambda i: max(items[i]["conf"], default=0) - min(items[i]["conf"], default=1))
    target, conf = table[index], items[index]["conf"]
    page.fill("#filter", target["id"])
    page.click(f"#spacer .row[data-id='{target['id']}']")
    page.wait_for_selector("#detail .confidence .word")
    words = page.eval_on_selector_all(
        "#detail .confidence .word",
        "ws => ws.map(w => [w.textContent, Number(w.dataset.confidence), getComputedStyle(w).backgroundColor])")
    assert [w for w, _, _ in words] == target["prediction"].split() and [c for _, c, _ in words] == conf
    for _, c, colour in words:  # hsl(120 c, 70 %, 80 %): red when unsure, green when sure
        expected = [round(255 * x) for x in colorsys.hls_to_rgb(round(120 * c) / 360, 0.8, 0.7)]
        assert [int(x) for x in re.findall(r"\d+", colour)] == pytest.approx(expected, abs=1)
    least, most = min(words, key=lambda w: w[1])[2], max(words, key=lambda w: w[1])[2]
    assert least != most  # the page shows the difference
    legend = page.text_content("#detail .confidence-legend")
    confidence = evaluated["results"]["confidence"]
    assert "unsure 0" in legend and "1 sure" in legend and confidence["measure"] in legend
    # a random model gets every word wrong: no right word to rank against, no AUROC ("–")
    area = "–" if confidence["auroc"] is None else f"{confidence['auroc']:.3f}"
    assert f"AUROC of wrong-word detection {area}" in legend
    assert page.locator("#detail .confidence-legend .swatch").count() == 5
    assert page.problems == []


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The load benchmark's report of 120 synthetic utterances: two detail files."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from report_load import synthetic_report

    directory = tmp_path_factory.mktemp("synthetic") / "report"
    synthetic_report(directory, 120)
    return directory


def test_details_are_split_into_files_of_a_hundred(synthetic: Path) -> None:
    data = page_data((synthetic / "index.html").read_text(encoding="utf-8"))
    items = details(synthetic)
    assert len(data["rows"]) == len(items) == 120 and len(list((synthetic / "detail").iterdir())) == 2
    for row, item in zip(rows(data), items, strict=True):
        assert " ".join(hyp for _, _, hyp in item["align"] if hyp) == row["prediction"]


def test_browser_selection_loads_the_right_detail_file(browser: Any, synthetic: Path) -> None:
    table = rows(page_data((synthetic / "index.html").read_text(encoding="utf-8")))
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto((synthetic / "index.html").as_uri() + "#" + table[110]["id"])  # a link to one utterance
    page.wait_for_selector("#detail .pair")
    assert page.text_content("#detail h2") == table[110]["id"]
    refs = page.eval_on_selector_all("#detail .pair .ref", "spans => spans.map(s => s.textContent)")
    assert " ".join(filter(None, refs)) == table[110]["reference"]
    page.focus("#viewport")
    page.keyboard.press("ArrowDown")  # the next row of the table (worst WER first, ties in corpus order)
    order = sorted(range(len(table)), key=lambda i: (-table[i]["wer"], i))
    following = table[order[order.index(110) + 1]]
    assert page.text_content("#detail h2") == following["id"]
    page.wait_for_selector("#detail .pair")
    hyps = page.eval_on_selector_all("#detail .pair .hyp", "spans => spans.map(s => s.textContent)")
    assert " ".join(filter(None, hyps)) == following["prediction"]
    assert problems == []
    page.close()


def test_browser_plays_flac_ogg_and_converted_wav(browser: Any, recordings_report: Path) -> None:
    page = browser.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.goto((recordings_report / "index.html").as_uri())
    page.wait_for_selector("html[data-ready]")
    for row in rows(page_data((recordings_report / "index.html").read_text(encoding="utf-8"))):
        page.click(f"#spacer .row[data-id='{row['id']}']")
        page.wait_for_function("document.querySelector('#detail audio').readyState >= 2", timeout=LOADED_MS)
        assert page.eval_on_selector("#detail audio", "a => a.error") is None
        assert page.eval_on_selector("#detail audio", "a => a.currentSrc").endswith(row["audio"])
    assert problems == []
    page.close()


def test_a_report_that_fails_halfway_leaves_nothing_and_the_next_run_writes_it(model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report = tmp_path / "report"
    argv = ["evaluate", str(model_dir), "--data", str(CORPUS / "test.tsv"), "--limit", "2", "--device", "cpu",
            "--output-dir", str(tmp_path / "results"), "--report", str(report)]

    def disk_full(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr("ptasr.evaluation.report.EvaluationReport._write_details", disk_full)
        assert main(argv) == 1  # one line (tests/test_faults_io.py), and neither the report nor the results
    assert not report.exists() and not any((tmp_path / "results").iterdir())
    assert main(argv) == 0 and len(details(report)) == 2


def test_browser_link_selects_a_clip_by_its_file_name_in_an_open_page(page: Any, evaluated: dict[str, Any]) -> None:
    target = rows(evaluated["data"])[7]
    stem = target["id"].removesuffix(".mp3")
    page.evaluate("name => { location.hash = name; }", stem)  # as if typed into the address bar
    page.wait_for_function("name => document.querySelector('#detail h2').textContent === name", arg=target["id"])
    assert page.evaluate("decodeURIComponent(location.hash.slice(1))") == target["id"]
    assert page.locator("#link-note").is_hidden()
    assert page.locator(f"#spacer .row.selected[data-id='{target['id']}']").count() == 1  # scrolled into view
    assert page.problems == []


def open_at(browser: Any, report: Path, link: str) -> Any:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.problems = []
    page.on("pageerror", lambda error: page.problems.append(str(error)))
    page.goto(report.as_uri() + "#" + link)
    page.wait_for_selector("html[data-ready]")
    return page


def test_browser_link_names_a_clip_by_its_file_name(browser: Any, recordings_report: Path) -> None:
    index = recordings_report / "index.html"
    table = rows(page_data(index.read_text(encoding="utf-8")))
    # every row, so that the row a page selects without a link (the worst) cannot pass for a match
    for link, selected in [("take.flac", 0), ("take.ogg", 1), ("rec2", 2), ("rec2.aiff", 2)]:
        page = open_at(browser, index, link)
        assert page.text_content("#detail h2") == table[selected]["id"], link
        assert page.locator("#link-note").is_hidden()
        assert page.evaluate("decodeURIComponent(location.hash.slice(1))") == table[selected]["id"]
        assert page.problems == []
        page.close()


def test_browser_link_that_names_several_clips_lists_them(browser: Any, recordings_report: Path) -> None:
    index = recordings_report / "index.html"
    table = rows(page_data(index.read_text(encoding="utf-8")))
    page = open_at(browser, index, "take")
    note = page.locator("#link-note")
    assert note.is_visible() and note.get_attribute("data-matches") == "2" and "#take names 2" in note.text_content()
    links = page.eval_on_selector_all("#link-note a", "links => links.map(a => a.textContent)")
    assert links == [table[0]["id"], table[1]["id"]]
    page.click("#link-note a >> nth=1")
    page.wait_for_function("name => document.querySelector('#detail h2').textContent === name", arg=table[1]["id"])
    assert note.is_hidden()
    assert page.problems == []
    page.close()


def test_browser_link_that_names_no_clip_says_so(browser: Any, recordings_report: Path) -> None:
    index = recordings_report / "index.html"
    page = open_at(browser, index, "tkae")
    note = page.locator("#link-note")
    assert note.is_visible() and note.get_attribute("data-matches") == "0" and "#tkae" in note.text_content()
    assert page.locator("#detail h2").count() == 1  # the table's first row, as without a link
    page.click("#spacer .row >> nth=1")
    assert note.is_hidden()
    assert page.problems == []
    page.close()
