"""The model a run trains: a preset with random weights or a pretrained model, with the run's config
overrides, feature-encoder freezing and gradient checkpointing applied."""

from __future__ import annotations

from typing import Any

from ptasr.model.config import Wav2Vec2Config
from ptasr.model.wav2vec2 import Wav2Vec2CTC


def build_model(vocab_size: int, pad_token_id: int, preset: str, pretrained: str | None,
                vocab_tokens: list[str] | None, config_overrides: dict[str, Any] | None,
                freeze_feature_encoder: bool, gradient_checkpointing: bool) -> Wav2Vec2CTC:
    """The model for the module's arguments of the same names (see ``Wav2Vec2CTCModule``).

    >>> model = build_model(7, 6, "tiny", None, None, {"num_hidden_layers": 1}, True, False)
    >>> model.config.vocab_size, model.config.pad_token_id, model.config.num_hidden_layers
    (7, 6, 1)
    """
    overrides = dict(config_overrides or {}, pad_token_id=pad_token_id)
    if pretrained:
        model = Wav2Vec2CTC.from_pretrained(pretrained, vocab_size=vocab_size, vocab=vocab_tokens, **overrides)
    else:
        model = Wav2Vec2CTC(Wav2Vec2Config.preset(preset, vocab_size=vocab_size, **overrides))
    if freeze_feature_encoder:
        model.freeze_feature_encoder()
    if gradient_checkpointing:
        model.set_gradient_checkpointing(True)
    return model
