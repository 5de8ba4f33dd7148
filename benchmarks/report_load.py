"""Load time of the evaluation report (``ptasr evaluate --report``) in headless Chromium, for 10 000 utterances.

The report is written by the real writer (``ptasr.evaluation.report.EvaluationReport``) from synthetic utterances shaped
like a Common Voice test split: sentences of the bundled corpus with random word edits, 2 to 8 s clips (the
bundled MP3 hard-linked for every row), 20 ms frames of random CTC posteriors over 40 tokens, and random
gender, age and accent. The peer is the plain way to show the same table: the same data and the same cells,
but every row in a ``<table>`` from the start (no virtualisation).

Timed, best and median of ``--repeats`` fresh page loads each (milliseconds from navigation start):
``ready`` (the page's script has drawn everything in view), ``load`` (the load event); then, on the
ready page, a filter keystroke, a re-sort, a jump to the end of the table, and a selection (its detail file
loaded, alignment and posteriors drawn).

    python benchmarks/report_load.py --utterances 10000 --out benchmarks/results/report_load.json

Needs Playwright (``pip install playwright``) and a Chromium on the PATH (``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from train_throughput import cpu_name  # the script beside this one

from ptasr.data import BUNDLED_CORPUS
from ptasr.data.commonvoice import read_tsv
from ptasr.data.text import TextNormalizer, Vocabulary
from ptasr.evaluation.report import EvaluationReport
from ptasr.evaluation.scoring import Scored, breakdown, error_rates, score_utterance
from ptasr.recognition.transcript import Transcript

CORPUS = Path(BUNDLED_CORPUS)
GROUPS = {"gender": ["male", "female", ""], "age": ["teens", "twenties", "thirties", "forties", "fifties", ""],
          "accent": ["brasil", "portugal", "angola", ""]}

# The peer: every row in the document from the start, same cells, same data.
FULL_TABLE_SCRIPT = """
const data = JSON.parse(document.getElementById("report-data").textContent);
const col = Object.fromEntries(data.columns.map((n, i) => [n, i]));
const table = document.createElement("table");
const body = document.createElement("tbody");
for (const r of data.rows) {
  const tr = document.createElement("tr");
  const group = [r[col.gender], r[col.age], r[col.accent]].filter(Boolean).join(" · ");
  for (const v of [r[col.id], r[col.wer].toFixed(3), r[col.cer].toFixed(3), r[col.duration].toFixed(1), group,
                   r[col.reference]]) {
    const td = document.createElement("td"); td.textContent = v; tr.append(td);
  }
  body.append(tr);
}
table.append(body);
document.body.append(table);
document.documentElement.dataset.ready = String(performance.now());
"""


def synthetic_report(directory: Path, utterances: int, seed: int = 0) -> dict[str, Any]:
    """Write a report of ``utterances`` synthetic rows into ``directory``; returns the writer's timings."""
    rng = random.Random(seed)
    normalizer = TextNormalizer()
    sentences = [normalizer(s) for s in read_tsv(CORPUS / "train.tsv")["sentence"]]
    vocab = Vocabulary.build(sentences + [" ".join("abcdefghijklmnopqrstuvwxyz")])
    words = sorted({w for s in sentences for w in s.split()})
    recognizer = SimpleNamespace(vocab=vocab, samples_per_frame=320)
    report = EvaluationReport(directory, recognizer)  # type: ignore[arg-type]
    clip = str(sorted((CORPUS / "clips").glob("*.mp3"))[0])
    scored: list[Scored] = []
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    for i in range(utterances):
        reference = rng.choice(sentences)
        hypothesis = [w if rng.random() > 0.15 else rng.choice(words) for w in reference.split()]
        if rng.random() < 0.2:
            hypothesis.insert(rng.randrange(len(hypothesis) + 1), rng.choice(words))
        if rng.random() < 0.2 and len(hypothesis) > 1:
            hypothesis.pop(rng.randrange(len(hypothesis)))
        duration = rng.uniform(2.0, 8.0)
        logits = torch.randn(int(duration * 50), len(vocab), generator=generator)
        logits[:, vocab.pad_id] += 2.0  # mostly blank, as a trained CTC model
        report(i, Transcript(clip, " ".join(hypothesis), duration, log_probs=logits.log_softmax(dim=-1)))
        groups = {key: rng.choice(values) for key, values in GROUPS.items()}
        scored.append(score_utterance(f"common_voice_xx_{10_000_000 + i}.mp3", reference, " ".join(hypothesis), groups))
    collected = time.perf_counter() - started
    results = {"model": "synthetic", "data": "synthetic", "split": "test", "decoder": "greedy", "dtype": "float32",
               "device": "cpu", **error_rates(scored), "skipped": 0, "audio_hours": sum(report.durations) / 3600,
               "by": {key: breakdown(scored, key) for key in GROUPS}}
    started = time.perf_counter()
    report.write(results, scored, [clip] * utterances)
    written = time.perf_counter() - started
    return {"collect_s": round(collected, 2), "write_s": round(written, 2)}


