"""``ptasr export``: a training checkpoint -> a Hugging Face model folder with a model card.

The folder is what transformers' ``run_speech_recognition_ctc.py`` leaves behind, so ``Wav2Vec2ForCTC``,
``Wav2Vec2Processor`` and ``pipeline("automatic-speech-recognition")`` load it as they load any hub model:

- ``config.json`` + ``model.safetensors`` (the model's own ``save_pretrained``),
- ``vocab.json``, ``tokenizer_config.json``, ``special_tokens_map.json`` (a ``Wav2Vec2CTCTokenizer`` with
  ``|`` between words, ``[UNK]`` and ``[PAD]``; no ``<s>``/``</s>``, which a CTC head never emits),
- ``preprocessor_config.json`` (a ``Wav2Vec2FeatureExtractor``: 16 kHz, zero-mean unit-variance),
- ``normalizer.json`` (ptasr's transcript normaliser, so ``ptasr evaluate`` scores an export as it scored the
  checkpoint),
- ``README.md``: a model card with the training-results table (Training Loss, Epoch, Step, Validation Loss,
  Wer) read from the run's TensorBoard event files, and the hyperparameters. A run validated on several
  sources (``data.val_sources``, which log ``val/<name>/wer``) also gets each source's Wer and Cer.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import yaml

from ptasr.data.text import Vocabulary
from ptasr.errors import HubError, MissingPathError, SettingError
from ptasr.inference import Recognizer
from ptasr.model.config import Wav2Vec2Config

log = logging.getLogger(__name__)


# --- the tokenizer and feature extractor files ---------------------------------------------------------------


def tokenizer_files(vocab: Vocabulary) -> dict[str, dict[str, Any]]:
    """``tokenizer_config.json`` and ``special_tokens_map.json`` of a ``Wav2Vec2CTCTokenizer`` for ``vocab``."""
    # bos/eos None: transformers would otherwise add "<s>"/"</s>" as extra tokens past the CTC head's size.
    special = {"unk_token": vocab.unk_token, "pad_token": vocab.pad_token}
    config = {
        "tokenizer_class": "Wav2Vec2CTCTokenizer",
        "processor_class": "Wav2Vec2Processor",
        **special,
        "bos_token": None,
        "eos_token": None,
        "word_delimiter_token": vocab.word_delimiter,
        "replace_word_delimiter_char": " ",
        "do_lower_case": False,
    }
    return {"tokenizer_config.json": config, "special_tokens_map.json": special}


def preprocessor_config(config: Wav2Vec2Config) -> dict[str, Any]:
    """``preprocessor_config.json``: how transformers turns audio into this model's input."""
    return {
        "feature_extractor_type": "Wav2Vec2FeatureExtractor",
        "processor_class": "Wav2Vec2Processor",
        "feature_size": 1,
        "sampling_rate": 16000,
        "padding_value": 0.0,
        "padding_side": "right",
        "do_normalize": True,
        # Layer-norm conv stacks (XLS-R) mask padding; group-norm ones (wav2vec2-base) were trained without a
        # mask and must not get one, as in transformers' own checkpoints.
        "return_attention_mask": config.feat_extract_norm == "layer",
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def write_hf_folder(recognizer: Recognizer, directory: Path) -> None:
    """Everything but the model card (see the module docstring)."""
    directory.mkdir(parents=True, exist_ok=True)
    recognizer.model.save_pretrained(directory)
    recognizer.vocab.save(directory)
    for name, data in tokenizer_files(recognizer.vocab).items():
        write_json(directory / name, data)
    write_json(directory / "preprocessor_config.json", preprocessor_config(recognizer.model.config))
    recognizer.normalizer.save(directory)


# --- training results from TensorBoard -----------------------------------------------------------------------


@dataclass
class ResultRow:
    """One evaluation during training, as a row of the model card's results table."""

    step: int  # optimiser updates done, as the reference card counts (TensorBoard's step + 1)
    epoch: float | None
    training_loss: float | None
    validation_loss: float | None
    wer: float | None
    cer: float | None
    # each validation source's (Wer, Cer), scored alone (val/<name>/wer); empty where the run had one source
    sources: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)


