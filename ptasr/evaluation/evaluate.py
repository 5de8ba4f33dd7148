"""Evaluating a trained model on a test set: read the set, transcribe and score every clip, summarise, write.

``ptasr evaluate`` is this module behind its arguments; from Python the same run reads::

    from pathlib import Path
    from ptasr.evaluation.evaluate import evaluate, format_results, load_eval_set, summarise, write_results
    from ptasr.recognition.recognizer import Recognizer

    recognizer = Recognizer.load("runs/best.ckpt", device="auto")
    data = load_eval_set("cv-corpus-21.0/pt", "test", recognizer.normalizer).take(None)
    evaluation = evaluate(recognizer, data)  # decoder=ptasr.decoding.lm.BeamSearchDecoder(...) for beam search
    results = summarise(evaluation, recognizer, model="runs/best.ckpt")
    write_results(Path("results"), data.name, results, evaluation.scored)
    print(format_results(results))

:func:`transcribe_once` and :func:`tune` are ``evaluate --tune``: the network runs once, every (LM weight,
word score) pair of a grid decodes its log-probabilities. Rates come from ``ptasr.evaluation.scoring``, the one WER/CER;
the browsable page of ``--report`` from ``ptasr.evaluation.report``.

An evaluation set need not come from files (a random tiny model here, so only the counts are known):

>>> import torch
>>> from ptasr.data.text import TextNormalizer, Vocabulary
>>> from ptasr.recognition.recognizer import Recognizer
>>> from ptasr.model.config import Wav2Vec2Config
>>> from ptasr.model.wav2vec2 import Wav2Vec2CTC
>>> vocab = Vocabulary.build(["ab"])
>>> model = Wav2Vec2CTC(Wav2Vec2Config.preset("tiny", vocab_size=len(vocab), pad_token_id=vocab.pad_id))
>>> recognizer = Recognizer(model, vocab, TextNormalizer())
>>> data = EvalSet("zeros", ["a", "b"], [torch.zeros(8000), torch.zeros(4000)], ["a b", "b"], [{}, {}])
>>> results = summarise(evaluate(recognizer, data), recognizer, model="tiny")
>>> results["decoder"], results["utterances"], results["words"]
('greedy', 2, 3)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptasr.data.audio import AudioDecodeError
from ptasr.errors import DataError, SettingError
from ptasr.evaluation.scoring import Scored, breakdown, confidence_results, error_rates, score_utterance, worst
from ptasr.storage import staged_files, storage_error

if TYPE_CHECKING:
    from ptasr.data.text import TextNormalizer
    from ptasr.decoding.confidence import ConfidenceMeasure
    from ptasr.decoding.lm import BeamSearchDecoder, Trial
    from ptasr.recognition.inputs import AudioInput
    from ptasr.recognition.recognizer import Chunking, Recognizer
    from ptasr.recognition.transcript import Transcript

BREAKDOWN_COLUMNS = ("gender", "age", "accent")


# --- the evaluation set --------------------------------------------------------------------------------------


@dataclass
class EvalSet:
    """The utterances to score: ids, audio (paths or waveforms), normalised references and metadata, row for row.

    ``source`` and ``split`` say where it was read from, as the results files name it.
    """

    name: str
    ids: list[str]
    audio: list[AudioInput]
    references: list[str]
    groups: list[dict[str, str]]
    duplicates: int = 0  # rows dropped as repeats of an earlier row's clip
    source: str = ""
    split: str = ""
    origin: str = ""  # the input resolved (file, or folder and split): results files of two origins never mix

    def take(self, limit: int | None) -> EvalSet:
        """Rows with a non-empty reference (an empty one has no word to get wrong), the first ``limit`` of them."""
        rows = [i for i, text in enumerate(self.references) if text][:limit]
        return self._rows(rows, self.duplicates)

    def first_rows(self) -> EvalSet:
        """Each clip once: a clip listed twice is a duplicate row, dropped and counted as training drops it."""
        from ptasr.data.filters import first_rows

        keep = first_rows(self.ids)
        return self._rows([i for i, first in enumerate(keep) if first], self.duplicates + int((~keep).sum()))

    def _rows(self, rows: list[int], duplicates: int) -> EvalSet:
        ids, audio, references, groups = ([column[i] for i in rows] for column in
                                          (self.ids, self.audio, self.references, self.groups))
        return replace(self, ids=ids, audio=audio, references=references, groups=groups, duplicates=duplicates)


def load_eval_set(data: str, split: str, normalizer: TextNormalizer, language: str | None = None) -> EvalSet:
    """``--data`` read as train.py reads a source of ``data.test`` (:func:`ptasr.data.sources.open_source`, the
    one way from a path to its reader): a release folder (``language`` where it holds several) or archive and
    its ``split``, a ``.csv``/``.tsv``/``.jsonl`` file (a Common Voice split TSV, recognised by its columns, with
    its clips in ``clips/`` beside it; any other file a manifest, paths from its folder; ``split`` does not
    apply to a file), a folder of a Hugging Face dataset's parquet files and its ``split``; each clip once
    (:meth:`EvalSet.first_rows`)."""
    from ptasr.data.commonvoice import CommonVoiceRelease
    from ptasr.data.manifests import ManifestFile
    from ptasr.data.sources import DataSource, open_source, source_kind

    source = DataSource(path=data, language=language)
    if source_kind(source) != "manifest":
        source.splits = [split]
    try:
        reader, (split,) = open_source(source, "test")
    except SettingError as error:  # the data module's wording names its own setting; here the flag is --language
        raise SettingError(str(error).replace("the source's language (language: pt)", "--language")) from error
    manifest = reader.read_split(split, normalizer)  # texts come back normalised, durations checked
    if isinstance(reader, ManifestFile):  # its name, extension included: a.csv and a.jsonl share no results files
        name, origin = reader.path.name.replace(".", "_"), str(reader.path)
    elif isinstance(reader, CommonVoiceRelease):
        name, origin = f"{reader.root.name}_{split}", f"{reader.root.resolve()} {split}"
    else:
        name, origin = f"{Path(reader.name).name}_{split}", f"{Path(reader.name).resolve()} {split}"
    columns = {"gender": manifest.genders, "age": manifest.ages, "accent": manifest.accents}
    groups = [dict(zip(columns, values)) for values in zip(*columns.values())]
    rows = EvalSet(name, list(manifest.ids), [manifest.reader(key) for key in manifest.keys], list(manifest.texts),
                   groups, origin=origin)
    return replace(rows, source=data, split=split).first_rows()


# --- transcribing and scoring --------------------------------------------------------------------------------


@dataclass
class Evaluation:
    """An evaluation set scored: the utterances, the clips that could not be read, the audio and time it took."""

    data: EvalSet
    scored: list[Scored]
    skipped: list[str]  # "id: reason" of each clip that could not be read
    seconds: float  # audio scored
    elapsed: float  # seconds spent transcribing and scoring


def evaluate(recognizer: Recognizer, data: EvalSet, batch_size: int = 8, chunking: Chunking | None = None,
             decoder: BeamSearchDecoder | None = None,
             observe: Callable[[int, Transcript], None] | None = None,
             measures: Sequence[ConfidenceMeasure] | None = None) -> Evaluation:
    """Transcribe and score every row of ``data``, greedy or with ``decoder``.

    Every predicted word gets its confidence under each of ``measures`` (default: the recognizer's and the
    max-probability baseline, ``ptasr.decoding.confidence``) in ``Scored.confidences``.

    ``observe(row, transcript)`` sees every scored row's transcript, in the order of the scored utterances,
    with its log-probabilities (for ``ptasr.evaluation.report.EvaluationReport``). Raises when ``data`` is empty or
    none of its clips can be read: a rate of 0 over no utterance would read as perfect.
    """
    from ptasr.recognition.recognizer import Chunking

    measures = _measures(recognizer, measures)
    if not data.ids:
        raise DataError(f"{data.source} ({data.split}) has no utterances with a non-empty transcript")
    started = time.perf_counter()
    # word timestamps bring each word's confidence; the kept log-probabilities, the baseline's (word_scores)
    transcripts = recognizer.transcribe_iter(data.audio, batch_size=batch_size, chunking=chunking or Chunking(),
                                             decoder=decoder, word_timestamps=True, keep_log_probs=True)
    scored, skipped, seconds = [], [], 0.0
    for row, transcript in enumerate(transcripts):
        if transcript.error is not None:
            skipped.append(f"{data.ids[row]}: {transcript.error}")
            continue
        seconds += transcript.duration
        if observe is not None:
            observe(row, transcript)
        scored.append(_score_with_confidences(data, recognizer, row, transcript, measures))
    if not scored:
        raise AudioDecodeError(f"none of the {len(data.ids)} clips of {data.source} could be read; first: {skipped[0]}")
    return Evaluation(data, scored, skipped, seconds, time.perf_counter() - started)


def _measures(recognizer: Recognizer, measures: Sequence[ConfidenceMeasure] | None) -> Sequence[ConfidenceMeasure]:
    """The confidence measures an evaluation reports: the recognizer's and the max-probability baseline."""
    from ptasr.decoding.confidence import BASELINE_MEASURE

    return (recognizer.confidence, BASELINE_MEASURE) if measures is None else measures


