"""Model configuration: one dataclass, a few presets, and the mapping to and from Hugging Face ``config.json``.

Field names are transformers' ``Wav2Vec2Config`` names, so an HF config reads as ours key by key, with one
exception: transformers' ``do_stable_layer_norm`` is called ``pre_norm`` here, because that is what it
means (layer norm before attention and feed-forward, final norm after the stack). Field defaults are
transformers' defaults, so a ``config.json`` that omits a key means the same thing to both libraries.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ptasr.errors import SettingError, UnknownFieldError

_CONV_DIM = (512, 512, 512, 512, 512, 512, 512)
_CONV_KERNEL = (10, 3, 3, 3, 3, 2, 2)
_CONV_STRIDE = (5, 2, 2, 2, 2, 2, 2)

# HF config keys that change the architecture in ways ptasr does not implement; loading refuses them
# rather than silently computing a different function.
_UNSUPPORTED_HF = {"add_adapter": False, "adapter_attn_dim": None, "use_weighted_layer_sum": False}


@dataclass
class Wav2Vec2Config:
    """Architecture, regularisation and CTC settings of a wav2vec 2.0 / XLS-R model with a CTC head."""

    # Convolutional feature encoder: raw 16 kHz samples -> one frame every 20 ms.
    conv_dim: tuple[int, ...] = _CONV_DIM
    conv_kernel: tuple[int, ...] = _CONV_KERNEL
    conv_stride: tuple[int, ...] = _CONV_STRIDE
    conv_bias: bool = False
    feat_extract_norm: Literal["group", "layer"] = "group"
    feat_extract_activation: str = "gelu"
    # Transformer.
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    # How the positional conv is computed, not what: "direct" (the grouped conv kernel) or "fft" (the same
    # convolution through FFTs, ptasr.model.kernels.fft_conv); same weights, same result up to float rounding.
    positional_conv: Literal["direct", "fft"] = "direct"
    pre_norm: bool = False
    layer_norm_eps: float = 1e-5
    # Regularisation (names and meanings as in transformers).
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.1
    feat_proj_dropout: float = 0.0
    final_dropout: float = 0.1
    layerdrop: float = 0.1
    # SpecAugment on the projected features.
    apply_spec_augment: bool = True
    mask_time_prob: float = 0.05
    mask_time_length: int = 10
    mask_time_min_masks: int = 2
    mask_feature_prob: float = 0.0
    mask_feature_length: int = 10
    mask_feature_min_masks: int = 0
    # CTC head; vocab_size None means "encoder only" (a pretrained checkpoint without a head).
    vocab_size: int | None = 32
    pad_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int = 2
    ctc_loss_reduction: Literal["mean", "sum"] = "sum"
    ctc_zero_infinity: bool = False
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        # YAML and JSON give lists; tuples keep the config hashable and comparable.
        self.conv_dim = tuple(self.conv_dim)
        self.conv_kernel = tuple(self.conv_kernel)
        self.conv_stride = tuple(self.conv_stride)
        if not len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride):
            raise SettingError(
                f"conv_dim, conv_kernel and conv_stride need one entry per conv layer, got "
                f"{len(self.conv_dim)}, {len(self.conv_kernel)} and {len(self.conv_stride)}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise SettingError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )
        if self.positional_conv not in ("direct", "fft"):
            raise SettingError(f"positional_conv must be 'direct' or 'fft', got {self.positional_conv!r}")
        if self.feat_extract_norm not in ("group", "layer"):
            raise SettingError(f"feat_extract_norm must be 'group' or 'layer', got {self.feat_extract_norm!r}")

    def replace(self, **overrides: Any) -> Wav2Vec2Config:
        """A copy with some fields changed; unknown names raise an UnknownFieldError (a TypeError) naming them."""
        fields = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(overrides) - set(fields))
        if unknown:
            # A typo in model.config_overrides lands here: name it and the fields it was likely meant to be.
            hints = [f"{name!r} (close: {', '.join(difflib.get_close_matches(name, fields, n=3)) or 'none'})"
                     for name in unknown]
            raise UnknownFieldError(f"unknown Wav2Vec2Config field(s) {', '.join(hints)} (set in "
                                    f"model.config_overrides?); the fields are in ptasr/model/config.py")
        return dataclasses.replace(self, **overrides)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> Wav2Vec2Config:
        """A named architecture (see ``PRESETS``) with optional field overrides.

        >>> Wav2Vec2Config.preset("xls-r-300m").num_hidden_layers
        24
        """
        if name not in PRESETS:
            raise SettingError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return PRESETS[name].replace(**overrides)

    # --- Hugging Face config.json ---------------------------------------------------------------------------

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any]) -> Wav2Vec2Config:
        """Read a transformers ``Wav2Vec2Config`` dict (``config.json``); unknown keys are ignored."""
        if hf.get("model_type", "wav2vec2") != "wav2vec2":
            raise SettingError(f"expected a wav2vec2 config, got model_type {hf['model_type']!r}")
        for key, plain in _UNSUPPORTED_HF.items():
            if hf.get(key, plain) != plain:
                raise SettingError(f"config.json sets {key}={hf[key]!r}, which ptasr does not implement")
        names = {f.name for f in dataclasses.fields(cls)} - {"pre_norm"}
        values = {k: v for k, v in hf.items() if k in names}
        values["pre_norm"] = bool(hf.get("do_stable_layer_norm", False))
        return cls(**values)

    def to_hf_dict(self) -> dict[str, Any]:
        """A ``config.json`` dict that transformers' ``Wav2Vec2ForCTC`` (or ``Wav2Vec2Model``) reads as this model."""
        values = dataclasses.asdict(self)
        values["do_stable_layer_norm"] = values.pop("pre_norm")
        for key in ("conv_dim", "conv_kernel", "conv_stride"):
            values[key] = list(values[key])
        head = self.vocab_size is not None
        return {
            "architectures": ["Wav2Vec2ForCTC" if head else "Wav2Vec2Model"],
            "model_type": "wav2vec2",
            "num_feat_extract_layers": len(self.conv_dim),
            **values,
            **_UNSUPPORTED_HF,
        }

    @classmethod
    def from_json(cls, path: str | Path) -> Wav2Vec2Config:
        return cls.from_hf_dict(json.loads(Path(path).read_text()))

    def save_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_hf_dict(), indent=2) + "\n")


