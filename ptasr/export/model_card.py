"""The model card (``README.md`` of an exported folder) in the layout of transformers' Trainer cards: the
training-results tables (each validation source's rows where there are several), the hyperparameters, the
front matter with its model-index, what the run trained on, and the training sections a re-export carries
over from the card it replaces.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import yaml

from ptasr.recognition.recognizer import Recognizer
from ptasr.run_log import ResultRow

# --- the training results tables -----------------------------------------------------------------------------


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


def hyperparameters(metadata: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """The reference card's hyperparameter list, from the checkpoint and the run's config.yaml."""
    model = metadata.get("hyper_parameters") or {}
    data = metadata.get("datamodule_hyper_parameters") or {}
    trainer = config.get("trainer") or {}
    accumulate = trainer.get("accumulate_grad_batches") or 1
    devices = trainer.get("devices") if isinstance(trainer.get("devices"), int) else 1
    batch_size = data_setting(data, "batching", "batch_size")
    values = {
        "learning_rate": model.get("lr"),
        "train_batch_size": batch_size,
        "eval_batch_size": data_setting(data, "batching", "eval_batch_size"),
        "seed": config.get("seed_everything", data_setting(data, "batching", "seed")),
        "gradient_accumulation_steps": accumulate if accumulate != 1 else None,
        "total_train_batch_size": (batch_size * accumulate * devices
                                   if batch_size and (accumulate != 1 or devices != 1) else None),
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
    each source's file, folder or dataset name.

    >>> data_name({"train": [{"path": "/data/cv-corpus-17.0/pt"}, {"path": "/data/coraa/train.csv"}]}, "train")
    'pt, train.csv'
    >>> data_name({"train": "/data/mine/train.csv", "val": "/data/mine/dev.csv"}, "val")
    'dev.csv'
    >>> data_name({"root": "/data/cv-corpus-17.0/pt", "train_manifest": "/data/mine/train.csv"}, "train")
    'train.csv'
    """
    if "train" not in data:
        return _data_name_before_sources(data, name)
    sources = data.get(name)
    sources = [sources] if isinstance(sources, str) else sources or []
    names = [Path(str(source if isinstance(source, str) else source.get("path"))).name for source in sources]
    return ", ".join(filter(None, names)) or None


def _data_name_before_sources(data: dict[str, Any], name: str) -> str | None:
    """:func:`data_name` of a checkpoint written before data.train/val/test (issue #24), whose data module took
    ``root``, ``hf_dataset``, ``<name>_manifest`` and ``sources``: such runs still export."""
    sources = data.get("sources") if name == "train" else None
    if sources:
        fields = [entry if isinstance(entry, dict) else vars(entry) for entry in sources]
        return ", ".join(Path(f["path"]).name if f.get("path") else f.get("hf_dataset") or "" for f in fields) or None
    if data.get(f"{name}_manifest"):
        return Path(data[f"{name}_manifest"]).name
    return data.get("hf_dataset") or (Path(data["root"]).name if data.get("root") else None)


def data_setting(data: dict[str, Any], group: str, name: str) -> Any:
    """``data.<group>.<name>`` from a checkpoint's data module settings; a checkpoint written before the settings
    were grouped (issue #24) holds it as ``data.<name>``."""
    return (data.get(group) or {}).get(name) if isinstance(data.get(group), dict) else data.get(name)


def data_language(data: dict[str, Any]) -> str | None:
    """The language a run's first training source names (``language: pt``), or its ``data.language`` from before
    issue #24."""
    sources = data.get("train")
    if isinstance(sources, list) and sources and isinstance(sources[0], dict):
        return sources[0].get("language")
    return data.get("language")


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
    validation: str | None = None, lm: bool = False,
) -> str:
    """README.md text in the layout of transformers' Trainer cards, which the reference model card uses.

    ``dataset``: what the model trained on (the intro); ``validation``: what its results are on (the
    model-index), ``dataset`` where not given. ``lm``: the folder holds an n-gram LM (``export --lm``): the card
    says how to decode with it.

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
        lm_usage(name) if lm else "",
        "Transcripts were normalised before training: " + _describe_normalizer(recognizer) + "\n",
        "## Training hyperparameters\n",
        "The following hyperparameters were used during training:\n" + (hparams_text or "- (not recorded)") + "\n",
        "### Training results\n",
        (table or "No TensorBoard event files were found for this run.") + "\n",
        "### Framework versions\n",
        _versions() + "\n",
    ]
    return "\n".join(section for section in sections if section)


# transformers releases whose Wav2Vec2ProcessorWithLM.from_pretrained cannot load an LM folder: 5.25.0 raises
# AttributeError ('super' object has no attribute '_get_arguments_from_pretrained'). tests/test_lm_cli.py checks
# the folder against the version installed (tests/constraints.txt pins one that loads it).
TRANSFORMERS_WITHOUT_LM = ("5.25.0",)
TRANSFORMERS_WITH_LM = "5.24.0"  # the newest release the folder is tested with


def lm_usage(name: str) -> str:
    """The card's section on the n-gram LM of an ``export --lm`` folder: which transformers releases load it,
    and a decoding snippet that needs pyctcdecode, not transformers' processor."""
    snippet = f"""import soundfile as sf
import torch
from pyctcdecode import BeamSearchDecoderCTC
from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

model = Wav2Vec2ForCTC.from_pretrained("{name}").eval()
features = Wav2Vec2FeatureExtractor.from_pretrained("{name}")
audio, rate = sf.read("audio.flac")  # mono, 16 kHz
with torch.no_grad():
    logits = model(**features(audio, sampling_rate=rate, return_tensors="pt")).logits[0]
decoder = BeamSearchDecoderCTC.load_from_dir("{name}")  # alphabet.json, language_model/ (LM weights: attrs.json)
print(decoder.decode(logits.numpy()))
"""
    return ("### With the n-gram language model\n\n"
            "`language_model/` holds a KenLM n-gram model and `alphabet.json` the CTC labels, in the layout of "
            "transformers' `Wav2Vec2ProcessorWithLM` (it needs `pip install pyctcdecode kenlm`). "
            f"`Wav2Vec2ProcessorWithLM.from_pretrained` (and `AutoProcessor`) loads the folder in transformers up "
            f"to {TRANSFORMERS_WITH_LM} (tested with it); in {', '.join(TRANSFORMERS_WITHOUT_LM)} it raises "
            "AttributeError. With any transformers release, pyctcdecode decodes the logits by itself:"
            f"\n\n```python\n{snippet}```\n")


def _describe_normalizer(recognizer: Recognizer) -> str:
    settings = recognizer.normalizer.to_dict()
    parts = [f"characters `{settings['chars_to_ignore']}` removed" if settings["chars_to_ignore"] else "",
             "punctuation replaced by a space (apostrophes and hyphens within words kept)"
             if settings.get("strip_punctuation") else "",
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