def _score_with_confidences(data: EvalSet, recognizer: Recognizer, row: int, transcript: Transcript,
                            measures: Sequence[ConfidenceMeasure]) -> Scored:
    item = _score_row(data, recognizer.normalizer, row, transcript.text)
    item.confidences = word_scores(recognizer, transcript, item.prediction, measures)
    return item


def _score_row(data: EvalSet, normalizer: TextNormalizer, row: int, prediction: str) -> Scored:
    # the reference was normalised on reading: the same normalisation on both sides
    return score_utterance(data.ids[row], data.references[row], normalizer(prediction), data.groups[row])


def word_scores(recognizer: Recognizer, transcript: Transcript, prediction: str,
                measures: Sequence[ConfidenceMeasure]) -> dict[str, tuple[float, ...]]:
    """Each word of the scored ``prediction``'s confidence under each of ``measures``, by measure name
    (``Scored.confidences``), from a transcript with words, log-probabilities and spans.

    Words are normalised one by one as the whole prediction was; where that does not give the prediction's
    words (a normaliser that joins words), the utterance has no confidences rather than misplaced ones.
    """
    from ptasr.decoding.confidence import word_confidences

    if transcript.words is None or transcript.log_probs is None or transcript.spans is None:
        return {}
    copies = [len(recognizer.normalizer(word.word).split()) for word in transcript.words]  # 0: normalised away
    if sum(copies) != len(prediction.split()):
        return {}
    delimiter = recognizer.vocab.word_delimiter_id
    return {measure.name: tuple(c for c, n in zip(
                word_confidences(transcript.log_probs, transcript.spans, delimiter, measure), copies, strict=True)
                for _ in range(n))
            for measure in measures}