def _xls_r(hidden: int, layers: int, ffn: int) -> Wav2Vec2Config:
    # The XLS-R family (and XLSR-53): layer-norm conv stack with biases, pre-norm transformer.
    return Wav2Vec2Config(
        conv_bias=True,
        feat_extract_norm="layer",
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=16,
        intermediate_size=ffn,
        pre_norm=True,
    )


PRESETS: dict[str, Wav2Vec2Config] = {
    # facebook/wav2vec2-xls-r-300m config.json (architecture fields; dropouts are fine-tuning choices)
    "xls-r-300m": _xls_r(1024, 24, 4096),
    # facebook/wav2vec2-xls-r-1b config.json
    "xls-r-1b": _xls_r(1280, 48, 5120),
    # facebook/wav2vec2-xls-r-2b config.json
    "xls-r-2b": _xls_r(1920, 48, 7680),
    # facebook/wav2vec2-base(-960h) config.json: group-norm conv without bias, post-norm transformer
    "wav2vec2-base": Wav2Vec2Config(),
    # facebook/wav2vec2-large(-960h) config.json: as base, but 24 x 1024 with 16 heads
    "wav2vec2-large": Wav2Vec2Config(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096
    ),
    # Not a published checkpoint: the XLS-R layout at a size that trains from scratch on two CPU cores
    # (the design notes' trial: hidden 192, 4 layers, 4 heads, FFN 768, 128 conv channels). Tests shrink it further.
    "tiny": Wav2Vec2Config(
        conv_dim=(128,) * 7,
        conv_bias=True,
        feat_extract_norm="layer",
        hidden_size=192,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=768,
        pre_norm=True,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        final_dropout=0.0,
        layerdrop=0.0,
    ),
}


__all__ = ["PRESETS", "Wav2Vec2Config"]
