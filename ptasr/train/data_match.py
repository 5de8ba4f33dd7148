"""The checks that a run's data fits its model and the checkpoint it loads: the vocabulary (the CTC head's
size and symbols) and the conv numbers the data's CTC-feasibility filter used."""

from __future__ import annotations

from typing import Any

from ptasr.data.datamodule import check_checkpoint_vocabulary
from ptasr.data.text import TextNormalizer, Vocabulary
from ptasr.errors import SettingError
from ptasr.model.config import Wav2Vec2Config
from ptasr.recognition.trained_model import text_side


def check_data_fits_model(vocab: Vocabulary | None, filters: Any | None, config: Wav2Vec2Config) -> None:
    """Refuse data whose vocabulary is not the CTC head's size, or whose filter assumed another conv stack.

    Args:
        vocab: the data's vocabulary, if any.
        filters: the data module's ``FilterSettings`` (``conv_kernel``, ``conv_stride``), if any.
    """
    if vocab is not None and len(vocab) != config.vocab_size:
        raise SettingError(
            f"the data's vocabulary has {len(vocab)} tokens but the CTC head has "
            f"{config.vocab_size}; link data.vocab_size to model.vocab_size (train.py does)"
        )
    if filters is not None and (filters.conv_kernel, filters.conv_stride) != (config.conv_kernel, config.conv_stride):
        raise SettingError(
            f"the data filtered clips for a conv stack with kernels {filters.conv_kernel} and strides "
            f"{filters.conv_stride}, but the model has {config.conv_kernel} and {config.conv_stride}; "
            f"train.py links them from the model (a pretrained model's config.json must be readable when "
            f"the arguments are parsed: a local folder, or a hub id already downloaded)"
        )


def text_side_after_loading(entry: dict[str, Any], vocab: Vocabulary | None,
                            normalizer: TextNormalizer | None) -> tuple[Vocabulary | None, TextNormalizer | None]:
    """The text side a module has once it loaded a checkpoint whose ``"ptasr"`` entry is ``entry``.

    Outside a Trainer (``load_from_checkpoint`` for inference) the module has none and takes the checkpoint's.
    Inside one it keeps the data's, and a checkpoint whose vocabulary differs is refused here, before Lightning
    loads the weights (a head of another size would fail there with a bare shape error).
    """
    saved_vocab, saved_normalizer = text_side(entry)
    if vocab is not None and saved_vocab is not None:
        check_checkpoint_vocabulary(saved_vocab, vocab)
    if vocab is None and saved_vocab is not None:
        return saved_vocab, saved_normalizer
    return vocab, normalizer