def describe_decoder(decoder: BeamSearchDecoder | None) -> dict[str, Any]:
    """The results' ``decoder`` entry, and ``lm`` with the weights it ran with when there is one."""
    if decoder is None:
        return {"decoder": "greedy"}
    if decoder.lm_path is None:
        return {"decoder": "beam"}
    return {"decoder": "beam+lm",
            "lm": {"path": decoder.lm_path, "lm_weight": decoder.lm_weight, "word_score": decoder.word_score}}


def summarise(evaluation: Evaluation, recognizer: Recognizer, model: str, decoder: BeamSearchDecoder | None = None,
              worst_count: int = 10) -> dict[str, Any]:
    """Everything the results files hold: corpus rates, breakdowns, worst utterances, settings and speed.

    ``model`` names the model as the user gave it; ``decoder`` is the one the transcripts came from.
    """
    from ptasr.decoding.confidence import BASELINE_MEASURE

    scored, seconds = evaluation.scored, evaluation.seconds
    return {
        "model": model, "data": evaluation.data.source, "split": evaluation.data.split,
        "origin": evaluation.data.origin,
        **describe_decoder(decoder),
        "device": str(recognizer.device), "dtype": str(recognizer.dtype).removeprefix("torch."),
        **error_rates(scored),
        "skipped": len(evaluation.skipped),
        "audio_hours": round(seconds / 3600, 4),
        "real_time_factor": round(evaluation.elapsed / max(seconds, 1e-9), 4),
        "by": {column: breakdown(scored, column) for column in BREAKDOWN_COLUMNS},
        "worst": [{"id": s.id, "errors": s.word_errors, "reference": s.reference, "prediction": s.prediction}
                  for s in worst(scored, worst_count)],
        "confidence": confidence_results(scored, recognizer.confidence.name, BASELINE_MEASURE.name),
    }


# --- the results files and the printed summary ---------------------------------------------------------------


