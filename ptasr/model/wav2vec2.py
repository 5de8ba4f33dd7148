"""wav2vec 2.0 / XLS-R encoder with a CTC head, read top to bottom.

Notation:
    B  batch size
    S  samples per waveform (16 kHz)
    C  conv channels (conv_dim)
    T  frames (one per 20 ms with the standard conv stack)
    N  valid frames of a batch (the sum of its frame lengths), packed without padding
    D  hidden size
    H  attention heads, Dh = D / H
    V  vocabulary size (CTC blank included)

Every module and parameter carries the name transformers gives it, so a ``Wav2Vec2ForCTC`` state dict loads
here key for key (``ptasr.model.convert``) and ours saves back into transformers' format unchanged.
Every stage passes integer lengths along: samples in, frames out.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ptasr.lengths import conv_output_lengths
from ptasr.model.config import Wav2Vec2Config
from ptasr.model.masking import span_mask

log = logging.getLogger(__name__)

_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "swish": nn.SiLU}


def _activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; ptasr implements {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


def length_mask(lengths: torch.Tensor, max_length: int) -> torch.Tensor:
    """(B,) lengths -> (B, max_length) bool, True at valid positions."""
    return torch.arange(max_length, device=lengths.device) < lengths[:, None]


class InputDtypeLayerNorm(nn.LayerNorm):
    """A LayerNorm that, under autocast, returns a bf16 (or fp16) input's own dtype; elsewhere ``nn.LayerNorm``.

    Only for norms whose output feeds matrix products. CUDA's autocast runs LayerNorm in float32: it copies a
    bf16 input to float32 (the copy is what the backward pass keeps), and every linear that reads the float32
    output casts it back to bf16 on its own (three times for q, k and v). The kernel computes in float32 for a
    bf16 input anyway, so calling it on the bf16 input keeps half the bytes for the backward pass, writes one bf16
    output that all readers share, and runs up to four fewer kernels. CUDA's kernel takes gain and bias in the
    input's dtype, so there they are rounded to it, as autocast rounds every linear's weight. CPU's kernel takes
    them in float32, which is what CPU's autocast (which leaves LayerNorm alone) does already.

    Not for post-norm blocks: there the norm's output is the residual stream, which autocast keeps in float32.
    """

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        device = features.device.type
        if features.dtype not in (torch.bfloat16, torch.float16) or not torch.is_autocast_enabled(device):
            return super().forward(features)
        weight, bias = self.weight, self.bias
        if device != "cpu":
            weight = None if weight is None else weight.to(features.dtype)
            bias = None if bias is None else bias.to(features.dtype)
        with torch.autocast(device, enabled=False):
            return F.layer_norm(features, self.normalized_shape, weight, bias, self.eps)


# --- feature encoder: waveform -> frames ---------------------------------------------------------------------


def channels_last_conv(conv: nn.Conv1d, features: torch.Tensor) -> torch.Tensor:
    """Apply a Conv1d to time-major features: (B, S, C_in) -> (B, S', C_out), no transposed copies.

    (B, S, C) memory is exactly a channels-last (NHWC) image of height 1, so the conv runs as a 2-D
    channels-last convolution, the layout oneDNN and cuDNN prefer, and its output is again (B, S', C) in
    memory. The LayerNorms and activations between convs then work on the last axis without the two
    transposed copies per layer that a (B, C, S) layout needs (about a third of the conv stack's CPU time).
    """
    image = features.transpose(1, 2).unsqueeze(2)  # (B, C_in, 1, S), channels-last strides
    weight = conv.weight.unsqueeze(2).contiguous(memory_format=torch.channels_last)  # (C_out, C_in, 1, k)
    padding = conv.padding if isinstance(conv.padding, str) else (0, conv.padding[0])
    out = F.conv2d(image, weight, conv.bias, stride=(1, conv.stride[0]), padding=padding, groups=conv.groups)
    return out.squeeze(2).transpose(1, 2).contiguous()  # a view, unless a backend chose another layout


class ConvLayer(nn.Module):
    """Conv1d, optional norm over channels (layer) or over time per channel (group), activation."""

    def __init__(self, in_channels: int, config: Wav2Vec2Config, index: int, norm: str | None) -> None:
        super().__init__()
        out_channels = config.conv_dim[index]
        self.conv = nn.Conv1d(
            in_channels,
            out_channels,
            kernel_size=config.conv_kernel[index],
            stride=config.conv_stride[index],
            bias=config.conv_bias,
        )
        # transformers builds both norms with torch's default eps, not config.layer_norm_eps.
        if norm == "layer":
            self.layer_norm = InputDtypeLayerNorm(out_channels)
        elif norm == "group":
            self.layer_norm = nn.GroupNorm(num_groups=out_channels, num_channels=out_channels)
        self.norm = norm
        self.activation = _activation(config.feat_extract_activation)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, S', C_in) -> (B, S'', C), time-major throughout."""
        features = channels_last_conv(self.conv, features)
        if self.norm == "layer":
            features = self.layer_norm(features)
        elif self.norm == "group":  # per channel over time: wants (B, C, S), once, on the first layer only
            features = self.layer_norm(features.transpose(1, 2)).transpose(1, 2)
        return self.activation(features)


class FeatureEncoder(nn.Module):
    """The strided conv stack: 16 kHz samples -> frames of conv_dim[-1] channels."""

    def __init__(self, config: Wav2Vec2Config) -> None:
        super().__init__()
        # "group": GroupNorm on the first layer only (wav2vec2-base); "layer": LayerNorm on every layer (XLS-R).
        norms = [config.feat_extract_norm if (i == 0 or config.feat_extract_norm == "layer") else None
                 for i in range(len(config.conv_dim))]
        in_channels = (1, *config.conv_dim[:-1])
        self.conv_layers = nn.ModuleList(
            ConvLayer(in_channels[i], config, i, norms[i]) for i in range(len(config.conv_dim))
        )
        self.kernels, self.strides = config.conv_kernel, config.conv_stride

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S) float, (B,) samples -> features (B, T, C), (B,) frames."""
        features = waveforms[:, :, None]  # (B, S, 1)
        for layer in self.conv_layers:
            features = layer(features)
        return features, conv_output_lengths(lengths, self.kernels, self.strides)


class FeatureProjection(nn.Module):
    """LayerNorm over conv channels, then a linear map to the transformer width."""

    def __init__(self, config: Wav2Vec2Config) -> None:
        super().__init__()
        self.layer_norm = InputDtypeLayerNorm(config.conv_dim[-1], eps=config.layer_norm_eps)
        self.projection = nn.Linear(config.conv_dim[-1], config.hidden_size)
        self.dropout = nn.Dropout(config.feat_proj_dropout)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, D)."""
        return self.dropout(self.projection(self.layer_norm(features)))


# --- transformer ---------------------------------------------------------------------------------------------


class PositionalConvEmbedding(nn.Module):
    """Relative positions from a wide grouped convolution over time, weight-normalised over the kernel axis."""

    def __init__(self, config: Wav2Vec2Config) -> None:
        super().__init__()
        kernel, width = config.num_conv_pos_embeddings, config.hidden_size
        conv = nn.Conv1d(width, width, kernel, padding=kernel // 2, groups=config.num_conv_pos_embedding_groups)
        # fairseq's init, applied before weight norm so that g starts as ||v||.
        nn.init.normal_(conv.weight, mean=0.0, std=2 * math.sqrt(1 / (kernel * width)))
        nn.init.zeros_(conv.bias)
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        # "Same" padding of an even kernel yields one frame too many; transformers' SamePad drops the last.
        self.trim = 1 if kernel % 2 == 0 else 0
        self.activation = _activation(config.feat_extract_activation)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, T, D) positional term."""
        positions = channels_last_conv(self.conv, hidden)  # (B, T + trim, D)
        return self.activation(positions[:, : positions.shape[1] - self.trim])


class FramePacking(NamedTuple):
    """Where the valid frames of a padded (B, T) batch lie, to run per-frame work on them alone.

    Every part of a transformer layer but attention treats frames one by one, so the layers work on the N valid
    frames packed into (N, D): padded frames cost no norms, activations or matrix products but attention's own
    (and its output projection's). Attention lays its queries, keys and values out as (B, T, ...) again, with
    padded keys masked.

    Both directions are gathers (``index_select``), whose backward keeps only the indices: a scatter into a
    zero-filled buffer (``index_copy``) would keep its whole source for the backward pass.
    """

    index: torch.Tensor | None  # (N,) int64 positions of the valid frames among the B * T; None: no padding
    rows: torch.Tensor | None  # (B * T,) int64 packed row each position reads; a padded one reads a neighbour
    valid: torch.Tensor  # (B, T) bool, True at valid frames
    batch: int
    frames: int
    key_mask: torch.Tensor | None  # (B, 1, 1, T) bool, True at valid keys; None: all keys valid

    @classmethod
    def of(cls, frame_lengths: torch.Tensor, frames: int) -> FramePacking:
        """(B,) frames of a batch padded to ``frames``."""
        batch = frame_lengths.shape[0]
        valid = length_mask(frame_lengths, frames)
        # The number of valid frames sets the packed shapes, so it is read back: one host sync on a GPU.
        index = valid.flatten().nonzero().squeeze(1)
        if index.shape[0] == batch * frames:  # no padding: no gathers, and SDPA may pick any kernel
            return cls(None, None, valid, batch, frames, None)
        rows = (valid.flatten().cumsum(0) - 1).clamp(min=0)
        # A 0-frame example would mask every key and turn its softmax into NaN; let it see frame 0 instead.
        # Its output is ignored anyway (no valid frame).
        key_mask = length_mask(frame_lengths.clamp(min=1), frames)[:, None, None, :]
        return cls(index, rows, valid, batch, frames, key_mask)

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (N, C): the valid frames, in order."""
        flat = padded.reshape(self.batch * self.frames, padded.shape[-1])
        return flat if self.index is None else flat.index_select(0, self.index)

    def unpack(self, packed: torch.Tensor, zero_padding: bool = True) -> torch.Tensor:
        """(N, C) -> (B, T, C). Padded frames are zeros, or with ``zero_padding=False`` copies of a valid frame
        (enough for attention's keys and values, which the mask hides, and its queries, whose output is dropped)."""
        shape = (self.batch, self.frames, packed.shape[-1])
        if self.index is None:
            return packed.view(shape)
        if packed.shape[0] == 0:  # no valid frame at all: nothing to gather from
            return packed.new_zeros(shape)
        padded = packed.index_select(0, self.rows)
        if zero_padding:
            padded = padded.masked_fill(~self.valid.view(-1, 1), 0.0)
        return padded.view(shape)


class SelfAttention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``."""

    def __init__(self, config: Wav2Vec2Config) -> None:
        super().__init__()
        width = config.hidden_size
        self.num_heads, self.dropout = config.num_attention_heads, config.attention_dropout
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, hidden: torch.Tensor, packing: FramePacking) -> torch.Tensor:
        """(N, D) packed frames -> (N, D)."""
        width = hidden.shape[-1]
        heads = (packing.batch, packing.frames, self.num_heads, width // self.num_heads)
        q, k, v = (packing.unpack(proj(hidden), zero_padding=False).view(heads).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        # q, k, v: (B, H, T, Dh); the default scale Dh ** -0.5 is transformers' scaling.
        context = F.scaled_dot_product_attention(
            q, k, v, attn_mask=packing.key_mask, dropout_p=self.dropout if self.training else 0.0
        )
        context = context.transpose(1, 2).reshape(packing.batch, packing.frames, width)  # (B, T, D)
        # Projected before packing: the projection then keeps SDPA's own output for its backward pass, where a
        # packed copy would be one more activation to keep. It costs the padded rows of this one product.
        return packing.pack(self.out_proj(context))


class FeedForward(nn.Module):
    def __init__(self, config: Wav2Vec2Config) -> None:
        super().__init__()
        self.intermediate_dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = _activation(config.hidden_act)
        self.intermediate_dropout = nn.Dropout(config.activation_dropout)
        self.output_dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.output_dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., D), frame by frame."""
        hidden = self.intermediate_dropout(self.intermediate_act_fn(self.intermediate_dense(hidden)))
        return self.output_dropout(self.output_dense(hidden))


class TransformerLayer(nn.Module):
    """One block; ``pre_norm`` puts each LayerNorm before its sublayer (XLS-R), else after the residual (base)."""

    def __init__(self, config: Wav2Vec2Config) -> None:
        super().__init__()
        self.pre_norm = config.pre_norm
        self.attention = SelfAttention(config)
        self.dropout = nn.Dropout(config.hidden_dropout)
        # Pre-norm outputs feed only the sublayers' linears; post-norm outputs are the residual stream.
        norm = InputDtypeLayerNorm if config.pre_norm else nn.LayerNorm
        self.layer_norm = norm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = FeedForward(config)
        self.final_layer_norm = norm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor, packing: FramePacking) -> torch.Tensor:
        """(N, D) packed frames -> (N, D)."""
        if self.pre_norm:
            hidden = hidden + self.dropout(self.attention(self.layer_norm(hidden), packing))
            return hidden + self.feed_forward(self.final_layer_norm(hidden))
        hidden = self.layer_norm(hidden + self.dropout(self.attention(hidden, packing)))
        return self.final_layer_norm(hidden + self.feed_forward(hidden))


class Transformer(nn.Module):
    """Positional conv, the layer stack with LayerDrop, and the stack's LayerNorm (first or last by layout)."""

    def __init__(self, config: Wav2Vec2Config) -> None:
        super().__init__()
        self.pre_norm, self.layerdrop = config.pre_norm, config.layerdrop
        self.pos_conv_embed = PositionalConvEmbedding(config)
        # Pre-norm: the last norm, which feeds the CTC head. Post-norm: the first, the start of the residual stream.
        norm = InputDtypeLayerNorm if config.pre_norm else nn.LayerNorm
        self.layer_norm = norm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layers = nn.ModuleList(TransformerLayer(config) for _ in range(config.num_hidden_layers))
        self.gradient_checkpointing = False
        self.dropped_layers: list[int] = []  # indices LayerDrop skipped in the last forward pass

    def forward(self, hidden: torch.Tensor, frame_lengths: torch.Tensor, keep: list[bool] | None = None
                ) -> torch.Tensor:
        """(B, T, D), (B,) frames -> (B, T, D), zeros at padded frames; ``keep``: the layers to run (default:
        :meth:`draw_layers`). The layers run on the valid frames only (:class:`FramePacking`)."""
        packing = FramePacking.of(frame_lengths, hidden.shape[1])
        # transformers zeroes padded frames so the positional conv does not smear them into valid ones.
        hidden = hidden * packing.valid[..., None].to(hidden.dtype)
        hidden = packing.pack(hidden + self.pos_conv_embed(hidden))  # (N, D)
        if not self.pre_norm:
            hidden = self.layer_norm(hidden)
        hidden = self.dropout(hidden)
        keep = self.draw_layers(None) if keep is None else keep
        self.dropped_layers = [i for i, kept in enumerate(keep) if not kept]
        for layer, kept in zip(self.layers, keep):
            if not kept:
                if torch.is_grad_enabled():
                    hidden = hidden + _zero_through(layer)
            elif self.gradient_checkpointing and self.training:
                hidden = checkpoint(layer, hidden, packing, use_reentrant=False)
            else:
                hidden = layer(hidden, packing)
        if self.pre_norm:
            hidden = self.layer_norm(hidden)
        return packing.unpack(hidden)

    def draw_layers(self, generator: torch.Generator | None) -> list[bool]:
        """LayerDrop: which layers run (all of them outside training or without layerdrop).

        One draw per layer for the whole batch, as transformers does. With a generator seeded alike on every
        DDP rank, and drawn from before anything batch-dependent draws from it, every rank drops the same
        layers. Drawn on the generator's device (CPU by default: no sync).
        """
        if not (self.training and self.layerdrop > 0):
            return [True] * len(self.layers)
        device = generator.device if generator is not None else torch.device("cpu")
        return (torch.rand(len(self.layers), generator=generator, device=device) >= self.layerdrop).tolist()


def _zero_through(layer: nn.Module) -> torch.Tensor:
    """0, computed from one element of each of ``layer``'s parameters: a skipped layer still gets gradients.

    DDP (without ``find_unused_parameters``, which walks the autograd graph every step) waits for a gradient
    of every parameter before it all-reduces; a layer LayerDrop skipped would leave it waiting. Through this
    zero every parameter gets an all-zero gradient instead, for the cost of a few scalar ops. The training
    module then removes those gradients again (``dropped_layers``), so the optimiser leaves a skipped layer
    alone, as it does when the layer got no gradient at all.
    """
    return sum(parameter.reshape(-1)[0] for parameter in layer.parameters()) * 0.0


# --- the model -----------------------------------------------------------------------------------------------


class Wav2Vec2Model(nn.Module):
    """Feature encoder, projection, SpecAugment and transformer: waveforms -> contextual frames."""

    def __init__(self, config: Wav2Vec2Config) -> None:
        super().__init__()
        self.config = config
        self.feature_extractor = FeatureEncoder(config)
        self.feature_projection = FeatureProjection(config)
        # As in transformers: the learned mask vector exists only if time or feature masking is configured.
        if config.mask_time_prob > 0 or config.mask_feature_prob > 0:
            self.masked_spec_embed = nn.Parameter(torch.empty(config.hidden_size).uniform_())
        self.encoder = Transformer(config)
        self.feature_extractor_frozen = False

    def forward(
        self, waveforms: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S) float, (B,) int64 samples -> hidden (B, T, D), (B,) int64 frames."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.feature_extractor_frozen):
            features, frame_lengths = self.feature_extractor(waveforms, lengths)
        hidden = self.feature_projection(features)  # (B, T, D)
        # LayerDrop draws first: SpecAugment's draws depend on the batch's lengths, which differ across ranks.
        keep = self.encoder.draw_layers(generator)
        hidden = self.mask(hidden, frame_lengths, generator)
        return self.encoder(hidden, frame_lengths, keep), frame_lengths

    def mask(
        self, hidden: torch.Tensor, frame_lengths: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """SpecAugment in training: time spans -> the learned mask vector, feature spans -> 0."""
        config = self.config
        if not (self.training and config.apply_spec_augment):
            return hidden
        batch, frames, width = hidden.shape
        if config.mask_time_prob > 0:
            time = span_mask(frame_lengths, frames, config.mask_time_prob, config.mask_time_length,
                             config.mask_time_min_masks, generator)  # (B, T)
            hidden = torch.where(time[..., None], self.masked_spec_embed.to(hidden.dtype), hidden)
        if config.mask_feature_prob > 0:
            widths = torch.full((batch,), width, device=hidden.device)
            feature = span_mask(widths, width, config.mask_feature_prob, config.mask_feature_length,
                                config.mask_feature_min_masks, generator)  # (B, D)
            hidden = hidden.masked_fill(feature[:, None, :], 0.0)
        return hidden


class Wav2Vec2CTC(nn.Module):
    """wav2vec 2.0 encoder with a linear CTC head: waveforms -> per-frame token logits.

    >>> model = Wav2Vec2CTC(Wav2Vec2Config.preset("tiny", vocab_size=10)).eval()
    >>> logits, frames = model(torch.randn(2, 16000), torch.tensor([16000, 8000]))
    >>> logits.shape, frames.tolist()
    (torch.Size([2, 49, 10]), [49, 24])
    """

    def __init__(self, config: Wav2Vec2Config) -> None:
        super().__init__()
        if config.vocab_size is None:
            raise ValueError("Wav2Vec2CTC needs config.vocab_size (the CTC head's size, blank included)")
        self.config = config
        self.wav2vec2 = Wav2Vec2Model(config)
        self.dropout = nn.Dropout(config.final_dropout)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        # transformers' initialisation, so a model trained from scratch starts where theirs would.
        if isinstance(module, nn.Linear) and module is not self.wav2vec2.feature_projection.projection:
            nn.init.normal_(module.weight, std=self.config.initializer_range)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Conv1d) and module is not self.wav2vec2.encoder.pos_conv_embed.conv:
            nn.init.kaiming_normal_(module.weight)
            if module.bias is not None:
                bound = math.sqrt(module.groups / (module.in_channels * module.kernel_size[0]))
                nn.init.uniform_(module.bias, -bound, bound)

    def forward(
        self, waveforms: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits for each frame.

        Args:
            waveforms: (B, S) float, 16 kHz, zero-padded after each example's length.
            lengths: (B,) int64 valid samples per example.
            generator: randomness for SpecAugment and LayerDrop (training mode only).

        Returns:
            logits (B, T, V) and frame_lengths (B,) int64; frames at or past an example's length are padding.
            A batch shorter than the conv stack's receptive field gives T = 0, not an error.
        """
        frames = conv_output_lengths(waveforms.shape[1], self.config.conv_kernel, self.config.conv_stride)
        if frames == 0:
            empty = waveforms.new_zeros(waveforms.shape[0], 0, self.config.vocab_size)
            return empty, torch.zeros_like(lengths)
        hidden, frame_lengths = self.wav2vec2(waveforms, lengths, generator)
        return self.lm_head(self.dropout(hidden)), frame_lengths

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """(B,) samples -> (B,) frames the model emits for them."""
        return conv_output_lengths(lengths, self.config.conv_kernel, self.config.conv_stride)

    def freeze_feature_encoder(self) -> None:
        """Stop training the conv stack and run it without autograd, which frees its activations."""
        for parameter in self.wav2vec2.feature_extractor.parameters():
            parameter.requires_grad_(False)
        self.wav2vec2.feature_extractor_frozen = True

    def compile_blocks(self, **options: object) -> None:
        """``torch.compile`` each transformer layer and the conv stack, in place (parameter names unchanged).

        Block by block rather than the whole model: LayerDrop's loop over the layers stays in Python, where a
        new pattern of dropped layers costs nothing, while a compiled whole model specialises on each pattern
        and recompiles (on CPU, 6 layers with layerdrop 0.3: 16 graphs in 10 steps and still compiling, against
        one graph shared by all the layers). ``options`` go to ``torch.compile``.
        """
        for layer in self.wav2vec2.encoder.layers:
            layer.compile(**options)
        self.wav2vec2.feature_extractor.compile(**options)

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each transformer layer in the backward pass: less memory, about a third more compute."""
        self.wav2vec2.encoder.gradient_checkpointing = enabled

    # --- checkpoints (implemented in ptasr.model.convert) --------------------------------------------------

    @classmethod
    def from_pretrained(
        cls, source: str | Path, vocab_size: int | None = None, **config_overrides: object
    ) -> Wav2Vec2CTC:
        """Load a Hugging Face wav2vec2 folder, hub id, or fairseq ``.pt`` checkpoint.

        Args:
            source: a folder with config.json and model.safetensors (or pytorch_model.bin), a hub id such as
                ``facebook/wav2vec2-xls-r-300m``, or a fairseq checkpoint file (``xlsr2_300m.pt``).
            vocab_size: size of the CTC head. Needed when the checkpoint has no head; if it differs from the
                checkpoint's head, a new head is initialised (fine-tuning on another alphabet).
            config_overrides: Wav2Vec2Config fields to change (dropouts, masking, pad_token_id, ...).
        """
        from ptasr.model.convert import load_pretrained

        return load_pretrained(cls, source, vocab_size, config_overrides)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write config.json + model.safetensors that transformers' ``Wav2Vec2ForCTC`` loads unchanged."""
        from ptasr.model.convert import save_pretrained

        save_pretrained(self, directory)
