"""The ``ptasr`` command: ``transcribe``, ``evaluate`` and ``export`` a trained model; ``align`` long recordings
and ``pseudo-label`` untranscribed audio into training data.

MODEL is anything :meth:`ptasr.recognition.recognizer.Recognizer.load` takes: a ``train.py`` checkpoint (``.ckpt``), a
folder written by ``ptasr export`` (or any Hugging Face wav2vec2 CTC folder), or a hub id.

A wrong path, a checkpoint that does not fit, or unreadable data ends the command with one line on stderr
saying what and where, and exit status 1; ``PTASR_TRACEBACK=1`` shows the traceback (see ``ptasr/errors.py``).
``evaluate`` writes its results files before it prints, so a reader that leaves early (``| head``) costs
nothing; output to a closed pipe ends quietly with status 141.

This module turns arguments into calls: reading, scoring and summarising an evaluation set (and the LM weight
search of ``evaluate --tune``) live in ``ptasr/evaluation/evaluate.py``, which Python code calls without the command.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

from ptasr import __version__, threads
from ptasr.errors import TRACEBACK_VARIABLE, DataError, MissingPathError, SettingError, UserError, exit_status

log = logging.getLogger("ptasr")


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
                        help="precision of the network; auto (default): bfloat16 on a GPU that computes it natively "
                             "(Ampere+), float32 on a CPU (bf16 there changes transcripts and depends on the CPU)")
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
                       help="weight of the LM's log10 probability (default: the tuned one saved beside the LM, "
                            "lm.arpa -> lm.arpa.json, else 2)")
    group.add_argument("--word-score", type=float, default=None,
                       help="score added per word (default: the tuned one beside the LM, else 0)")
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
    transcribe.add_argument("--word-timestamps", action="store_true",
                            help="start and end time of every word, and its confidence (0-1, entropy-based: "
                                 "ptasr.decoding.confidence)")
    transcribe.add_argument("--output", "-o", default=None, help="write here instead of stdout")
    _add_backend_argument(transcribe)
    _add_lm_arguments(transcribe)
    transcribe.set_defaults(run=run_transcribe)

    evaluate = commands.add_parser("evaluate", help="WER and CER on a Common Voice release, a manifest of your own "
                                                       "recordings or a parquet folder")
    _add_model_arguments(evaluate)
    _add_backend_argument(evaluate)
    evaluate.add_argument("--data", required=True,
                          help="a Common Voice release folder (or .tar.gz); a .csv/.tsv/.jsonl file read as "
                               "train.py reads data.*_manifest: a manifest of your own recordings (audio column "
                               "path/audio/file, text column text/sentence/transcript, optional duration; paths "
                               "from its folder), or a Common Voice split TSV (recognised by its client_id, path, "
                               "sentence, up_votes, down_votes columns; clips in clips/ beside it); or a folder of "
                               "a Hugging Face dataset's parquet files (audio and sentence columns)")
    evaluate.add_argument("--split", default="test",
                          help="split of a release or parquet folder; a file is one split (default: test)")
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
                           "pair beside the LM (lm.arpa -> lm.arpa.json), where transcribe, evaluate and export "
                           "read it")
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
                        help="ship this KenLM model (.arpa or .bin) with its tuned weights (lm.arpa.json) in the "
                             "layout of transformers' Wav2Vec2ProcessorWithLM")
    export.add_argument("--overwrite", action="store_true",
                        help="write into OUT_DIR even if it is not empty (replacing its files of the same names)")
    export.add_argument("--onnx", action="store_true",
                        help="also write model.onnx (float32, dynamic batch and length; needs pip install 'ptasr[onnx]')")
    export.set_defaults(run=run_export)

    align = commands.add_parser("align", help="cut long recordings with their transcripts into training clips and "
                                              "a manifest (CTC forced alignment)")
    _add_model_arguments(align)
    recordings = align.add_mutually_exclusive_group(required=True)
    recordings.add_argument("--audio", default=None, help="a long recording (any format soundfile reads); with --text")
    recordings.add_argument("--list", default=None,
                            help="many recordings: one 'audio<TAB>transcript' pair of paths per line (relative to "
                                 "the list's folder)")
    align.add_argument("--text", default=None,
                       help="the recording's transcript: UTF-8, sentences in the order spoken (each line, cut after "
                            ". ! ? or ...)")
    align.add_argument("--output-dir", "-o", required=True,
                       help="a new folder: clips/, manifest.csv (for --data.train) and rejected.csv")
    align.add_argument("--min-score", type=float, default=-1.0,
                       help="lowest accepted score of a sentence: mean log-probability per frame of its forced "
                            "path against the model's best path, 0 at best (default: -1)")
    align.add_argument("--search-s", type=float, default=30.0,
                       help="seconds of untranscribed audio a sentence may follow and still be found (default: 30)")
    align.add_argument("--pad-s", type=float, default=0.25,
                       help="seconds kept before and after each sentence's speech in its clip (default: 0.25)")
    align.set_defaults(run=run_align)

    pseudo = commands.add_parser("pseudo-label", help="transcribe untranscribed audio into a training manifest, "
                                                      "keeping the clips the model is sure of")
    _add_model_arguments(pseudo)
    pseudo.add_argument("audio", nargs="+", help="audio files or folders of them")
    pseudo.add_argument("--output", "-o", required=True, help="the manifest to write (.csv); never replaced")
    pseudo.add_argument("--min-confidence", type=float, required=True,
                        help="keep clips whose confidence (the mean of their words', 0-1) is at least this")
    _add_lm_arguments(pseudo)
    pseudo.set_defaults(run=run_pseudo_label)

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
    threads.apply_before_torch()  # before any command loads torch (see ptasr/threads.py)
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
    from ptasr.recognition.recognizer import Recognizer

    if getattr(args, "backend", "torch") == "onnx":
        return _onnx_recognizer(args)
    return Recognizer.load(args.model, device=args.device, dtype=args.dtype)


def _onnx_recognizer(args: argparse.Namespace) -> Any:
    from ptasr.export.onnx import onnx_recognizer

    if args.device not in ("auto", "cpu") or args.dtype not in ("auto", "float32"):
        raise SettingError(f"--backend onnx runs on the CPU in float32, not --device {args.device} --dtype "
                           f"{args.dtype}; drop those options, or use --backend torch")
    return onnx_recognizer(args.model)


def _decoder(args: argparse.Namespace, recognizer: Any) -> Any:
    """The beam search decoder the LM options ask for, or None for greedy decoding."""
    if args.lm is None and not args.beam:
        return None
    from ptasr.decoding.lm import BeamSearchDecoder

    lm_weight, word_score = _lm_weights(args)
    return BeamSearchDecoder(recognizer.vocab, args.lm, unit=args.lm_unit, words=args.lm_words,
                             beam_size=args.beam_size, beam_size_token=args.beam_size_token or None,
                             lm_weight=lm_weight, word_score=word_score)


def _lm_weights(args: argparse.Namespace) -> tuple[float, float]:
    """LM weight and word score: the flags where given, else the tuned pair saved beside the LM, else 2 and 0."""
    from ptasr.decoding.lm import resolve_weights, weights_path

    lm_weight, word_score, tuned = resolve_weights(args.lm, args.lm_weight, args.word_score)
    if tuned:
        print(f"ptasr: LM weights tuned on {tuned.get('data', '?')} ({tuned.get('split', '?')}) from "
              f"{weights_path(args.lm)}: {lm_weight:g}, {word_score:g}", file=sys.stderr)
    return lm_weight, word_score


def _chunking(args: argparse.Namespace) -> Any:
    from ptasr.recognition.recognizer import Chunking

    return Chunking(args.chunk_length_s or None, args.stride_length_s)


def _open_output(path: str | None) -> TextIO:
    try:
        return open(path, "w", encoding="utf-8") if path else sys.stdout
    except OSError as error:
        raise UserError(f"cannot write --output {path}: {error.strerror}") from error


# --- transcribe ----------------------------------------------------------------------------------------------


def run_transcribe(args: argparse.Namespace) -> int:
    from ptasr.data.cache import escape_field

    files = find_audio(args.audio)
    if not files:
        raise MissingPathError(f"no audio files in {', '.join(args.audio)}")
    recognizer = _recognizer(args)
    options = {"batch_size": args.batch_size, "chunking": _chunking(args), "word_timestamps": args.word_timestamps,
               "decoder": _decoder(args, recognizer)}
    failed = 0
    out = _open_output(args.output)
    try:
        for transcript in recognizer.transcribe_iter(files, **options):
            if transcript.error is not None:
                failed += 1
                print(f"ptasr transcribe: skipped {escape_field(transcript.source)}: {escape_field(transcript.error)}",
                      file=sys.stderr)
                continue
            try:
                out.write(_format(transcript, args.format, with_source=len(files) > 1))
                out.flush()
            except OSError as error:
                if out is sys.stdout:  # a closed pipe: main() ends quietly
                    raise
                from ptasr.storage import storage_error

                raise storage_error(args.output, error) from error
    finally:
        if out is not sys.stdout:
            # flushed after every transcript: only a failed write leaves bytes behind, and that failure is reported
            with contextlib.suppress(OSError):
                out.close()
    return 1 if failed else 0


AUDIO_EXTENSIONS = {".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".aiff", ".aif", ".au", ".w64", ".caf"}


def find_audio(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, and the audio files (by extension) under folders, sorted; a path to nothing raises.

    A path that is there but cannot be resolved (a symlink loop, a name too long, no permission) is kept, as is
    one under a folder: reading it fails, and it is skipped with the reason, like an undecodable file.
    """
    found: list[Path] = []
    for path in map(Path, paths):
        if os.path.isdir(path):  # os.path, not Path.is_dir: that raises on a name too long
            found += sorted(p for p in path.rglob("*")
                            if p.suffix.lower() in AUDIO_EXTENSIONS and not os.path.isdir(p))
        elif os.path.isfile(path) or _unresolvable(path):
            found.append(path)
        else:
            raise MissingPathError(f"no audio file or folder at {path}")
    return found