def format_results(results: dict[str, Any]) -> str:
    """The human-readable summary: totals, the breakdown tables, the worst utterances."""
    lines = [f"{results['model']} on {results['data']} ({results['split']}), {results['decoder']} decoding, "
             f"{results['dtype']} on {results['device']}",
             f"WER: {results['wer']:.4f}", f"CER: {results['cer']:.4f}",
             f"utterances: {results['utterances']} ({results['skipped']} skipped), words: {results['words']}, "
             f"audio: {results['audio_hours'] * 60:.1f} min, real-time factor: {results['real_time_factor']:.3f}"]
    if results.get("confidence"):
        lines.append(format_confidence(results["confidence"]))
    for column, table in results["by"].items():
        if set(table) == {"(unknown)"}:
            continue  # the data has no such metadata
        lines += ["", f"| {column} | utterances | words | WER | CER |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {value} | {r['utterances']} | {r['words']} | {r['wer']:.4f} | {r['cer']:.4f} |"
                  for value, r in table.items()]
    if results["worst"]:
        lines += ["", "| worst utterances | word errors | reference | prediction |", "|---|---:|---|---|"]
        lines += [f"| {w['id']} | {w['errors']} | {w['reference']} | {w['prediction']} |" for w in results["worst"]]
    return "\n".join(lines)


def format_confidence(confidence: dict[str, Any]) -> str:
    """The summary's line on word confidence: the AUROC of wrong-word detection, the measure's and the baseline's."""

    def area(value: float | None) -> str:
        return "n/a (needs right and wrong words)" if value is None else f"{value:.4f}"

    return (f"word confidence AUROC (finding the {confidence['wrong_words']} wrong of {confidence['words']} predicted "
            f"words): {area(confidence['auroc'])} with {confidence['measure']}, "
            f"{area(confidence['baseline_auroc'])} with {confidence['baseline']}")


def check_results_free(directory: Path, name: str, origin: str) -> None:
    """Refuse results files named ``name`` in ``directory`` that hold another input's results (their JSON's
    ``origin`` differs): two inputs never share results files, so one run cannot silently replace another's.
    The same input evaluated again (another model, another decoder) replaces its own files, as before."""
    path = directory / f"{name}_eval_results.json"
    if not origin or not path.is_file():
        return
    try:
        earlier = json.loads(path.read_text(encoding="utf-8")).get("origin")
    except (OSError, ValueError, AttributeError):
        return  # unreadable or not ours: nothing to protect, it is replaced
    if earlier and earlier != origin:
        raise SettingError(f"{path} holds the results of {earlier}, not of {origin}: pass another --output-dir "
                           f"(or move those files away) so that neither replaces the other")


def write_results(directory: Path, name: str, results: dict[str, Any], scored: Sequence[Scored]) -> str:
    """``<name>_eval_results.txt`` (as the robust-speech-event's eval.py writes), ``.json`` and predictions;
    refused where they would replace another input's (:func:`check_results_free`).

    Returns the line that says where they are. See :func:`results_written` for writing them with other files."""
    with results_written(directory, name, results, scored) as line:
        return line