# what WERMetrics logs per source; a name holds no "/" (the data module refuses one)
_SOURCE_WER = re.compile(r"val/([^/]+)/wer")


def read_scalars(log_dir: Path) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` from every event file in ``log_dir``; a resumed run's later values win."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, dict[int, float]] = {}
    for events in sorted(log_dir.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})  # 0: keep every point
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            for event in accumulator.Scalars(tag):
                scalars.setdefault(tag, {})[event.step] = event.value
    return scalars


def training_results(scalars: dict[str, dict[int, float]]) -> list[ResultRow]:
    """One row per evaluation step (``val/loss`` or ``val/wer`` logged).

    Training Loss is the last ``train/loss`` logged at or before that step, Epoch the logged epoch there.
    Lightning logs at the index of the update just done, counting from 0: the evaluation after 250 updates is
    at TensorBoard step 249, and its row says 250, like the reference card's Step column. Sources are the
    names of ``val/<name>/wer``, in name order (the event files do not keep the data module's order).

    >>> training_results({"train/loss": {0: 9.0, 5: 3.0}, "val/wer": {4: 0.5}, "epoch": {4: 1.0}})
    [ResultRow(step=5, epoch=1.0, training_loss=9.0, validation_loss=None, wer=0.5, cer=None, sources={})]
    >>> training_results({"val/wer": {4: 0.5}, "val/b/wer": {4: 0.75}, "val/a/wer": {4: 0.25}})[0].sources
    {'a': (0.25, None), 'b': (0.75, None)}
    """
    train = sorted(scalars.get("train/loss", {}).items())
    steps = sorted(set(scalars.get("val/loss", {})) | set(scalars.get("val/wer", {})))
    names = sorted(match[1] for match in map(_SOURCE_WER.fullmatch, scalars) if match)
    rows = []
    for step in steps:
        before = [value for s, value in train if s <= step]
        rows.append(ResultRow(
            step=step + 1,
            epoch=scalars.get("epoch", {}).get(step),
            training_loss=before[-1] if before else None,
            validation_loss=scalars.get("val/loss", {}).get(step),
            wer=scalars.get("val/wer", {}).get(step),
            cer=scalars.get("val/cer", {}).get(step),
            sources={name: (scalars.get(f"val/{name}/wer", {}).get(step), scalars.get(f"val/{name}/cer", {}).get(step))
                     for name in names},
        ))
    return rows


def results_table(rows: list[ResultRow]) -> str:
    """The markdown table of the reference model card (plus Cer), "No log" where a value is missing."""

    lines = ["| Training Loss | Epoch | Step | Validation Loss | Wer | Cer |",
             "|:-------------:|:-----:|:----:|:---------------:|:---:|:---:|"]
    for row in rows:
        epoch = "" if row.epoch is None else f"{row.epoch:g}"
        lines.append(f"| {_cell(row.training_loss)} | {epoch} | {row.step} | {_cell(row.validation_loss)} | "
                     f"{_cell(row.wer)} | {_cell(row.cer)} |")
    return "\n".join(lines)


def sources_table(rows: list[ResultRow]) -> str:
    """Each validation source's Wer and Cer per evaluation step, as a markdown table ("" with one source).

    >>> print(sources_table([ResultRow(2, None, None, None, 0.5, 0.25, {"read": (0.25, 0.125), "talk": (1.0, None)})]))
    | Step | read Wer | read Cer | talk Wer | talk Cer |
    |:----:|:---:|:---:|:---:|:---:|
    | 2 | 0.2500 | 0.1250 | 1.0000 | No log |
    """
    names = sorted({name for row in rows for name in row.sources})
    if not names:
        return ""
    lines = ["| Step | " + " | ".join(f"{name} Wer | {name} Cer" for name in names) + " |",
             "|:----:|" + ":---:|" * (2 * len(names))]
    for row in rows:
        rates = [row.sources.get(name, (None, None)) for name in names]
        lines.append(f"| {row.step} | " + " | ".join(f"{_cell(wer)} | {_cell(cer)}" for wer, cer in rates) + " |")
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return "No log" if value is None else f"{value:.4f}"


def training_tables(rows: list[ResultRow]) -> str:
    """The card's "Training results": the results table, then each source's rates where there are several."""
    per_source = sources_table(rows)
    if not per_source:
        return results_table(rows)
    return (results_table(rows) + "\n\nEach validation source scored alone (Wer and Cer above pool them, weighted "
            "by reference words and characters):\n\n" + per_source)


# --- hyperparameters -----------------------------------------------------------------------------------------


def run_config(log_dir: Path | None) -> dict[str, Any]:
    """The ``config.yaml`` LightningCLI saved in the run folder (trainer settings, seed), if there is one."""
    if log_dir is None or not (log_dir / "config.yaml").is_file():
        return {}
    return yaml.safe_load((log_dir / "config.yaml").read_text(encoding="utf-8")) or {}


def hyperparameters(metadata: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """The reference card's hyperparameter list, from the checkpoint and the run's config.yaml."""
    model = metadata.get("hyper_parameters") or {}
    data = metadata.get("datamodule_hyper_parameters") or {}
    trainer = config.get("trainer") or {}
    accumulate = trainer.get("accumulate_grad_batches") or 1
    devices = trainer.get("devices") if isinstance(trainer.get("devices"), int) else 1
    values = {
        "learning_rate": model.get("lr"),
        "train_batch_size": data.get("batch_size"),
        "eval_batch_size": data.get("eval_batch_size"),
        "seed": config.get("seed_everything", data.get("seed")),
        "gradient_accumulation_steps": accumulate if accumulate != 1 else None,
        "total_train_batch_size": (data["batch_size"] * accumulate * devices
                                   if data.get("batch_size") and (accumulate != 1 or devices != 1) else None),
        "optimizer": _optimizer(model) if model else None,
        "lr_scheduler_type": model.get("schedule"),
        "lr_scheduler_warmup_steps": model.get("warmup_steps"),
        "training_steps": trainer.get("max_steps") if (trainer.get("max_steps") or -1) > 0 else None,
        "checkpoint_step": metadata.get("global_step"),
        "mixed_precision_training": trainer.get("precision"),
    }
    return {key: value for key, value in values.items() if value is not None}


def _optimizer(model: dict[str, Any]) -> str:
    betas = tuple(model.get("betas") or (0.9, 0.999))
    name = {"adamw": "AdamW", "adam": "Adam"}.get(model.get("optimizer", "adamw"), model.get("optimizer"))
    eps, decay = model.get("eps", 1e-8), model.get("weight_decay", 0.0)
    return f"{name} with betas={betas} and epsilon={eps}, weight decay {decay}"


# --- the model card ------------------------------------------------------------------------------------------


def _versions() -> str:
    lines = []
    for package, label in (("ptasr", "ptasr"), ("torch", "PyTorch"), ("lightning", "Lightning"),
                           ("torchaudio", "torchaudio")):
        try:
            lines.append(f"- {label} {version(package)}")
        except PackageNotFoundError:
            continue
    return "\n".join(lines)


def data_name(data: dict[str, Any], name: str) -> str | None:
    """What a run trained (``"train"``) or validated (``"val"``) on, by name, from the data module's settings:
    its ``data.sources`` or manifest where it read those, else its dataset or release folder.

    >>> data_name({"root": "/data/cv-corpus-17.0/pt", "train_manifest": "/data/mine/train.csv"}, "train")
    'train.csv'
    >>> data_name({"root": "/data/cv-corpus-17.0/pt", "sources": [{"path": "/data/cv-corpus-17.0/pt"},
    ...           {"path": "/data/coraa/train.csv"}]}, "train")
    'pt, train.csv'
    >>> data_name({"root": "/data/cv-corpus-17.0/pt", "train_manifest": "/data/mine/train.csv"}, "val")
    'pt'
    """
    sources = data.get("sources") if name == "train" else None
    if sources:
        return ", ".join(filter(None, map(_source_name, sources))) or None
    if data.get(f"{name}_manifest"):
        return Path(data[f"{name}_manifest"]).name
    return data.get("hf_dataset") or (Path(data["root"]).name if data.get("root") else None)


def _source_name(entry: Any) -> str | None:
    """A ``data.sources`` entry's file or dataset name; the checkpoint holds it as a mapping or a TrainSource."""
    fields = entry if isinstance(entry, dict) else vars(entry)
    return Path(fields["path"]).name if fields.get("path") else fields.get("hf_dataset")


def _front_matter(name: str, language: str | None, dataset: str | None, rows: list[ResultRow],
                  carried: dict[str, Any] | None = None) -> str:
    meta: dict[str, Any] = {}
    if language:
        meta["language"] = [language]
    meta.update({"library_name": "transformers", "pipeline_tag": "automatic-speech-recognition",
                 "tags": ["automatic-speech-recognition", "wav2vec2", "ctc", "ptasr"]})
    last = next((row for row in reversed(rows) if row.wer is not None), None)
    if last is not None:
        pooled = (dataset or "validation set", dataset or "validation")
        if last.sources:  # the pooled rates are of the validation sources, not of the training data's release
            pooled = ("validation sources " + ", ".join(last.sources), "validation")
        results = [_model_index_result(*pooled, last.wer, last.cer)]
        # each validation source as a dataset of its own, as the hub lists a model's results on several
        results += [_model_index_result(source, source, wer, cer)
                    for source, (wer, cer) in last.sources.items() if wer is not None]
        meta["model-index"] = [{"name": name, "results": results}]
    elif (carried or {}).get("model-index"):
        meta["model-index"] = [{**entry, "name": name} for entry in carried["model-index"]]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def _model_index_result(dataset: str, kind: str, wer: float, cer: float | None) -> dict[str, Any]:
    metrics = [{"type": "wer", "value": round(wer, 4), "name": "Validation WER"}]
    if cer is not None:
        metrics.append({"type": "cer", "value": round(cer, 4), "name": "Validation CER"})
    return {"task": {"type": "automatic-speech-recognition", "name": "Automatic Speech Recognition"},
            "dataset": {"name": dataset, "type": kind}, "metrics": metrics}


def model_card(
    name: str, recognizer: Recognizer, rows: list[ResultRow], hparams: dict[str, Any],
    language: str | None = None, dataset: str | None = None, carried: dict[str, Any] | None = None,
    validation: str | None = None,
) -> str:
    """README.md text in the layout of transformers' Trainer cards, which the reference model card uses.

    ``dataset``: what the model trained on (the intro); ``validation``: what its results are on (the
    model-index), ``dataset`` where not given.

    ``carried``: the training sections of the card of the folder being re-exported (:func:`previous_card`),
    used where this export has no training information of its own (no event files, no checkpoint metadata).
    """
    carried = carried or {}
    config = recognizer.model.config
    trained = recognizer.metadata.get("hyper_parameters") or {}
    if trained.get("pretrained"):
        base = trained["pretrained"]
        origin = f"a fine-tuned version of [{base}](https://huggingface.co/{base})"
    else:
        origin = f"a wav2vec2 model (\"{trained.get('preset', 'custom')}\" architecture) trained from scratch"
    last = next((row for row in reversed(rows) if row.wer is not None), None)
    results = ""
    if last is not None and last.validation_loss is not None:
        results = ("It achieves the following results on the evaluation set:\n"
                   f"- Loss: {last.validation_loss:.4f}\n- Wer: {last.wer:.4f}\n")
        results += "".join(f"- Wer on {source}: {wer:.4f}\n" for source, (wer, _) in last.sources.items()
                           if wer is not None)
    intro = (f"This model is {origin} ({config.num_hidden_layers} layers, hidden size {config.hidden_size}, a CTC "
             f"head over {len(recognizer.vocab)} characters), trained with ptasr{f' on {dataset}' if dataset else ''}.\n")
    if not trained and carried.get("intro"):
        intro = carried["intro"]
    if not rows and carried.get("results"):
        results = carried["results"]
    hparams_text = "\n".join(f"- {key}: {value}" for key, value in hparams.items())
    if not hparams and carried.get("hyperparameters"):
        hparams_text = carried["hyperparameters"].strip()
    table = training_tables(rows) if rows else carried.get("training results", "").strip()
    sections = [
        _front_matter(name, language, validation or dataset, rows, carried),
        f"# {name}\n",
        intro,
        results,
        "## Usage\n",
        "```bash\nptasr transcribe " + name + " audio.mp3\n```\n",
        "```python\nfrom transformers import pipeline\n\n"
        f"asr = pipeline(\"automatic-speech-recognition\", model=\"{name}\")\n"
        "print(asr(\"audio.flac\", chunk_length_s=20)[\"text\"])\n```\n",
        "Transcripts were normalised before training: " + _describe_normalizer(recognizer) + "\n",
        "## Training hyperparameters\n",
        "The following hyperparameters were used during training:\n" + (hparams_text or "- (not recorded)") + "\n",
        "### Training results\n",
        (table or "No TensorBoard event files were found for this run.") + "\n",
        "### Framework versions\n",
        _versions() + "\n",
    ]
    return "\n".join(section for section in sections if section)


