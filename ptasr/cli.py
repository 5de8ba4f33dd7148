"""The ``ptasr`` command: ``transcribe``, ``evaluate`` and ``export`` a trained model.

MODEL is anything :meth:`ptasr.inference.Recognizer.load` takes: a ``train.py`` checkpoint (``.ckpt``), a
folder written by ``ptasr export`` (or any Hugging Face wav2vec2 CTC folder), or a hub id.

A wrong path, a checkpoint that does not fit, or unreadable data ends the command with one line on stderr
saying what and where, and exit status 1; ``PTASR_TRACEBACK=1`` shows the traceback (see ``ptasr/errors.py``).
``evaluate`` writes its results files before it prints, so a reader that leaves early (``| head``) costs
nothing; output to a closed pipe ends quietly with status 141.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO


from ptasr import __version__
from ptasr.data.audio import AudioDecodeError
from ptasr.errors import TRACEBACK_VARIABLE, DataError, MissingPathError, SettingError, UserError, exit_status

log = logging.getLogger("ptasr")

BREAKDOWN_COLUMNS = ("gender", "age", "accent")


# --- argument parsing ----------------------------------------------------------------------------------------


def positive_int(text: str) -> int:
    """argparse type of counts that must be at least 1 (a batch of 0 clips never ends).

    >>> positive_int("8")
    8
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive count (1 or more)")
    return value


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a train.py checkpoint (.ckpt), an exported model folder, or a hub id")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                        help="precision of the network; auto (default): bfloat16 where the device computes it "
                             "natively (Ampere+ GPUs, CPUs with AVX512-BF16 or AMX), else float32")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="audio chunks per forward pass (default: 8)")
    parser.add_argument("--chunk-length-s", type=float, default=20.0,
                        help="cut longer recordings into chunks of this many seconds; 0 disables (default: 20)")
    parser.add_argument("--stride-length-s", type=float, default=None,
                        help="context on each side of a chunk, seconds (default: chunk length / 6)")


def _add_backend_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                        help="onnx: run MODEL's model.onnx (from `ptasr export --onnx`) with ONNX Runtime on the "
                             "CPU, in float32 (default: torch)")