def _unresolvable(path: Path) -> bool:
    """Whether ``path`` may name something that cannot be reached (not simply nothing)."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except (OSError, ValueError):
        return True
    return False


def _format(transcript: Any, fmt: str, with_source: bool) -> str:
    from ptasr.data.cache import escape_field

    if fmt == "jsonl":
        return json.dumps(transcript.to_dict(), ensure_ascii=False) + "\n"
    # the file name escaped (a tab or newline in it would split the line), as in every TSV ptasr writes
    line = f"{escape_field(transcript.source)}\t{transcript.text}\n" if with_source else f"{transcript.text}\n"
    if transcript.words is None:
        return line
    return line + "".join(f"{w.start:.2f}\t{w.end:.2f}\t{w.word}\t{w.confidence:.2f}\n" for w in transcript.words)


# --- evaluate ------------------------------------------------------------------------------------------------


def run_evaluate(args: argparse.Namespace) -> int:
    from ptasr.evaluation.evaluate import check_results_free, evaluate, load_eval_set, summarise

    if args.tune:
        return run_tune(args)
    _check_output_dir(args)
    recognizer = _recognizer(args)
    data = load_eval_set(args.data, args.split, recognizer.normalizer, args.language).take(args.limit)
    check_results_free(Path(args.output_dir), data.name, data.origin)  # before the long part
    page = _evaluation_report(args.report, recognizer)  # checks the folder before the long part
    decoder = _decoder(args, recognizer)
    evaluation = evaluate(recognizer, data, batch_size=args.batch_size, chunking=_chunking(args), decoder=decoder,
                          observe=page)
    results = summarise(evaluation, recognizer, args.model, decoder, args.worst)
    return _finish_evaluation(args, data, evaluation, results, page)


def _finish_evaluation(args: argparse.Namespace, data: Any, evaluation: Any, results: dict[str, Any],
                       page: Any = None) -> int:
    """What every evaluation ends with: the notes on duplicate and skipped rows, the results files (and the
    ``--report`` page), then the printed results."""
    from ptasr.evaluation.evaluate import format_results, results_written

    results["duplicates"] = data.duplicates
    if data.duplicates:
        print(f"ptasr evaluate: {data.duplicates} duplicate rows (a clip listed again) scored once", file=sys.stderr)
    for line in evaluation.skipped[:5]:
        print(f"ptasr evaluate: skipped {line}", file=sys.stderr)
    # The files first: a reader that leaves early (`| head -5`) must not cost the results. All or none: the
    # results files are renamed into place once the report is written too.
    with results_written(Path(args.output_dir), data.name, results, evaluation.scored) as line:
        written = [line]
        if page is not None:
            written.append(f"report written to {page.write(results, evaluation.scored, data.audio)}")
    print(format_results(results))
    print("\n" + "\n".join(written), file=sys.stderr)
    return 0


def _check_output_dir(args: argparse.Namespace) -> None:
    """Refuse an --output-dir that cannot be written before the model runs (``--report``'s folder is checked with
    the report's own checks)."""
    from ptasr.storage import check_writable

    check_writable(Path(args.output_dir))


def _evaluation_report(directory: str | None, recognizer: Any) -> Any:
    """The ``--report`` collector (``ptasr.evaluation.report.EvaluationReport``), or None without the flag."""
    if directory is None:
        return None
    from ptasr.evaluation.report import EvaluationReport

    return EvaluationReport(directory, recognizer)


# --- export --------------------------------------------------------------------------------------------------


def run_export(args: argparse.Namespace) -> int:
    from ptasr.export.hf_folder import export

    out = export(args.model, args.out_dir, logs=args.logs, name=args.name, language=args.language,
                 push_to_hub=args.push_to_hub, private=args.private, overwrite=args.overwrite, lm=args.lm,
                 onnx=args.onnx)
    print(f"exported to {out}" + (f" and pushed to {args.push_to_hub}" if args.push_to_hub else ""))
    return 0


# --- align, pseudo-label --------------------------------------------------------------------------------------


def run_align(args: argparse.Namespace) -> int:
    from ptasr.labelling.align import (AlignSettings, align_recording, check_output_free, read_pairs, read_sentences,
                                       write_alignment)

    if (args.audio is None) != (args.text is None):
        raise SettingError("--audio and --text go together (one recording and its transcript); for many, --list")
    pairs = read_pairs(Path(args.list)) if args.list else [(Path(args.audio), Path(args.text))]
    transcripts = [read_sentences(text) for _, text in pairs]  # every file read before the model runs
    for audio, _ in pairs:
        if not audio.is_file():
            raise MissingPathError(f"no audio file at {audio}")
    out_dir = Path(args.output_dir)
    check_output_free(out_dir)
    settings = AlignSettings(args.min_score, args.search_s, args.pad_s)
    recognizer = _recognizer(args)
    aligned = [align_recording(recognizer, audio, sentences, settings, args.batch_size, _chunking(args))
               for (audio, _), sentences in zip(pairs, transcripts, strict=True)]
    clips, _ = write_alignment(out_dir, aligned, settings.pad_s)
    sentences = sum(len(r.sentences) for r in aligned)
    left_out = sum(len(r.alignments) - len(r.accepted) for r in aligned)
    uncovered = sum(len(r.uncovered) for r in aligned)
    print(f"aligned {clips} of {sentences} sentences in {len(aligned)} recording(s): {out_dir / 'manifest.csv'}")
    if left_out or uncovered:
        print(f"left out {left_out} sentence(s) the audio does not match and {uncovered} stretch(es) of speech the "
              f"text does not cover: {out_dir / 'rejected.csv'}")
    unknown = sum((r.unknown for r in aligned), Counter())
    if unknown:
        shown = ", ".join(f"{char!r} x{count}" for char, count in unknown.most_common())
        print(f"{sum(unknown.values())} character(s) the model cannot emit, left out of the alignment: {shown}")
    return 0


def run_pseudo_label(args: argparse.Namespace) -> int:
    from ptasr.labelling.pseudo import check_output_free, pseudo_label, write_manifest

    if not 0.0 <= args.min_confidence <= 1.0:
        raise SettingError(f"--min-confidence {args.min_confidence:g} is not a confidence: give one from 0 to 1")
    files = list(dict.fromkeys(find_audio(args.audio)))  # a file named and in a named folder: one manifest row
    if not files:
        raise MissingPathError(f"no audio files in {', '.join(args.audio)}")
    output = Path(args.output)
    check_output_free(output)
    recognizer = _recognizer(args)
    labels = pseudo_label(recognizer, files, args.min_confidence, batch_size=args.batch_size,
                          chunking=_chunking(args), decoder=_decoder(args, recognizer))
    write_manifest(output, labels.kept)
    print(f"kept {len(labels.kept)} of {len(files)} clips (confidence >= {args.min_confidence:g}): {output}; left out "
          f"{labels.below} below it, {labels.no_words} with no words, {len(labels.unreadable)} unreadable")
    for line in labels.unreadable[:5]:
        print(f"ptasr pseudo-label: skipped {line}", file=sys.stderr)
    return 0


# --- lm build ------------------------------------------------------------------------------------------------


def run_lm_build(args: argparse.Namespace) -> int:
    from ptasr.data.text import TextNormalizer
    from ptasr.decoding.ngram import build_from_files

    if args.model is not None:
        from ptasr.recognition.trained_model import load_any

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
    from ptasr.decoding.lm import DEFAULT_LM_WEIGHTS, DEFAULT_WORD_SCORES, BeamSearchDecoder, can_choose, save_weights
    from ptasr.evaluation.evaluate import check_results_free, load_eval_set, summarise, transcribe_once, tune

    if args.lm is None:
        raise SettingError("--tune searches the weights of an n-gram LM: give one with --lm LM")
    if args.report is not None:
        raise SettingError("--report is not written by --tune: tune first, then `ptasr evaluate MODEL --lm LM "
                           "--report DIR` reports with the tuned weights")
    _check_output_dir(args)
    recognizer = _recognizer(args)
    data = load_eval_set(args.data, args.split, recognizer.normalizer, args.language).take(args.limit)
    check_results_free(Path(args.output_dir), data.name, data.origin)  # before the long part
    emissions = transcribe_once(recognizer, data, batch_size=args.batch_size, chunking=_chunking(args))
    decoder = BeamSearchDecoder(recognizer.vocab, args.lm, unit=args.lm_unit, words=args.lm_words,
                                beam_size=args.beam_size, beam_size_token=args.beam_size_token or None)
    print("| LM weight | word score | WER | CER |\n|---:|---:|---:|---:|", flush=True)
    tuning = tune(emissions, decoder, args.lm_weights or DEFAULT_LM_WEIGHTS, args.word_scores or DEFAULT_WORD_SCORES,
                  on_trial=lambda t: print(f"| {t.lm_weight:g} | {t.word_score:g} | {t.wer:.4f} | {t.cer:.4f} |",
                                           flush=True))
    best, greedy, rows = tuning.best, tuning.greedy, len(emissions.rows)
    print(f"\nbest: LM weight {best.lm_weight:g}, word score {best.word_score:g} (WER {best.wer:.4f}, CER {best.cer:.4f}) "
          f"on {rows} utterances of {args.data} ({args.split}); greedy: WER {greedy['wer']:.4f}, "
          f"CER {greedy['cer']:.4f}")
    if not can_choose(tuning.trials):
        # Saving the tie-break's pair (LM weight 0: no LM at all) would silently change later decoding.
        raise DataError(f"every LM weight and word score scores WER {best.wer:.4f} / CER {best.cer:.4f} on {args.data} "
                        f"({args.split}) (greedy: WER {greedy['wer']:.4f}), so this split cannot choose them: nothing saved. "
                        f"A model decodes clips it trained on alike under any weights; tune on held-out clips")
    if edges := tuning.edges():
        print(f"the best {' and '.join(edges)} lie(s) on the grid's edge: a wider --lm-weights/--word-scores may "
              f"do better")
    saved = save_weights(args.lm, best, model=args.model, data=args.data, split=args.split, utterances=rows,
                         beam_size=args.beam_size, lm_unit=args.lm_unit)
    print(f"saved to {saved}\n")
    decoded = decoder.with_weights(best.lm_weight, best.word_score)  # the pair the results describe
    results = summarise(tuning.evaluation, recognizer, args.model, decoded, args.worst)
    results["tuning"] = [{"lm_weight": t.lm_weight, "word_score": t.word_score, "wer": t.wer, "cer": t.cer}
                         for t in tuning.trials]
    return _finish_evaluation(args, data, tuning.evaluation, results)