def _describe_normalizer(recognizer: Recognizer) -> str:
    settings = recognizer.normalizer.to_dict()
    parts = [f"characters `{settings['chars_to_ignore']}` removed" if settings["chars_to_ignore"] else "",
             "lower-cased" if settings["lowercase"] else "", "accents stripped" if settings["strip_accents"] else ""]
    return ", ".join(part for part in parts if part) + " (see normalizer.json)."


# --- re-exporting a folder ----------------------------------------------------------------------------------


def previous_card(folder: Path) -> dict[str, Any]:
    """The training sections of the ptasr model card in ``folder`` (empty if there is none).

    A folder holds no event files and no training metadata, so re-exporting it (in place, or elsewhere) would
    otherwise replace its hyperparameters and results with "not recorded". Keys: ``model-index`` (front
    matter), ``intro`` (the "This model is ..." paragraph), ``results`` (the "It achieves ..." lines),
    ``hyperparameters`` (the list) and ``training results`` (the table).
    """
    path = folder / "README.md"
    if not path.is_file():
        return {}
    text = path.read_text(encoding="utf-8")
    if not text.startswith("---\n") or text.count("---\n") < 2:
        return {}
    _, front, body = text.split("---\n", 2)
    meta = yaml.safe_load(front) or {}
    if not isinstance(meta, dict) or "ptasr" not in (meta.get("tags") or []):
        return {}  # not ours: its layout is unknown
    paragraphs = body.split("\n\n")
    carried: dict[str, Any] = {"model-index": meta.get("model-index")}
    for paragraph in paragraphs:
        if paragraph.startswith("This model is "):
            carried["intro"] = paragraph.strip() + "\n"
        elif paragraph.startswith("It achieves the following results"):
            carried["results"] = paragraph.strip() + "\n"
    sections = _sections(body)
    hyperparameters = sections.get("## Training hyperparameters", "")
    carried["hyperparameters"] = "\n".join(line for line in hyperparameters.splitlines() if line.startswith("- "))
    table = sections.get("### Training results", "").strip()
    if table.startswith("|"):
        carried["training results"] = table
    return {key: value for key, value in carried.items() if value}