def full_table_page(report_dir: Path) -> Path:
    """The peer page: the report's data with the full-table script instead of the report's."""
    page = (report_dir / "index.html").read_text(encoding="utf-8")
    start = page.index('<script type="application/json" id="report-data">')
    data_end = page.index("</script>", start) + len("</script>")
    peer = report_dir / "full_table.html"
    peer.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'><link rel='icon' href='data:,'></head><body>"
                    + page[start:data_end] + "<script>" + FULL_TABLE_SCRIPT + "</script></body></html>",
                    encoding="utf-8")
    return peer


def time_load(browser: Any, path: Path) -> dict[str, float]:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.goto(path.as_uri())
    page.wait_for_selector("html[data-ready]")
    timings = page.evaluate("""() => { const nav = performance.getEntriesByType("navigation")[0];
        return {ready: Number(document.documentElement.dataset.ready), load: nav.loadEventEnd,
                dom_nodes: document.getElementsByTagName("*").length}; }""")
    if page.query_selector("#filter"):
        timings.update(page.evaluate("""async () => {
            const t = () => performance.now();
            const frame = () => new Promise(done => requestAnimationFrame(() => setTimeout(done, 0)));
            const out = {};
            const filter = document.getElementById("filter");
            let start = t(); filter.value = "a"; filter.dispatchEvent(new Event("input")); out.filter = t() - start;
            filter.value = ""; filter.dispatchEvent(new Event("input"));
            start = t(); document.querySelector("#table-head button[data-key=reference]").click(); out.sort = t() - start;
            const viewport = document.getElementById("viewport");
            start = t(); viewport.scrollTop = viewport.scrollHeight; viewport.dispatchEvent(new Event("scroll"));
            await frame(); out.scroll_to_end = t() - start;
            const row = document.querySelector("#spacer .row:last-child");
            start = t(); row.click();
            while (!document.querySelector("#detail .posteriors svg")) await new Promise(done => setTimeout(done, 1));
            out.select = t() - start;
            return out; }"""))
    page.close()
    if problems:
        raise RuntimeError(f"{path.name}: errors in the page: {problems[:3]}")
    return timings


def summarise(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    return {key: {"best": round(min(r[key] for r in runs), 1), "median": round(statistics.median(r[key] for r in runs), 1)}
            for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--utterances", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None, help="write the results JSON here")
    parser.add_argument("--keep", default=None, help="write the report here (and keep it) instead of a temp folder")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        report_dir = Path(args.keep or Path(tmp) / "report")
        writer = synthetic_report(report_dir, args.utterances)
        peer = full_table_page(report_dir)
        sizes = {"index_html_mb": round((report_dir / "index.html").stat().st_size / 1e6, 2),
                 "detail_files": len(list((report_dir / "detail").iterdir())),
                 "detail_total_mb": round(sum(p.stat().st_size for p in (report_dir / "detail").iterdir()) / 1e6, 2)}
        runs: dict[str, list[dict[str, float]]] = {"ptasr report": [], "full table (peer)": []}
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            version = browser.version
            for _ in range(args.repeats):  # alternate, so a busy moment hits both
                runs["ptasr report"].append(time_load(browser, report_dir / "index.html"))
                runs["full table (peer)"].append(time_load(browser, peer))
            browser.close()
        if not args.keep:
            peer.unlink()
    results = {
        "info": {"utterances": args.utterances, "repeats": args.repeats, "browser": f"Chromium {version} headless",
                 "cpu": cpu_name(), "cpu_count": os.cpu_count(),
                 "date": date.today().isoformat(), **sizes, **writer,
                 "note": "milliseconds from navigation start; shared machine, other jobs running"},
        "results": {name: summarise(r) for name, r in runs.items()},
    }
    print(json.dumps(results, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
