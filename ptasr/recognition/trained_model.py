"""The trained-model format: what a ``train.py`` checkpoint carries besides the weights, and loading a model
with its vocabulary and normaliser from any place a trained model lives.

A trained model is three things that belong together: the network (a :class:`Wav2Vec2Config` and weights),
the :class:`Vocabulary` its CTC head predicts, and the :class:`TextNormalizer` its references were cleaned
with. They live in

- a Lightning checkpoint written by ``python train.py fit``: the LightningModule's ``model.*`` weights, plus the
  ``"ptasr"`` entry (:func:`checkpoint_entry`) with the model config, vocabulary and normaliser, so the
  ``.ckpt`` alone rebuilds the model (training state such as random streams travels in the same entry),
- a folder written by ``ptasr export`` or any Hugging Face wav2vec2 CTC folder (``config.json``,
  ``model.safetensors`` or ``pytorch_model.bin``, ``vocab.json``; ``normalizer.json`` if ptasr wrote it),
- a hub id of such a folder (downloaded with huggingface_hub).

:func:`load_any` reads all three; the weight conversion itself (HF and fairseq names, checked loading) is
``ptasr.model.convert``.

A ``.ckpt`` is verified before anything is restored from it (:func:`verify_checkpoint`): ``torch.save`` writes a zip
archive whose every record carries the CRC-32 of its bytes, which ``torch.load`` does not check, so a checkpoint
with flipped bytes loads and resumes NaN weights without a word. The checksums are that digest: no sidecar file
that a kill between two renames could leave out of step, and checkpoints written before ptasr checked them are
verified too. A damaged file is refused in one line naming the newest intact checkpoint beside it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any, NamedTuple

from ptasr.compat import is_sharded_checkpoint, load_sharded_checkpoint
from ptasr.data.text import TextNormalizer, Vocabulary
from ptasr.errors import CheckpointError, MissingPathError
from ptasr.model.config import Wav2Vec2Config
from ptasr.model.convert import MODEL_FILES, damaged_file_message, download, is_hub_id, load_checked, safe_torch_load
from ptasr.model.wav2vec2 import Wav2Vec2CTC

log = logging.getLogger(__name__)

# The key of a Lightning checkpoint that holds the model config and the text side.
ENTRY = "ptasr"
# A hub download: the model files plus the text side an exported folder carries (tokenizer and processor
# files are for transformers only).
HUB_FILES = [*MODEL_FILES, "vocab.json", "added_tokens.json", "normalizer.json"]


class TrainedModel(NamedTuple):
    """A network with its vocabulary and normaliser, and where it came from (training metadata when known)."""

    model: Wav2Vec2CTC
    vocab: Vocabulary
    normalizer: TextNormalizer
    metadata: dict[str, Any]


# --- the checkpoint's "ptasr" entry ----------------------------------------------------------------------------


def checkpoint_entry(config: Wav2Vec2Config, vocab: Vocabulary | None,
                     normalizer: TextNormalizer | None) -> dict[str, Any]:
    """What the LightningModule writes under ``checkpoint["ptasr"]``: plain data only, so the checkpoint loads
    with ``torch.load(weights_only=True)``.

    >>> entry = checkpoint_entry(Wav2Vec2Config.preset("tiny"), Vocabulary.build(["ab"]), TextNormalizer())
    >>> sorted(entry), entry["vocab"]["tokens"]
    (['model_config', 'normalizer', 'vocab'], ['|', 'a', 'b', '[UNK]', '[PAD]'])
    >>> text_side(entry)[0].tokens == Vocabulary.build(["ab"]).tokens
    True
    """
    return {
        "model_config": dataclasses.asdict(config),
        "vocab": vocab.to_dict() if vocab is not None else None,
        "normalizer": normalizer.to_dict() if normalizer is not None else None,
    }


def text_side(entry: dict[str, Any]) -> tuple[Vocabulary | None, TextNormalizer]:
    """The vocabulary (None if the run had none) and normaliser (the default if none was saved) of an entry."""
    vocab = Vocabulary.from_dict(entry["vocab"]) if entry.get("vocab") is not None else None
    normalizer = TextNormalizer.from_dict(entry["normalizer"]) if entry.get("normalizer") else TextNormalizer()
    return vocab, normalizer


# --- loading ---------------------------------------------------------------------------------------------------


def verify_checkpoint(path: str | os.PathLike[str]) -> None:
    """Refuse a checkpoint file that is empty, truncated or changed since it was written, before it is read.

    Raises:
        CheckpointError: one line naming ``path``, what is wrong, and the newest intact ``.ckpt`` beside it.
    """
    path = Path(path)
    problem = checkpoint_damage(path)
    if problem is None:
        return
    alternative = newest_intact_checkpoint(path.parent, besides=path)
    way_out = (f"the newest intact checkpoint beside it is {alternative} (pass it as --ckpt_path, or as MODEL)"
               if alternative is not None else "no intact checkpoint is beside it")
    raise CheckpointError(f"{damaged_file_message(path, ValueError(problem))}; {way_out}")


def checkpoint_damage(path: Path) -> str | None:
    """What is wrong with the checkpoint file at ``path``, or ``None`` when every record matches its checksum."""
    stat = path.stat()
    return _damage(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)  # a resume checks the same file at parsing and again at restoring
def _damage(path: str, size: int, mtime_ns: int) -> str | None:
    if size == 0:
        return "it is empty, 0 bytes"
    if not zipfile.is_zipfile(path):  # torch.save (and Lightning) write zip archives, directory at the end
        return "no zip directory at its end"
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
            if all(record.CRC == 0 for record in records if record.file_size):
                # torch.serialization.set_crc32_options(False) wrote it: nothing to check against
                log.info("%s carries no checksums (saved with torch's CRC-32 off): loaded unverified", path)
                return None
            changed = archive.testzip()  # reads every record and compares its CRC-32
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError) as error:
        return f"its zip structure is broken: {error}"
    return f"record {changed} does not match its CRC-32 checksum" if changed is not None else None


def newest_intact_checkpoint(folder: Path, besides: Path | None = None) -> Path | None:
    """The most recently written ``*.ckpt`` in ``folder`` (other than ``besides``) that passes the checks."""
    candidates = [p for p in folder.glob("*.ckpt") if p.is_file() and p != besides]
    for candidate in sorted(candidates, key=lambda p: p.stat().st_mtime, reverse=True):
        if checkpoint_damage(candidate) is None:
            return candidate
    return None


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A ``train.py`` checkpoint as a dict: a verified ``.ckpt`` file, or a sharded run's checkpoint folder
    gathered whole (``ptasr.train.sharding``; its shards are checked by ``torch.distributed.checkpoint``)."""
    if is_sharded_checkpoint(path):
        return load_sharded_checkpoint(path)
    verify_checkpoint(path)
    return safe_torch_load(path)