def _sections(markdown: str) -> dict[str, str]:
    """``{heading line: text under it}`` of a markdown text; ``#`` lines inside code fences are not headings."""
    sections: dict[str, str] = {}
    heading, fenced = "", False
    for line in markdown.splitlines(keepends=True):
        fenced ^= line.startswith("```")
        if line.startswith("#") and not fenced:
            heading = line.strip()
            sections[heading] = ""
        elif heading:
            sections[heading] += line
    return sections


def check_target(out_dir: Path, overwrite: bool) -> None:
    """Refuse to write into a non-empty folder unless ``overwrite``: it may hold a user's README.md or model."""
    if out_dir.exists() and not out_dir.is_dir():
        raise SettingError(f"export target {out_dir} is a file, not a folder; choose a folder name")
    if overwrite or not out_dir.is_dir():
        return
    present = sorted(path.name for path in out_dir.iterdir())
    if present:
        shown = ", ".join(present[:5]) + (", ..." if len(present) > 5 else "")
        raise SettingError(f"export target {out_dir} is not empty ({shown}); pass --overwrite to replace its "
                           f"files, or choose a new folder")


# --- the command ---------------------------------------------------------------------------------------------


def find_log_dir(source: Path) -> Path | None:
    """The run folder of a checkpoint (``<run>/checkpoints/x.ckpt``) when it holds TensorBoard events."""
    for candidate in (source.parent.parent, source.parent):
        if any(candidate.glob("events.out.tfevents.*")):
            return candidate
    return None


