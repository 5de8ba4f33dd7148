"""``ptasr export``: a training checkpoint -> a Hugging Face model folder with a model card.

The folder is what transformers' ``run_speech_recognition_ctc.py`` leaves behind, so ``Wav2Vec2ForCTC``,
``Wav2Vec2Processor`` and ``pipeline("automatic-speech-recognition")`` load it as they load any hub model:

- ``config.json`` + ``model.safetensors`` (the model's own ``save_pretrained``),
- ``vocab.json``, ``tokenizer_config.json``, ``special_tokens_map.json`` (a ``Wav2Vec2CTCTokenizer`` with
  ``|`` between words, ``[UNK]`` and ``[PAD]``; no ``<s>``/``</s>``, which a CTC head never emits),
- ``preprocessor_config.json`` (a ``Wav2Vec2FeatureExtractor``: 16 kHz, zero-mean unit-variance),
- ``normalizer.json`` (ptasr's transcript normaliser, so ``ptasr evaluate`` scores an export as it scored the
  checkpoint),
- ``README.md``: the model card (:mod:`ptasr.export.model_card`), with the training results read from the run's
  TensorBoard event files (:mod:`ptasr.run_log`).

The folder is written beside its place and moved there once complete (:func:`ptasr.storage.staged_folder`): a
full disk or a failure halfway leaves no folder, or the earlier export as it was. :func:`push` uploads the folder
to the hub.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ptasr.data.text import Vocabulary
from ptasr.errors import HubError, MissingPathError, SettingError
from ptasr.export.model_card import data_language, data_name, hyperparameters, model_card, previous_card
from ptasr.model.config import Wav2Vec2Config
from ptasr.recognition.recognizer import Recognizer
from ptasr.run_log import find_log_dir, read_scalars, run_config, training_results
from ptasr.storage import staged_folder

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


# --- the command ---------------------------------------------------------------------------------------------


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
        language: language code for the card's metadata (default: the language of the run's first training source, if set).
        push_to_hub: a hub repo id (``user/name``) to upload the folder to.
        private: create that repo as private.
        overwrite: write into ``out_dir`` even if it is not empty: its files of the same names are replaced once
            the whole export is written (:func:`staged_folder`).
        lm: a KenLM model to ship in ``Wav2Vec2ProcessorWithLM``'s layout, with its tuned weights
            (:func:`ptasr.decoding.lm.write_processor_with_lm`).
        onnx: also write ``model.onnx`` (:mod:`ptasr.export.onnx`).

    Re-exporting an exported folder (in place with ``overwrite``, or elsewhere) keeps its card's training
    sections (:func:`ptasr.export.model_card.previous_card`).
    """
    out_dir = Path(out_dir)
    check_target(out_dir, overwrite)
    recognizer = Recognizer.load(source, device="cpu", dtype="float32")  # the weights as trained
    carried = previous_card(Path(source)) if Path(source).is_dir() else {}  # read before an in-place rewrite
    log_dir = Path(logs) if logs is not None else find_log_dir(Path(source))
    if log_dir is not None and not log_dir.is_dir():
        raise MissingPathError(f"no TensorBoard run folder at {log_dir}")
    if lm is not None:
        from ptasr.decoding.lm import resolve_weights

        lm_weight, word_score, tuned = resolve_weights(lm)
        if tuned is None:
            log.warning("%s has no tuned weights (ptasr evaluate ... --lm %s --tune); shipping LM weight %g, "
                        "word score %g", lm, lm, lm_weight, word_score)
    rows = training_results(read_scalars(log_dir)) if log_dir is not None else []
    data = recognizer.metadata.get("datamodule_hyper_parameters") or {}
    card = model_card(name or push_to_hub or out_dir.resolve().name, recognizer, rows,
                      hyperparameters(recognizer.metadata, run_config(log_dir)),
                      language=language or data_language(data), dataset=data_name(data, "train"),
                      validation=data_name(data, "val"), carried=carried, lm=lm is not None)
    with staged_folder(out_dir, bytes_needed(recognizer, lm, onnx)) as staging:
        write_hf_folder(recognizer, staging)
        if lm is not None:
            from ptasr.decoding.lm import write_processor_with_lm

            write_processor_with_lm(staging, recognizer.vocab, lm, lm_weight, word_score)
        (staging / "README.md").write_text(card, encoding="utf-8")
        if onnx:
            from ptasr.export.onnx import ONNX_FILE, export_onnx

            export_onnx(recognizer.model, staging / ONNX_FILE)
    if push_to_hub:
        push(out_dir, push_to_hub, private)
    return out_dir


# --- the space an export needs -------------------------------------------------------------------------------


def bytes_needed(recognizer: Recognizer, lm: str | Path | None, onnx: bool) -> int:
    """About what an export writes: the float32 weights (twice with ONNX), the LM file, 1 MB for the rest."""
    weights = sum(t.numel() * 4 for t in recognizer.model.state_dict().values())
    return weights * (2 if onnx else 1) + (Path(lm).stat().st_size if lm is not None else 0) + 1_000_000


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