def load_lightning_checkpoint(path: Path) -> TrainedModel:
    """Model, vocabulary, normaliser and training metadata of a ``train.py`` checkpoint (file or sharded folder)."""
    checkpoint = read_checkpoint(path)
    entry = checkpoint.get(ENTRY) if isinstance(checkpoint, dict) else None
    if not entry or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a ptasr training checkpoint (no 'ptasr' and 'state_dict' entries)")
    vocab, normalizer = text_side(entry)
    if vocab is None:
        raise CheckpointError(f"{path} was saved without a vocabulary (trained without the data module?)")
    # The LightningModule holds the network as `self.model`: its weights are the "model." entries.
    state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    model = Wav2Vec2CTC(Wav2Vec2Config(**entry["model_config"]))
    load_checked(model, state, set(), source=str(path))
    metadata = {key: checkpoint.get(key) for key in ("hyper_parameters", "datamodule_hyper_parameters",
                                                     "global_step", "epoch")}
    return TrainedModel(model, vocab, normalizer, {**metadata, "checkpoint": str(path)})


def read_text_side(path: Path) -> tuple[Vocabulary | None, TextNormalizer]:
    """The vocabulary (None if the run had none) and normaliser a ``train.py`` checkpoint carries, without
    building its model."""
    checkpoint = read_checkpoint(path)
    entry = checkpoint.get(ENTRY) if isinstance(checkpoint, dict) else None
    return text_side(entry or {})


def load_folder_vocabulary(folder: Path) -> Vocabulary:
    """``vocab.json`` plus the tokens of ``added_tokens.json`` (HF's script adds ``<s>``/``</s>`` there)."""
    if not (folder / "vocab.json").is_file():
        raise MissingPathError(f"no vocab.json in {folder}: a CTC model folder needs its vocabulary")
    vocab = Vocabulary.load(folder / "vocab.json")
    added = folder / "added_tokens.json"
    if not added.is_file():
        return vocab
    extra = json.loads(added.read_text(encoding="utf-8"))
    tokens = list(vocab.tokens)
    for token, index in sorted(extra.items(), key=lambda item: item[1]):
        if index == len(tokens):
            tokens.append(token)
    return Vocabulary(tokens, pad_token=vocab.pad_token, unk_token=vocab.unk_token)


def load_folder(folder: Path) -> TrainedModel:
    """Model, vocabulary and normaliser of an exported (or any HF wav2vec2 CTC) folder."""
    model = Wav2Vec2CTC.from_pretrained(folder)
    return TrainedModel(model, load_folder_vocabulary(folder), load_folder_normalizer(folder), {"folder": str(folder)})


def load_folder_normalizer(folder: Path) -> TextNormalizer:
    """``normalizer.json`` of a model folder, else the default normaliser (an HF folder has none)."""
    if (folder / "normalizer.json").is_file():
        return TextNormalizer.load(folder / "normalizer.json")
    log.info("%s has no normalizer.json; references will be normalised with the default", folder)
    return TextNormalizer()


def load_any(source: str | Path) -> TrainedModel:
    """Dispatch on what ``source`` is: checkpoint file, model folder, or hub id."""
    path = Path(source).expanduser()
    if path.is_file() or is_sharded_checkpoint(path):
        return load_lightning_checkpoint(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise MissingPathError(f"{path} is a folder without config.json: not an exported model")
        return load_folder(path)
    if is_hub_id(source):
        return load_folder(download(str(source), HUB_FILES))
    raise MissingPathError(f"no model at {source}: not a checkpoint file, a model folder or a hub id")