def export(
    source: str | Path, out_dir: str | Path, logs: str | Path | None = None, name: str | None = None,
    language: str | None = None, push_to_hub: str | None = None, private: bool = False, overwrite: bool = False,
    lm: str | Path | None = None,
    onnx: bool = False,
) -> Path:
    """Write the HF folder and model card for ``source`` (checkpoint, folder or hub id) into ``out_dir``.

    Args:
        logs: the TensorBoard run folder; default: the checkpoint's run folder (``<run>/checkpoints/..``).
        name: the model's name in the card (default: the output folder's name).
        language: language code for the card's metadata (default: the data module's ``language``, if set).
        push_to_hub: a hub repo id (``user/name``) to upload the folder to.
        private: create that repo as private.
        overwrite: write into ``out_dir`` even if it is not empty (its files of the same names are replaced).
        lm: a KenLM model to ship in ``Wav2Vec2ProcessorWithLM``'s layout, with its tuned weights
            (:func:`ptasr.lm.write_processor_with_lm`).
        onnx: also write ``model.onnx`` (:mod:`ptasr.onnx`).

    Re-exporting an exported folder (in place with ``overwrite``, or elsewhere) keeps its card's training
    sections (:func:`previous_card`).
    """
    out_dir = Path(out_dir)
    check_target(out_dir, overwrite)
    recognizer = Recognizer.load(source, device="cpu", dtype="float32")  # the weights as trained
    carried = previous_card(Path(source)) if Path(source).is_dir() else {}  # read before an in-place rewrite
    log_dir = Path(logs) if logs is not None else find_log_dir(Path(source))
    if log_dir is not None and not log_dir.is_dir():
        raise MissingPathError(f"no TensorBoard run folder at {log_dir}")
    write_hf_folder(recognizer, out_dir)
    if lm is not None:
        from ptasr.lm import resolve_weights, write_processor_with_lm

        lm_weight, word_score, tuned = resolve_weights(lm)
        if tuned is None:
            log.warning("%s has no tuned weights (ptasr evaluate ... --lm %s --tune); shipping LM weight %g, "
                        "word score %g", lm, lm, lm_weight, word_score)
        write_processor_with_lm(out_dir, recognizer.vocab, lm, lm_weight, word_score)
    rows = training_results(read_scalars(log_dir)) if log_dir is not None else []
    data = recognizer.metadata.get("datamodule_hyper_parameters") or {}
    card = model_card(name or push_to_hub or out_dir.resolve().name, recognizer, rows,
                      hyperparameters(recognizer.metadata, run_config(log_dir)),
                      language=language or data.get("language"), dataset=data_name(data, "train"),
                      validation=data_name(data, "val"), carried=carried)
    (out_dir / "README.md").write_text(card, encoding="utf-8")
    if onnx:
        from ptasr.onnx import ONNX_FILE, export_onnx

        export_onnx(recognizer.model, out_dir / ONNX_FILE)
    if push_to_hub:
        push(out_dir, push_to_hub, private)
    return out_dir


def push(folder: Path, repo_id: str, private: bool = False) -> str:
    """Upload ``folder`` to the hub repo ``repo_id`` (created if needed); returns the repo URL."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise HubError(f"cannot push to {repo_id}: HF_HUB_OFFLINE is set. The export in {folder} is complete; "
                      f"upload it later with `huggingface-cli upload {repo_id} {folder}`")
    try:
        from huggingface_hub import HfApi

        api = HfApi()
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message="Upload model exported by ptasr")
    except Exception as error:  # noqa: BLE001 -- network, auth and hub errors all end the same way
        raise HubError(f"could not push {folder} to the hub repo {repo_id} ({type(error).__name__}: "
                      f"{str(error).splitlines()[0] if str(error) else 'no details'}). Offline or not logged in? "
                      f"The export itself is complete") from error
    return str(url)
