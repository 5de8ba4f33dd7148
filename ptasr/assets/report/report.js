// The evaluation report page (ptasr/report.py writes the data). Plain DOM, no library.
// The table is virtualised: only the rows in view are in the document, so 10 000 utterances stay fast.
// Alignments and posteriors come from detail/NNNNN.js files, loaded by <script> tags on selection
// (fetch is blocked for pages opened from file://).
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("report-data").textContent);
  const col = Object.fromEntries(data.columns.map((name, i) => [name, i]));
  const rows = data.rows;
  const SVG = "http://www.w3.org/2000/svg";
  const ROW_HEIGHT = 28;  // px, as --row in the style
  const OVERSCAN = 8;
  const fmt = (x, digits = 3) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));

  function el(tag, attrs = {}, text) {
    const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // The table shows ids without the prefix they all share ("common_voice_pt_"), cut at a separator.
  const idPrefix = (() => {
    let prefix = rows.length ? String(rows[0][col.id]) : "";
    for (const r of rows) while (!String(r[col.id]).startsWith(prefix)) prefix = prefix.slice(0, -1);
    const cut = Math.max(...["_", "-", "/", "."].map((sep) => prefix.lastIndexOf(sep)));
    return cut >= 3 ? prefix.slice(0, cut + 1) : "";
  })();
  const shortId = (id) => (idPrefix ? "…" + String(id).slice(idPrefix.length) : String(id));

  function group(row) {
    return ["gender", "age", "accent"].map((k) => row[col[k]]).filter(Boolean).join(" · ");
  }

  // --- header, corpus rates, breakdown charts ------------------------------------------------------------

  function renderMeta() {
    const m = data.meta;
    const items = [["model", m.model], ["data", m.data], ["split", m.split], ["decoding", m.decoder],
      ["precision", `${m.dtype} on ${m.device}`], ["date", m.date],
      ["utterances", `${m.utterances}` + (m.skipped ? ` (${m.skipped} unreadable, skipped)` : "")],
      ["audio", `${(m.audio_hours * 60).toFixed(1)} min`]];
    const dl = document.getElementById("meta");
    for (const [key, value] of items) {
      const item = el("div");
      item.append(el("dt", {}, key), el("dd", {}, String(value)));
      dl.append(item);
    }
  }

  function renderSummary() {
    const m = data.meta;
    const box = document.getElementById("summary");
    for (const [label, value, note] of [["WER", fmt(m.wer), `${m.words} reference words`],
      ["CER", fmt(m.cer), "characters"], ["utterances", String(rows.length), `${fmt(m.audio_hours * 60, 1)} min of audio`]]) {
      const card = el("div", { class: "card" });
      card.append(el("div", { class: "value", "data-metric": label }, value), el("div", { class: "label" }, `${label} · ${note}`));
      box.append(card);
    }
  }

  function renderChart(name, table) {
    const entries = Object.entries(table);
    const labelWidth = 110, barWidth = 250, textWidth = 200, rowHeight = 30, top = 8;
    const scale = Math.max(...entries.map(([, r]) => Math.max(r.wer, r.cer)), data.meta.wer, 1e-9);
    const height = top + entries.length * rowHeight + 4;
    const svg = el("svg:svg", { width: labelWidth + barWidth + textWidth, height, role: "img",
      "aria-label": `WER and CER by ${name}` });
    entries.forEach(([value, r], i) => {
      const y = top + i * rowHeight;
      const g = el("svg:g", { "data-group": value });
      g.append(el("svg:title", {}, `${name} ${value}: WER ${fmt(r.wer)}, CER ${fmt(r.cer)}, ` +
        `${r.utterances} utterances, ${r.words} words`));
      g.append(el("svg:text", { x: labelWidth - 8, y: y + 14, "text-anchor": "end" }, value));
      g.append(el("svg:rect", { class: "bar-wer", x: labelWidth, y: y + 2, height: 11,
        width: Math.max(1, (r.wer / scale) * barWidth) }));
      g.append(el("svg:rect", { class: "bar-cer", x: labelWidth, y: y + 14, height: 8,
        width: Math.max(1, (r.cer / scale) * barWidth) }));
      g.append(el("svg:text", { x: labelWidth + barWidth + 8, y: y + 12 }, `WER ${fmt(r.wer)} · CER ${fmt(r.cer)}`));
      g.append(el("svg:text", { class: "muted", x: labelWidth + barWidth + 8, y: y + 25 },
        `n = ${r.utterances} utt., ${r.words} words`));
      svg.append(g);
    });
    const x = labelWidth + (data.meta.wer / scale) * barWidth;
    svg.append(el("svg:line", { class: "corpus", x1: x, x2: x, y1: 2, y2: height - 2 }));
    const box = el("div", { class: "chart", "data-breakdown": name });
    box.append(el("h2", {}, `By ${name}`), svg);
    const legend = el("div", { class: "legend" });
    for (const [cls, text] of [["--wer", "WER"], ["--cer", "CER"]]) {
      const item = el("span");
      item.append(el("span", { class: "swatch", style: `background: var(${cls})` }), text);
      legend.append(item);
    }
    legend.append(el("span", {}, "dashed: corpus WER"));
    box.append(legend);
    document.getElementById("charts").append(box);
  }

  // --- the utterance table ------------------------------------------------------------------------------

  const headers = [["id", "id", false], ["wer", "WER", true], ["cer", "CER", true], ["duration", "s", true],
    ["group", "speaker group", false], ["reference", "reference", false]];
  const haystack = rows.map((r) => `${r[col.id]}\n${r[col.reference]}\n${r[col.prediction]}\n${group(r)}`.toLowerCase());
  const state = { filter: "", key: "wer", descending: true, view: [], selected: -1 };
  const viewport = document.getElementById("viewport");
  const spacer = document.getElementById("spacer");

  const collator = new Intl.Collator();  // one collator: localeCompare builds one per call, 10x slower

  function sortValue(i, key) {
    return key === "group" ? group(rows[i]) : rows[i][col[key]];  // strings: ids, texts, groups
  }

  function updateView() {
    const needle = state.filter.trim().toLowerCase();
    const view = [];
    for (let i = 0; i < rows.length; i++) if (!needle || haystack[i].includes(needle)) view.push(i);
    const { key, descending } = state;
    const sign = descending ? -1 : 1;
    const numeric = typeof (rows[0] || [])[col[key]] === "number";
    view.sort((a, b) => {
      const x = sortValue(a, key), y = sortValue(b, key);
      const order = numeric ? x - y : collator.compare(x, y);
      return order ? sign * order : a - b;
    });
    state.view = view;
    document.getElementById("count").textContent = `${view.length} of ${rows.length} utterances`;
    for (const button of document.querySelectorAll("#table-head button")) {
      button.setAttribute("aria-sort", button.dataset.key === key ? (descending ? "descending" : "ascending") : "none");
    }
    spacer.style.height = `${view.length * ROW_HEIGHT}px`;
    drawRows();
  }

  let pending = false;
  function onScroll() {  // at most one redraw per frame
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; drawRows(); });
  }

  function drawRows() {
    const first = Math.max(0, Math.floor(viewport.scrollTop / ROW_HEIGHT) - OVERSCAN);
    const last = Math.min(state.view.length, Math.ceil((viewport.scrollTop + viewport.clientHeight) / ROW_HEIGHT) + OVERSCAN);
    const fragment = document.createDocumentFragment();
    for (let k = first; k < last; k++) {
      const i = state.view[k];
      const r = rows[i];
      const row = el("div", { class: "row" + (i === state.selected ? " selected" : ""), role: "row",
        "data-index": i, "data-id": r[col.id], style: `top: ${k * ROW_HEIGHT}px` });
      row.append(el("span", { role: "cell", title: r[col.id] }, shortId(r[col.id])),
        el("span", { role: "cell", class: "num" }, fmt(r[col.wer])),
        el("span", { role: "cell", class: "num" }, fmt(r[col.cer])),
        el("span", { role: "cell", class: "num" }, fmt(r[col.duration], 1)),
        el("span", { role: "cell", title: group(r) }, group(r)),
        el("span", { role: "cell", title: r[col.reference] }, r[col.reference]));
      fragment.append(row);
    }
    spacer.replaceChildren(fragment);
  }

  function renderHead() {
    const head = document.getElementById("table-head");
    for (const [key, label, numeric] of headers) {
      const button = el("button", { type: "button", role: "columnheader", "data-key": key, class: numeric ? "num" : "" }, label);
      button.addEventListener("click", () => {
        state.descending = state.key === key ? !state.descending : numeric;  // numbers: worst (largest) first
        state.key = key;
        updateView();
      });
      head.append(button);
    }
  }

  function moveSelection(delta) {
    const k = state.view.indexOf(state.selected);
    const next = state.view[Math.min(state.view.length - 1, Math.max(0, k + delta))];
    if (next === undefined) return;
    select(next);
    scrollToSelected();
  }

  function scrollToSelected() {
    const k = state.view.indexOf(state.selected);
    if (k < 0) return;  // filtered out
    const top = k * ROW_HEIGHT;
    if (top < viewport.scrollTop) viewport.scrollTop = top;
    else if (top + ROW_HEIGHT > viewport.scrollTop + viewport.clientHeight) viewport.scrollTop = top + ROW_HEIGHT - viewport.clientHeight;
  }

  // --- the selected utterance ---------------------------------------------------------------------------

  const shards = {};
  window.ptasrDetail = (shard, items) => { shards[shard] = items; };

  function loadShard(shard) {
    return new Promise((resolve, reject) => {
      if (shards[shard]) return resolve(shards[shard]);
      const name = `detail/${String(shard).padStart(5, "0")}.js`;
      const script = el("script", { src: name });
      script.onload = () => (shards[shard] ? resolve(shards[shard]) : reject(new Error(`${name} holds no data`)));
      script.onerror = () => reject(new Error(`${name} could not be loaded (is the detail/ folder beside the page?)`));
      document.head.append(script);
    });
  }

  function select(i) {
    state.selected = i;
    for (const row of spacer.children) row.classList.toggle("selected", Number(row.dataset.index) === i);
    const r = rows[i];
    history.replaceState(null, "", "#" + encodeURIComponent(r[col.id]));
    const box = document.getElementById("detail");
    box.replaceChildren();
    box.dataset.index = i;
    box.append(el("h2", {}, r[col.id]));
    box.append(el("p", { class: "facts" }, `WER ${fmt(r[col.wer])} · CER ${fmt(r[col.cer])} · ` +
      `${r[col.errors]} word errors / ${r[col.words]} words · ${fmt(r[col.duration], 2)} s` +
      (group(r) ? ` · ${group(r)}` : "")));
    box.append(el("audio", { controls: "", preload: "auto", src: r[col.audio] }));
    const alignment = el("div", { class: "alignment", "aria-busy": "true" });
    const posteriors = el("div");
    const confidence = el("div", { class: "confidence" });
    box.append(el("h3", {}, "Reference and hypothesis, word by word"), alignment,
      el("h3", {}, "Hypothesis by word confidence"), confidence, el("h3", {}, "CTC posteriors"), posteriors);
    loadShard(Math.floor(i / data.shard)).then((items) => {
      if (state.selected !== i) return;
      const item = items[i % data.shard];
      renderAlignment(alignment, item);
      renderConfidence(confidence, item.conf, String(r[col.prediction]).split(" ").filter(Boolean));
      renderPosteriors(posteriors, item.post, box.clientWidth - 34);
    }).catch((error) => {
      alignment.textContent = error.message;
      console.error(error.message);
    });
  }

  function renderAlignment(box, item) {
    const labels = el("span", { class: "rowlabels" });
    labels.append(el("span", {}, "ref"), el("span", {}, "hyp"));
    box.append(labels);
    const names = { e: "correct", s: "substitution", d: "deletion", i: "insertion" };
    for (const [op, ref, hyp] of item.align) {
      const pair = el("span", { class: `pair ${op}`, title: names[op], "data-op": op });
      pair.append(el("span", { class: "ref" }, ref), el("span", { class: "hyp" }, hyp));
      box.append(pair);
    }
    box.removeAttribute("aria-busy");
    const [s, d, ins, hits] = item.counts;
    const legend = el("div", { class: "legend" });
    for (const [cls, text] of [["--sub", `substitutions ${s}`], ["--del", `deletions ${d}`], ["--ins", `insertions ${ins}`]]) {
      const entry = el("span");
      entry.append(el("span", { class: "swatch", style: `background: var(${cls})` }), text);
      legend.append(entry);
    }
    legend.append(el("span", {}, `correct ${hits}`));
    box.after(legend);
  }

  // red (0: unsure) through yellow to green (1: sure); ptasr/decoding/confidence.py says what the number is
  function confidenceColour(c) {
    return `hsl(${Math.round(120 * c)} 70% 80%)`;
  }

  function renderConfidence(box, conf, words) {
    if (!conf || conf.length !== words.length) {
      box.append(el("p", { class: "note" }, "No word confidences for this utterance."));
      return;
    }
    words.forEach((word, k) => box.append(el("span", { class: "word", "data-confidence": conf[k],
      title: `confidence ${fmt(conf[k], 2)}`, style: `background: ${confidenceColour(conf[k])}` }, word)));
    const legend = el("div", { class: "legend confidence-legend" });
    const scale = el("span", { class: "scale" });
    for (const c of [0, 0.25, 0.5, 0.75, 1]) scale.append(el("span", { class: "swatch", style: `background: ${confidenceColour(c)}` }));
    const m = data.meta.confidence;
    legend.append(el("span", {}, "unsure 0"), scale, el("span", {}, "1 sure"));
    if (m) legend.append(el("span", {}, `${m.measure}; AUROC of wrong-word detection ${fmt(m.auroc)} ` +
      `(${m.baseline}: ${fmt(m.baseline_auroc)})`));
    box.after(legend);
  }

  function tokenColour(id) {
    return `hsl(${(id * 47) % 360} 62% 48%)`;
  }

  function renderPosteriors(box, post, width) {
    if (!post || !post.path.length) {
      box.append(el("p", { class: "note" }, "No posteriors for this utterance."));
      return;
    }
    const n = post.path.length;
    const colWidth = Math.max(2, Math.floor(Math.max(width, 200) / n));
    const plotTop = 18, plotHeight = 90, left = 42;
    const w = left + n * colWidth + 8, h = plotTop + plotHeight + 20;
    const svg = el("svg:svg", { width: w, height: h, role: "img", "aria-label": "CTC posteriors over time" });
    const y = (percent) => plotTop + plotHeight * (1 - percent / 100);
    // Stacked: the blank's share hangs from the top, the best other token's stands on the bottom; they never
    // overlap (the two sum to at most 100 %), and the gap between them is every other token.
    let d = `M ${left} ${plotTop}`;
    for (let c = 0; c < n; c++) d += ` L ${left + c * colWidth} ${y(100 - post.blank[c])} L ${left + (c + 1) * colWidth} ${y(100 - post.blank[c])}`;
    d += ` L ${left + n * colWidth} ${plotTop} Z`;
    svg.append(el("svg:path", { class: "blank-area", d }));
    let labelEnd = 0;
    for (let c = 0; c < n; c++) {
      const emitted = post.path[c] !== data.blank;
      const bar = el("svg:rect", { x: left + c * colWidth, width: colWidth, y: y(post.top_prob[c]),
        height: Math.max(0, y(0) - y(post.top_prob[c])), fill: tokenColour(post.top[c]), "fill-opacity": emitted ? 0.95 : 0.35 });
      bar.append(el("svg:title", {}, `${fmt(c * post.seconds_per_column, 2)} s: ` +
        `${data.tokens[post.top[c]]} ${post.top_prob[c]} %, blank ${post.blank[c]} %`));
      svg.append(bar);
      const x = left + c * colWidth;
      if (emitted && (c === 0 || post.path[c - 1] !== post.path[c])) {
        const token = data.tokens[post.path[c]];
        // one row of labels: a label that would overlap the previous one goes into the bar's tooltip only
        if (x >= labelEnd) {
          svg.append(el("svg:text", { x, y: 12, "data-token": post.path[c] }, token));
          labelEnd = x + 7 * token.length + 2;
        }
      }
    }
    svg.append(el("svg:line", { class: "gridline", x1: left, x2: left + n * colWidth, y1: y(50), y2: y(50) }));
    svg.append(el("svg:text", { class: "axis", x: 2, y: plotTop + 10 }, "blank"));
    svg.append(el("svg:text", { class: "axis", x: 2, y: y(0) }, "token"));
    const seconds = n * post.seconds_per_column;
    const tick = seconds > 20 ? 5 : seconds > 6 ? 1 : 0.5;
    for (let t = 0; t <= seconds; t += tick) {
      svg.append(el("svg:text", { class: "axis", x: left + (t / post.seconds_per_column) * colWidth, y: h - 4 }, `${t} s`));
    }
    const scroller = el("div", { class: "posteriors" });
    scroller.append(svg);
    box.append(scroller);
    box.append(el("p", { class: "note" }, "Grey, from the top: the blank's probability. Bars, from the bottom: " +
      "the most likely other token's (solid where the greedy path emits it). Letters: the greedy path, where " +
      "it emits a new token." +
      (post.step > 1 ? ` One column is ${post.step} frames, averaged.` : " One column per frame.")));
  }

  // --- links to one utterance: #<id> ----------------------------------------------------------------------

  // The rows a link names: the one whose id it is, else those whose clip's file name it is, with or without the
  // extension (a manifest's ids are absolute paths, and a file name is what a user has at hand).
  function rowsNamed(wanted) {
    const exact = rows.findIndex((r) => String(r[col.id]) === wanted);
    if (exact >= 0) return [exact];
    const named = [];
    rows.forEach((r, i) => {
      const name = String(r[col.id]).split(/[\\/]/).pop();
      const dot = name.lastIndexOf(".");
      if (name === wanted || (dot > 0 && name.slice(0, dot) === wanted)) named.push(i);
    });
    return named;
  }

  function linkTarget() {
    try {
      return decodeURIComponent(location.hash.slice(1)).trim();
    } catch (error) {  // a lone "%" in a hand-typed link
      return location.hash.slice(1).trim();
    }
  }

  // A link that names one row selects it; one that names none or several says so above the table, so that a
  // mistyped or ambiguous link is never silently ignored. On load, the first row is selected either way.
  function followLink(onLoad) {
    const wanted = linkTarget();
    const named = wanted ? rowsNamed(wanted) : [];
    if (named.length === 1) {
      clearLinkNote();
      select(named[0]);
      scrollToSelected();
      return;
    }
    if (onLoad && state.view.length) select(state.view[0]);
    if (!wanted) return;
    const note = document.getElementById("link-note");
    note.replaceChildren();
    note.dataset.matches = String(named.length);
    if (!named.length) {
      note.append(`The link's #${wanted} is neither the id nor the file name of any of the ${rows.length} utterances.`);
    } else {
      note.append(`The link's #${wanted} names ${named.length} utterances; choose one: `);
      named.forEach((i, k) => {
        const link = el("a", { href: "#" + encodeURIComponent(rows[i][col.id]) }, String(rows[i][col.id]));
        link.addEventListener("click", (event) => {  // also when the address holds this id already (no hashchange)
          event.preventDefault();
          clearLinkNote();
          select(i);
          scrollToSelected();
        });
        note.append(k ? ", " : "", link);
      });
    }
    note.hidden = false;
  }

  function clearLinkNote() {
    const note = document.getElementById("link-note");
    note.hidden = true;
    note.replaceChildren();
    delete note.dataset.matches;
  }

  // --- start --------------------------------------------------------------------------------------------

  renderMeta();
  renderSummary();
  for (const [name, table] of Object.entries(data.by)) renderChart(name, table);
  renderHead();
  document.getElementById("filter").addEventListener("input", (event) => {
    state.filter = event.target.value;
    updateView();
  });
  viewport.addEventListener("scroll", onScroll);
  viewport.addEventListener("click", (event) => {
    const row = event.target.closest(".row");
    if (row) select(Number(row.dataset.index));
  });
  viewport.addEventListener("keydown", (event) => {
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      event.preventDefault();
      moveSelection(event.key === "ArrowDown" ? 1 : -1);
    }
  });
  viewport.addEventListener("click", clearLinkNote);
  viewport.addEventListener("keydown", clearLinkNote);
  window.addEventListener("hashchange", () => followLink(false));  // a name typed into an open page's address
  updateView();
  followLink(true);
  document.documentElement.dataset.ready = String(performance.now());
})();