def _add_lm_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("beam search with an n-gram LM (needs: pip install 'ptasr[lm]')")
    group.add_argument("--lm", default=None, help="KenLM model (ARPA or binary); enables beam search")
    group.add_argument("--beam", action="store_true", help="beam search without an LM")
    group.add_argument("--lm-unit", choices=("word", "token"), default="word",
                       help="word-level LM (default) or one over the model's tokens (characters, '|' between words)")
    group.add_argument("--lm-words", default=None,
                       help="word list of a binary word-level LM (default: unigrams.txt beside it)")
    group.add_argument("--lm-weight", type=float, default=None,
                       help="weight of the LM's log10 probability (default: the tuned one in LM.json beside the "
                            "LM, else 2)")
    group.add_argument("--word-score", type=float, default=None,
                       help="score added per word (default: the tuned one in LM.json, else 0)")
    group.add_argument("--beam-size", type=positive_int, default=50, help="hypotheses kept per frame (default: 50)")
    group.add_argument("--beam-size-token", type=int, default=10,
                       help="most probable tokens tried per frame; 0: all (default: 10)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ptasr", description="Run, score and share wav2vec2 CTC models.",
                                     epilog=f"A wrong input or setting ends a command with one line; "
                                            f"{TRACEBACK_VARIABLE}=1 shows its traceback.")
    parser.add_argument("--version", action="version", version=f"ptasr {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    transcribe = commands.add_parser("transcribe", help="transcribe audio files or folders")
    _add_model_arguments(transcribe)
    transcribe.add_argument("audio", nargs="+", help="audio files (any format soundfile reads) or folders of them")
    transcribe.add_argument("--format", choices=("text", "jsonl"), default="text",
                            help="text: one transcript per line (prefixed by the file when several); jsonl: one "
                                 "JSON object per file")
    transcribe.add_argument("--word-timestamps", action="store_true", help="start and end time of every word")
    transcribe.add_argument("--output", "-o", default=None, help="write here instead of stdout")
    _add_backend_argument(transcribe)
    _add_lm_arguments(transcribe)
    transcribe.set_defaults(run=run_transcribe)

    evaluate = commands.add_parser("evaluate", help="WER and CER on a Common Voice split or TSV")
    _add_model_arguments(evaluate)
    _add_backend_argument(evaluate)
    evaluate.add_argument("--data", required=True,
                          help="a Common Voice release folder (or .tar.gz), a split TSV with clips/ beside it, "
                               "a manifest of your own recordings (.csv/.tsv/.jsonl: path,text[,duration]), or a "
                               "folder of a Hugging Face dataset's parquet files (audio and sentence columns)")
    evaluate.add_argument("--split", default="test",
                          help="split of a release or parquet folder (default: test)")
    evaluate.add_argument("--language", default=None, help="language folder, when --data holds several")
    evaluate.add_argument("--limit", type=int, default=None, help="evaluate only the first N utterances")
    evaluate.add_argument("--worst", type=int, default=10, help="worst utterances to show (default: 10)")
    evaluate.add_argument("--output-dir", default=".", help="where the results files go (default: .)")
    evaluate.add_argument("--report", metavar="DIR", default=None,
                          help="also write a browsable report of every utterance (alignments, audio, CTC "
                               "posteriors) to DIR/index.html; it opens from disk")
    _add_lm_arguments(evaluate)
    tune = evaluate.add_argument_group("LM weight search (with --lm)")
    tune.add_argument("--tune", action="store_true",
                      help="search the LM weight and word score on this split (network run once) and save the best "
                           "pair in LM.json beside the LM, where transcribe, evaluate and export read it")
    tune.add_argument("--lm-weights", type=_floats, default=None,
                      help="LM weights to try, comma-separated (default: 0,0.5,1,1.5,2,3,4)")
    tune.add_argument("--word-scores", type=_floats, default=None,
                      help="word scores to try, comma-separated; --word-scores=-1,0,1 when the first is negative "
                           "(default: -1,0,1,2)")
    evaluate.set_defaults(run=run_evaluate)

    export = commands.add_parser("export", help="write a Hugging Face model folder with a model card")
    export.add_argument("model", help="a train.py checkpoint (.ckpt) (or a model folder / hub id to re-export)")
    export.add_argument("out_dir", help="the folder to write")
    export.add_argument("--logs", default=None,
                        help="TensorBoard run folder for the results table (default: the checkpoint's run folder)")
    export.add_argument("--name", default=None, help="model name in the card (default: the folder's name)")
    export.add_argument("--language", default=None, help="language code for the card, e.g. pt")
    export.add_argument("--push-to-hub", metavar="REPO_ID", default=None, help="upload to this hub repo")
    export.add_argument("--private", action="store_true", help="create the hub repo as private")
    export.add_argument("--lm", default=None,
                        help="ship this KenLM model (.arpa or .bin) with its tuned weights (LM.json) in the layout "
                             "of transformers' Wav2Vec2ProcessorWithLM")
    export.add_argument("--overwrite", action="store_true",
                        help="write into OUT_DIR even if it is not empty (replacing its files of the same names)")
    export.add_argument("--onnx", action="store_true",
                        help="also write model.onnx (float32, dynamic batch and length; needs pip install 'ptasr[onnx]')")
    export.set_defaults(run=run_export)

    lm = commands.add_parser("lm", help="build an n-gram language model for beam search")
    lm_commands = lm.add_subparsers(dest="lm_command", required=True)
    lm_build = lm_commands.add_parser("build", help="estimate a modified Kneser-Ney n-gram LM (ARPA) from text")
    lm_build.add_argument("texts", nargs="+", help="text files (one sentence per line) or manifests (.tsv, .csv, "
                                                   ".jsonl with a sentence, text or transcript column)")
    lm_build.add_argument("-o", "--output", required=True, help="ARPA file to write; unigrams.txt goes beside it")
    lm_build.add_argument("--order", type=int, default=4, help="n-gram order (default: 4)")
    normaliser = lm_build.add_mutually_exclusive_group()
    normaliser.add_argument("--model", default=None,
                            help="normalise the text with this model's normaliser (checkpoint, folder or hub id)")
    normaliser.add_argument("--normalizer", default=None,
                            help="normalise with this normalizer.json (default: ptasr's default normaliser)")
    lm_build.add_argument("--exclude", action="append", default=[], metavar="FILE",
                          help="drop the sentences of this text file or manifest (e.g. the test split); repeatable")
    lm_build.set_defaults(run=run_lm_build)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ptasr`` console script; returns the exit status (tests call it in-process)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # --help, or a usage error argparse has already printed
        return int(exit.code or 0)
    logging.basicConfig(level=logging.WARNING, format="ptasr: %(message)s")
    try:
        status = exit_status(lambda: args.run(args), f"ptasr {args.command}")
        sys.stdout.flush()  # here, so that a reader gone early (`| head`) ends as below, not at interpreter exit
        return status
    except BrokenPipeError:  # `ptasr transcribe ... | head`: the reader left; stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        return 130


# --- shared pieces -------------------------------------------------------------------------------------------


def _recognizer(args: argparse.Namespace) -> Any:
    from ptasr.inference import Recognizer

    if getattr(args, "backend", "torch") == "onnx":
        return _onnx_recognizer(args)
    return Recognizer.load(args.model, device=args.device, dtype=args.dtype)


def _onnx_recognizer(args: argparse.Namespace) -> Any:
    from ptasr.onnx import onnx_recognizer

    if args.device not in ("auto", "cpu") or args.dtype not in ("auto", "float32"):
        raise SettingError(f"--backend onnx runs on the CPU in float32, not --device {args.device} --dtype "
                           f"{args.dtype}; drop those options, or use --backend torch")
    return onnx_recognizer(args.model)


def _decoder(args: argparse.Namespace, recognizer: Any) -> Any:
    """The beam search decoder the LM options ask for, or None for greedy decoding."""
    if args.lm is None and not args.beam:
        return None
    from ptasr.lm import BeamSearchDecoder

    lm_weight, word_score = _lm_weights(args)
    args.lm_weight, args.word_score = lm_weight, word_score  # the pair used, for the results file
    return BeamSearchDecoder(recognizer.vocab, args.lm, unit=args.lm_unit, words=args.lm_words,
                             beam_size=args.beam_size, beam_size_token=args.beam_size_token or None,
                             lm_weight=lm_weight, word_score=word_score)


def _lm_weights(args: argparse.Namespace) -> tuple[float, float]:
    """LM weight and word score: the flags where given, else the tuned pair saved beside the LM, else 2 and 0."""
    from ptasr.lm import resolve_weights, weights_path

    lm_weight, word_score, tuned = resolve_weights(args.lm, args.lm_weight, args.word_score)
    if tuned:
        print(f"ptasr: LM weights tuned on {tuned.get('data', '?')} ({tuned.get('split', '?')}) from "
              f"{weights_path(args.lm)}: {lm_weight:g}, {word_score:g}", file=sys.stderr)
    return lm_weight, word_score


def _options(args: argparse.Namespace, recognizer: Any, word_timestamps: bool = False) -> dict[str, Any]:
    from ptasr.inference import Chunking

    return {"batch_size": args.batch_size, "chunking": Chunking(args.chunk_length_s or None, args.stride_length_s),
            "word_timestamps": word_timestamps, "decoder": _decoder(args, recognizer)}


def _open_output(path: str | None) -> TextIO:
    try:
        return open(path, "w", encoding="utf-8") if path else sys.stdout
    except OSError as error:
        raise UserError(f"cannot write --output {path}: {error.strerror}") from error


# --- transcribe ----------------------------------------------------------------------------------------------


def run_transcribe(args: argparse.Namespace) -> int:
    files = find_audio(args.audio)
    if not files:
        raise MissingPathError(f"no audio files in {', '.join(args.audio)}")
    recognizer = _recognizer(args)
    options = _options(args, recognizer, word_timestamps=args.word_timestamps)
    failed = 0
    out = _open_output(args.output)
    try:
        for transcript in recognizer.transcribe_iter(files, **options):
            if transcript.error is not None:
                failed += 1
                print(f"ptasr transcribe: skipped {transcript.source}: {transcript.error}", file=sys.stderr)
                continue
            out.write(_format(transcript, args.format, with_source=len(files) > 1))
            out.flush()
    finally:
        if out is not sys.stdout:
            out.close()
    return 1 if failed else 0


AUDIO_EXTENSIONS = {".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".aiff", ".aif", ".au", ".w64", ".caf"}


def find_audio(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, and the audio files (by extension) under folders, sorted; a missing path raises."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            raise MissingPathError(f"no audio file or folder at {path}")
    return found


def _format(transcript: Any, fmt: str, with_source: bool) -> str:
    if fmt == "jsonl":
        return json.dumps(transcript.to_dict(), ensure_ascii=False) + "\n"
    line = f"{transcript.source}\t{transcript.text}\n" if with_source else f"{transcript.text}\n"
    if transcript.words is None:
        return line
    return line + "".join(f"{w.start:.2f}\t{w.end:.2f}\t{w.word}\n" for w in transcript.words)


# --- evaluate ------------------------------------------------------------------------------------------------


@dataclass
class EvalSet:
    """The utterances to score: ids, audio (paths), normalised references and metadata, row for row."""

    name: str
    ids: list[str]
    audio: list[str]
    references: list[str]
    groups: list[dict[str, str]]
    duplicates: int = 0  # rows dropped as repeats of an earlier row's clip

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
        return EvalSet(self.name, *([column[i] for i in rows] for column in
                                    (self.ids, self.audio, self.references, self.groups)), duplicates=duplicates)


def load_eval_set(data: str, split: str, normalizer: Any, language: str | None) -> EvalSet:
    """A release folder's split (or archive), one split TSV whose clips are in ``clips/`` beside it, a
    manifest file (.csv, .tsv, .jsonl), or a folder of a Hugging Face dataset's parquet files (as
    ``data.hf_dataset``); each clip once (:meth:`EvalSet.first_rows`)."""
    path = Path(data).expanduser()
    if not path.exists():
        raise MissingPathError(f"no Common Voice release folder, archive, TSV, manifest or parquet folder at {path}")
    if path.is_file() and path.suffix == ".tsv" and (path.parent / "clips").is_dir():
        return _tsv_eval_set(path, normalizer).first_rows()
    if path.is_file() and path.suffix in (".csv", ".tsv", ".jsonl"):
        return _manifest_eval_set(path, normalizer).first_rows()
    if path.is_dir() and not any(path.glob("*.tsv")) and any(path.rglob("*.parquet")):
        return _hf_eval_set(path, split, normalizer).first_rows()
    return _release_eval_set(path, split, normalizer, language).first_rows()


def _hf_eval_set(path: Path, split: str, normalizer: Any) -> EvalSet:
    """A local Hugging Face dataset folder (parquet files), read as train.py's ``data.hf_dataset`` reads it."""
    from ptasr.data.huggingface import HFDatasetSource

    manifest = HFDatasetSource(str(path)).read_split(split, normalizer)
    return _from_manifest(f"{path.name}_{split}", manifest, [manifest.reader(key) for key in manifest.keys])


def _manifest_eval_set(path: Path, normalizer: Any) -> EvalSet:
    """A manifest file of your own recordings (see ptasr.data.manifests); ``--split`` does not apply."""
    from ptasr.data.manifests import ManifestFile

    manifest = ManifestFile(path).read_split("", normalizer)
    return _from_manifest(path.stem, manifest, list(manifest.keys))


def _from_manifest(name: str, manifest: Any, audio: list[Any]) -> EvalSet:
    """An evaluation set from the rows of a data-side ``Manifest`` (texts already normalised)."""
    columns = {"gender": manifest.genders, "age": manifest.ages, "accent": manifest.accents}
    groups = [dict(zip(columns, values)) for values in zip(*columns.values())]
    return EvalSet(name, list(manifest.ids), audio, list(manifest.texts), groups)


def _tsv_eval_set(path: Path, normalizer: Any) -> EvalSet:
    from ptasr.data.commonvoice import read_tsv

    table = read_tsv(path)
    clips = path.parent / "clips" if (path.parent / "clips").is_dir() else path.parent
    groups = [dict(zip(BREAKDOWN_COLUMNS, values)) for values in zip(*(table[c] for c in BREAKDOWN_COLUMNS))]
    return EvalSet(f"{path.parent.name}_{path.stem}", table["path"], [str(clips / clip) for clip in table["path"]],
                   [normalizer(sentence) for sentence in table["sentence"]], groups)


def _release_eval_set(path: Path, split: str, normalizer: Any, language: str | None) -> EvalSet:
    from ptasr.data.commonvoice import CommonVoiceRelease

    try:
        release = CommonVoiceRelease(path, language=language)
    except SettingError as error:  # the data module's wording names its own setting; here the flag is --language
        raise SettingError(str(error).replace("data.language", "--language")) from error
    manifest = release.read_split(split, normalizer)  # texts come back normalised
    return _from_manifest(f"{release.root.name}_{split}", manifest, [manifest.reader(key) for key in manifest.keys])


def run_evaluate(args: argparse.Namespace) -> int:
    if args.tune:
        return run_tune(args)
    recognizer = _recognizer(args)
    data = load_eval_set(args.data, args.split, recognizer.normalizer, args.language).take(args.limit)
    if not data.ids:
        raise DataError(f"{args.data} ({args.split}) has no utterances with a non-empty transcript")
    page = _evaluation_report(args.report, recognizer)  # checks the folder before the long part
    started = time.perf_counter()
    options = {**_options(args, recognizer), "keep_log_probs": page is not None}
    scored, skipped, seconds = score_eval_set(recognizer, data, options, observe=page)
    if not scored:
        raise AudioDecodeError(f"none of the {len(data.ids)} clips of {args.data} could be read; first: {skipped[0]}")
    results = summarise(args, recognizer, scored, skipped, seconds, time.perf_counter() - started)
    results["duplicates"] = data.duplicates
    if data.duplicates:
        print(f"ptasr evaluate: {data.duplicates} duplicate rows (a clip listed again) scored once", file=sys.stderr)
    for line in skipped[:5]:
        print(f"ptasr evaluate: skipped {line}", file=sys.stderr)
    # The files first: a reader that leaves early (`| head -5`) must not cost the results.
    written = [write_results(Path(args.output_dir), data.name, results, scored)]
    if page is not None:
        written.append(f"report written to {page.write(results, scored, data.audio)}")
    print(report(results))
    print("\n" + "\n".join(written), file=sys.stderr)
    return 0


def _evaluation_report(directory: str | None, recognizer: Any) -> Any:
    """The ``--report`` collector (``ptasr.report.EvaluationReport``), or None without the flag."""
    if directory is None:
        return None
    from ptasr.report import EvaluationReport

    return EvaluationReport(directory, recognizer)


def score_eval_set(recognizer: Any, data: EvalSet, options: dict[str, Any],
                   observe: Callable[[int, Any], None] | None = None) -> tuple[list[Any], list[str], float]:
    """Transcribe and score every row: (scored utterances, "id: reason" of skipped ones, audio seconds scored).

    ``observe(row, transcript)`` sees every scored row's transcript, in the order of the scored utterances.
    """
    from ptasr.scoring import score_utterance

    scored, skipped, seconds = [], [], 0.0
    for i, transcript in enumerate(recognizer.transcribe_iter(data.audio, **options)):
        if transcript.error is not None:
            skipped.append(f"{data.ids[i]}: {transcript.error}")
            continue
        seconds += transcript.duration
        if observe is not None:
            observe(i, transcript)
        prediction = recognizer.normalizer(transcript.text)  # the same normalisation on both sides
        scored.append(score_utterance(data.ids[i], data.references[i], prediction, data.groups[i]))
    return scored, skipped, seconds


def summarise(args: argparse.Namespace, recognizer: Any, scored: list[Any], skipped: list[str], seconds: float,
              elapsed: float) -> dict[str, Any]:
    """Everything the results files hold: corpus rates, breakdowns, worst utterances, settings and speed."""
    from ptasr.scoring import breakdown, error_rates, worst

    return {
        "model": args.model, "data": args.data, "split": args.split,
        "decoder": "beam+lm" if args.lm else ("beam" if args.beam else "greedy"),
        **({"lm": {"path": args.lm, "lm_weight": args.lm_weight, "word_score": args.word_score}} if args.lm else {}),
        "device": str(recognizer.device), "dtype": str(recognizer.dtype).removeprefix("torch."),
        **error_rates(scored),
        "skipped": len(skipped),
        "audio_hours": round(seconds / 3600, 4),
        "real_time_factor": round(elapsed / max(seconds, 1e-9), 4),
        "by": {column: breakdown(scored, column) for column in BREAKDOWN_COLUMNS},
        "worst": [{"id": s.id, "errors": s.word_errors, "reference": s.reference, "prediction": s.prediction}
                  for s in worst(scored, args.worst)],
    }


def report(results: dict[str, Any]) -> str:
    """The human-readable summary: totals, the breakdown tables, the worst utterances."""
    lines = [f"{results['model']} on {results['data']} ({results['split']}), {results['decoder']} decoding, "
             f"{results['dtype']} on {results['device']}",
             f"WER: {results['wer']:.4f}", f"CER: {results['cer']:.4f}",
             f"utterances: {results['utterances']} ({results['skipped']} skipped), words: {results['words']}, "
             f"audio: {results['audio_hours'] * 60:.1f} min, real-time factor: {results['real_time_factor']:.3f}"]
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


def write_results(directory: Path, name: str, results: dict[str, Any], scored: Sequence[Any]) -> str:
    """``<name>_eval_results.txt`` (as the robust-speech-event's eval.py writes), ``.json`` and predictions.

    Returns the line that says where they are."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = directory / name
    Path(f"{stem}_eval_results.txt").write_text(f"WER: {results['wer']}\nCER: {results['cer']}\n", encoding="utf-8")
    Path(f"{stem}_eval_results.json").write_text(json.dumps(results, ensure_ascii=False, indent=2) + "\n",
                                                 encoding="utf-8")
    with open(f"{stem}_predictions.tsv", "w", encoding="utf-8") as f:
        f.write("id\tword_errors\treference_words\treference\tprediction\n")
        f.writelines(f"{s.id}\t{s.word_errors}\t{s.reference_words}\t{s.reference}\t{s.prediction}\n" for s in scored)
    return f"results written to {stem}_eval_results.txt, .json and {stem.name}_predictions.tsv"


# --- export --------------------------------------------------------------------------------------------------


def run_export(args: argparse.Namespace) -> int:
    from ptasr.export import export

    out = export(args.model, args.out_dir, logs=args.logs, name=args.name, language=args.language,
                 push_to_hub=args.push_to_hub, private=args.private, overwrite=args.overwrite, lm=args.lm,
                 onnx=args.onnx)
    print(f"exported to {out}" + (f" and pushed to {args.push_to_hub}" if args.push_to_hub else ""))
    return 0


# --- lm build ------------------------------------------------------------------------------------------------


def run_lm_build(args: argparse.Namespace) -> int:
    from ptasr.data.text import TextNormalizer
    from ptasr.ngram import build_from_files

    if args.model is not None:
        from ptasr.checkpoint import load_any

        normalizer = load_any(args.model).normalizer
    else:
        normalizer = TextNormalizer.load(args.normalizer) if args.normalizer else TextNormalizer()
    started = time.perf_counter()
    built = build_from_files(args.texts, args.output, order=args.order, normalizer=normalizer, exclude=args.exclude)
    if args.exclude:
        print(f"dropped {built.excluded} of {built.sentences} sentences that occur in {', '.join(args.exclude)}")
    counts = ", ".join(f"{n}-grams: {count}" for n, count in enumerate(built.ngrams, start=1))
    print(f"{built.words} words, {built.vocabulary} word types, {counts}; normaliser: {normalizer!r}")
    print(f"wrote {args.output} and {Path(args.output).parent / 'unigrams.txt'} "
          f"in {time.perf_counter() - started:.1f} s")
    return 0


# --- evaluate --tune -----------------------------------------------------------------------------------------


def _floats(text: str) -> list[float]:
    return [float(value) for value in text.split(",") if value.strip()]


def run_tune(args: argparse.Namespace) -> int:
    """``evaluate --lm LM --tune``: log-probabilities once, every (LM weight, word score) pair of the grid decoded
    and scored, the table and the best pair printed, the best pair saved beside the LM, its results written."""
    from ptasr.inference import Chunking
    from ptasr.scoring import error_rates, score_utterance
    from ptasr.lm import (DEFAULT_LM_WEIGHTS, DEFAULT_WORD_SCORES, BeamSearchDecoder, best_trial, can_choose,
                          save_weights, search_weights)

    if args.lm is None:
        raise SettingError("--tune searches the weights of an n-gram LM: give one with --lm LM")
    recognizer = _recognizer(args)
    data = load_eval_set(args.data, args.split, recognizer.normalizer, args.language).take(args.limit)
    started = time.perf_counter()
    transcripts = list(recognizer.transcribe_iter(data.audio, batch_size=args.batch_size, keep_log_probs=True,
                                                  chunking=Chunking(args.chunk_length_s or None, args.stride_length_s)))
    rows = [i for i, t in enumerate(transcripts) if t.error is None]
    if not rows:
        raise AudioDecodeError(f"none of the {len(data.ids)} clips of {args.data} could be read")
    references = [data.references[i] for i in rows]

    def score(predictions: list[str]) -> list[Any]:
        return [score_utterance(data.ids[i], ref, recognizer.normalizer(p), data.groups[i])
                for i, ref, p in zip(rows, references, predictions)]

    decoder = BeamSearchDecoder(recognizer.vocab, args.lm, unit=args.lm_unit, words=args.lm_words,
                                beam_size=args.beam_size, beam_size_token=args.beam_size_token or None)
    print("| LM weight | word score | WER | CER |\n|---:|---:|---:|---:|", flush=True)
    trials = search_weights(decoder, [transcripts[i].log_probs for i in rows],
                            lambda predictions: error_rates(score(predictions)),
                            args.lm_weights or DEFAULT_LM_WEIGHTS, args.word_scores or DEFAULT_WORD_SCORES,
                            on_trial=lambda t: print(f"| {t.lm_weight:g} | {t.word_score:g} | {t.wer:.4f} | "
                                                     f"{t.cer:.4f} |", flush=True))
    best, greedy = best_trial(trials), error_rates(score([transcripts[i].text for i in rows]))
    print(f"\nbest: LM weight {best.lm_weight:g}, word score {best.word_score:g} (WER {best.wer:.4f}, CER {best.cer:.4f}) "
          f"on {len(rows)} utterances of {args.data} ({args.split}); greedy: WER {greedy['wer']:.4f}, "
          f"CER {greedy['cer']:.4f}")
    if not can_choose(trials):
        # Saving the tie-break's pair (LM weight 0: no LM at all) would silently change later decoding.
        raise DataError(f"every LM weight and word score scores WER {best.wer:.4f} / CER {best.cer:.4f} on {args.data} "
                        f"({args.split}) (greedy: WER {greedy['wer']:.4f}), so this split cannot choose them: nothing saved. "
                        f"A model decodes clips it trained on alike under any weights; tune on held-out clips")
    weights, scores = sorted({t.lm_weight for t in trials}), sorted({t.word_score for t in trials})
    edges = [f"{name} {value:g}" for name, value, grid in (("LM weight", best.lm_weight, weights),
                                                           ("word score", best.word_score, scores))
             if len(grid) > 2 and value in (grid[0], grid[-1]) and value != 0]
    if edges:
        print(f"the best {' and '.join(edges)} lie(s) on the grid's edge: a wider --lm-weights/--word-scores may "
              f"do better")
    saved = save_weights(args.lm, best, model=args.model, data=args.data, split=args.split, utterances=len(rows),
                         beam_size=args.beam_size, lm_unit=args.lm_unit)
    print(f"saved to {saved}\n")
    args.lm_weight, args.word_score = best.lm_weight, best.word_score
    scored = score(best.predictions)
    seconds = sum(transcripts[i].duration for i in rows)
    skipped = [f"{data.ids[i]}: {t.error}" for i, t in enumerate(transcripts) if t.error is not None]
    results = summarise(args, recognizer, scored, skipped, seconds, time.perf_counter() - started)
    results["tuning"] = [{"lm_weight": t.lm_weight, "word_score": t.word_score, "wer": t.wer, "cer": t.cer}
                         for t in trials]
    print(report(results))
    write_results(Path(args.output_dir), data.name, results, scored)
    return 0