@contextmanager
def results_written(directory: Path, name: str, results: dict[str, Any], scored: Sequence[Scored]) -> Iterator[str]:
    """The results files of :func:`write_results`, written under temporary names and renamed into place when the
    block completes (``evaluate --report`` writes its page in it): all of them, or, if anything fails, none.

    Fields of the predictions TSV are escaped (``ptasr.data.cache.escape_field``): a clip path may hold a tab or
    a newline. Its ``confidence`` column holds one number per word of ``prediction``, space-separated in the
    same order (the results' ``confidence.measure``), or nothing where the utterance has none. A write that
    fails is one line naming the file (``ptasr.storage``).
    """
    from ptasr.data.cache import escape_field

    measure = (results.get("confidence") or {}).get("measure", "")

    check_results_free(directory, name, results.get("origin", ""))
    stem = directory / name
    targets = [Path(f"{stem}_eval_results.txt"), Path(f"{stem}_eval_results.json"), Path(f"{stem}_predictions.tsv")]
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise storage_error(directory, error) from error
    with staged_files(targets) as (txt, jsn, tsv):
        txt.write_text(f"WER: {results['wer']}\nCER: {results['cer']}\n", encoding="utf-8")
        jsn.write_text(json.dumps(results, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        with open(tsv, "w", encoding="utf-8") as f:
            f.write("id\tword_errors\treference_words\treference\tprediction\tconfidence\n")
            f.writelines(f"{escape_field(s.id)}\t{s.word_errors}\t{s.reference_words}\t{escape_field(s.reference)}\t"
                         f"{escape_field(s.prediction)}\t{_confidence_field(s, measure)}\n" for s in scored)
        yield f"results written to {stem}_eval_results.txt, .json and {stem.name}_predictions.tsv"


def _confidence_field(scored: Scored, measure: str) -> str:
    return " ".join(f"{c:.3f}" for c in scored.confidences.get(measure, ()))


# --- the LM weight search (evaluate --tune) ------------------------------------------------------------------


@dataclass
class Emissions:
    """An evaluation set transcribed once, greedy, its log-probabilities kept for decoding under other weights."""

    data: EvalSet
    recognizer: Recognizer
    transcripts: list[Transcript]
    rows: list[int]  # the rows whose clip could be read
    elapsed: float  # seconds the network took

    def score(self, predictions: Sequence[str]) -> list[Scored]:
        """The readable rows scored against one prediction each, in the order of ``rows``."""
        return [_score_row(self.data, self.recognizer.normalizer, row, prediction)
                for row, prediction in zip(self.rows, predictions)]

    def evaluation(self, decoder: BeamSearchDecoder, started: float,
                   measures: Sequence[ConfidenceMeasure] | None = None) -> Evaluation:
        """The readable rows decoded again with ``decoder`` and scored as :func:`evaluate` scores them, every
        predicted word with its confidences; the time since ``started`` (``time.perf_counter``) adds to the
        network's."""
        measures = _measures(self.recognizer, measures)
        scored = []
        for row in self.rows:
            transcript = self.transcripts[row]
            decoded = self.recognizer.decode(transcript.source, transcript.log_probs, transcript.duration,
                                             word_timestamps=True, decoder=decoder)
            scored.append(_score_with_confidences(self.data, self.recognizer, row, decoded, measures))
        skipped = [f"{self.data.ids[i]}: {t.error}" for i, t in enumerate(self.transcripts) if t.error is not None]
        seconds = sum(self.transcripts[i].duration for i in self.rows)
        return Evaluation(self.data, scored, skipped, seconds, self.elapsed + time.perf_counter() - started)


def transcribe_once(recognizer: Recognizer, data: EvalSet, batch_size: int = 8,
                    chunking: Chunking | None = None) -> Emissions:
    """Run the network over ``data`` once, keeping each clip's (T, V) log-probabilities."""
    from ptasr.recognition.recognizer import Chunking

    started = time.perf_counter()
    transcripts = list(recognizer.transcribe_iter(data.audio, batch_size=batch_size, keep_log_probs=True,
                                                  chunking=chunking or Chunking()))
    rows = [i for i, t in enumerate(transcripts) if t.error is None]
    if not rows:
        raise AudioDecodeError(f"none of the {len(data.ids)} clips of {data.source} could be read")
    return Emissions(data, recognizer, transcripts, rows, time.perf_counter() - started)


@dataclass
class Tuning:
    """A weight search: every trial, the best one, greedy decoding's rates, and the best pair's evaluation."""

    trials: list[Trial]
    best: Trial
    greedy: dict[str, float | int]
    evaluation: Evaluation

    def edges(self) -> list[str]:
        """The best values (as ``LM weight 4``) on the edge of a grid of more than two values, where a wider grid
        may do better; 0 is never an edge (no LM, no bonus: a natural end)."""
        weights = sorted({t.lm_weight for t in self.trials})
        scores = sorted({t.word_score for t in self.trials})
        return [f"{name} {value:g}" for name, value, grid in (("LM weight", self.best.lm_weight, weights),
                                                              ("word score", self.best.word_score, scores))
                if len(grid) > 2 and value in (grid[0], grid[-1]) and value != 0]


def tune(emissions: Emissions, decoder: BeamSearchDecoder, lm_weights: Sequence[float],
         word_scores: Sequence[float], on_trial: Callable[[Trial], None] | None = None) -> Tuning:
    """Decode ``emissions`` with every (LM weight, word score) pair and score each; ``on_trial`` sees each trial
    as it finishes. Whether the trials can choose at all is ``ptasr.decoding.lm.can_choose(tuning.trials)``."""
    from ptasr.decoding.lm import best_trial, search_weights

    started = time.perf_counter()
    transcripts = emissions.transcripts
    trials = search_weights(decoder, [transcripts[i].log_probs for i in emissions.rows],
                            lambda predictions: error_rates(emissions.score(predictions)),
                            lm_weights, word_scores, on_trial=on_trial)
    best = best_trial(trials)
    greedy = error_rates(emissions.score([transcripts[i].text for i in emissions.rows]))
    # the best pair decoded once more, for the spans and word confidences its results carry
    best_decoder = decoder.with_weights(best.lm_weight, best.word_score)
    return Tuning(trials, best, greedy, emissions.evaluation(best_decoder, started))
