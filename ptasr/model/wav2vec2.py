"""wav2vec 2.0 / XLS-R encoder with a CTC head, read top to bottom: waveforms in, per-frame logits out.

Notation:
    B  batch size
    S  samples per waveform (16 kHz)
    C  conv channels (conv_dim)
    T  frames of the padded batch (one per 20 ms with the standard conv stack)
    N  valid frames of a batch (the sum of its frame lengths)
    D  hidden size
    H  attention heads, Dh = D / H
    V  vocabulary size (CTC blank included)

Tensor names: ``waveforms`` (B, S), ``features`` (B, T, C) out of the conv stack, ``hidden`` (B, T, D) padded
frames, ``packed`` (N, D) the valid frames only (:mod:`ptasr.model.packing`), ``logits`` (B, T, V).

Every module and parameter carries the name transformers gives it, so a ``Wav2Vec2ForCTC`` state dict loads
here key for key (``ptasr.model.convert``) and ours saves back into transformers' format unchanged.
Every stage passes integer lengths along: samples in, frames out.

LayerDrop is decided outside the forward pass and passed in (``layers``): the training system needs to know
which layers were skipped, and reads it from its own draw (:meth:`Wav2Vec2CTC.draw_layers`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.utils.checkpoint import checkpoint

from ptasr.lengths import conv_output_lengths
from ptasr.model.config import Wav2Vec2Config
from ptasr.model.kernels import InputDtypeLayerNorm, channels_last_conv, fft_conv
from ptasr.model.masking import span_mask
from ptasr.model.packing import FramePacking

try:  # variable-length flash attention on packed sequences: torch >= 2.10
    from torch.nn.attention.varlen import varlen_attn
except ImportError:
    varlen_attn = None

log = logging.getLogger(__name__)


# --- the model -----------------------------------------------------------------------------------------------


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

    def forward(
        self,
        waveforms: torch.Tensor,
        lengths: torch.Tensor,
        generator: torch.Generator | None = None,
        layers: list[bool] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits for each frame.

        Args:
            waveforms: (B, S) float, 16 kHz, zero-padded after each example's length.
            lengths: (B,) int64 valid samples per example, on the waveforms' device or on the host. On the
                host (as the training module passes them) the forward pass never waits for the device; on the
                device they are read back once.
            generator: randomness for SpecAugment, and for LayerDrop when ``layers`` is not given (training
                mode only).
            layers: which transformer layers run, from :meth:`draw_layers`; ``None`` draws them here.

        Returns:
            logits (B, T, V) and frame_lengths (B,) int64; frames at or past an example's length are padding.
            A batch shorter than the conv stack's receptive field gives T = 0, not an error.
        """
        frames = conv_output_lengths(waveforms.shape[1], self.config.conv_kernel, self.config.conv_stride)
        if frames == 0:
            empty = waveforms.new_zeros(waveforms.shape[0], 0, self.config.vocab_size)
            return empty, torch.zeros_like(lengths)
        hidden, frame_lengths = self.wav2vec2(waveforms, lengths, generator, layers)  # (B, T, D)
        return self.lm_head(self.dropout(hidden)), frame_lengths

    def draw_layers(self, generator: torch.Generator | None = None) -> list[bool]:
        """LayerDrop's decision for one batch: which transformer layers run (see :meth:`Transformer.draw_layers`).

        Draw it before the forward pass that uses it, from the same generator: LayerDrop draws before SpecAugment.
        """
        return self.wav2vec2.encoder.draw_layers(generator)

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
        new pattern of dropped layers costs nothing and every layer shares one graph, while a compiled whole
        model would specialise on each pattern and recompile. ``options`` go to ``torch.compile``.
        """
        for layer in self.wav2vec2.encoder.layers:
            layer.compile(**options)
        self.wav2vec2.feature_extractor.compile(**options)

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each transformer layer in the backward pass: keeps one tensor per layer, runs it twice."""
        self.wav2vec2.encoder.gradient_checkpointing = enabled

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

    # --- checkpoints (implemented in ptasr.model.convert) --------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path,
        vocab_size: int | None = None,
        vocab: Sequence[str] | None = None,
        **config_overrides: object,
    ) -> Wav2Vec2CTC:
        """Load a Hugging Face wav2vec2 folder, hub id, or fairseq ``.pt`` checkpoint.

        Args:
            source: a folder with config.json and model.safetensors (or pytorch_model.bin), a hub id such as
                ``facebook/wav2vec2-xls-r-300m``, or a fairseq checkpoint file (``xlsr2_300m.pt``).
            vocab_size: size of the CTC head. Needed when the checkpoint has no head; if it differs from the
                checkpoint's head, a new head is initialised (fine-tuning on another alphabet).
            vocab: the symbols the head must output, in row order (the data's vocabulary; sets the size).
                When the source names its head's symbols (a ptasr checkpoint, or a folder with vocab.json) and
                they differ, the head is rebuilt: rows of symbols in both are carried over, the blank to the
                blank (``pad_token_id``), the others start fresh. Same symbols: the head is kept. A head whose
                symbols are unknown is replaced.
            config_overrides: Wav2Vec2Config fields to change (dropouts, masking, pad_token_id, ...).
        """
        from ptasr.model.convert import load_pretrained

        return load_pretrained(cls, source, vocab_size, config_overrides, vocab=vocab)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write config.json + model.safetensors that transformers' ``Wav2Vec2ForCTC`` loads unchanged."""
        from ptasr.model.convert import save_pretrained

        save_pretrained(self, directory)


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

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator | None = None,
                layers: list[bool] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S) float, (B,) int64 samples -> hidden (B, T, D), (B,) int64 frames on the waveforms' device;
        arguments as in :meth:`Wav2Vec2CTC.forward`."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.feature_extractor_frozen):
            features, frame_lengths = self.feature_extractor(waveforms, lengths)  # (B, T, C)
        packing = self.packing(lengths, frame_lengths, features.shape[1], features.device)
        hidden = self.feature_projection(features)  # (B, T, D)
        # LayerDrop draws first: SpecAugment's draws depend on the batch's lengths, which differ across ranks.
        layers = self.encoder.draw_layers(generator) if layers is None else layers
        hidden = self.mask(hidden, packing.lengths, generator)
        return self.encoder(hidden, packing.lengths, layers, packing), packing.lengths

    def packing(self, lengths: torch.Tensor, frame_lengths: torch.Tensor, frames: int, device: torch.device
                ) -> FramePacking:
        """Where the valid frames lie (:class:`~ptasr.model.packing.FramePacking`), from (B,) samples and frames.

        Planned on the host: from lengths on the host (the training module passes them so) the forward pass
        never waits for the device; lengths on the device are read back once, after the conv stack is queued.
        A traced graph (``torch.export``, ONNX) has no values to plan with, and packs on the device instead.
        """
        if torch.compiler.is_compiling():
            return FramePacking.of(frame_lengths.to(device), frames)
        # From the samples as Python ints: the only thing read from ``lengths``, before any op on them.
        kernels, strides = self.config.conv_kernel, self.config.conv_stride
        counts = [conv_output_lengths(samples, kernels, strides) for samples in lengths.tolist()]
        return FramePacking.planned(counts, frames, device)

    def mask(
        self, hidden: torch.Tensor, frame_lengths: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """SpecAugment in training: time spans -> the learned mask vector, feature spans -> 0. (B, T, D) -> same."""
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


# --- feature encoder: waveform -> frames ---------------------------------------------------------------------


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
        """(B, S) float, (B,) samples -> features (B, T, C), (B,) frames (where the samples were)."""
        features = waveforms[:, :, None]  # (B, S, 1)
        for layer in self.conv_layers:
            features = layer(features)
        return features, conv_output_lengths(lengths, self.kernels, self.strides)


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


class Transformer(nn.Module):
    """Positional conv, the layer stack with LayerDrop, and the stack's LayerNorm (first or last by layout)."""

    def __init__(self, config: Wav2Vec2Config) -> None:
        super().__init__()
        self.pre_norm, self.layerdrop = config.pre_norm, config.layerdrop
        self.attention_dropout = config.attention_dropout
        self.head_size = config.hidden_size // config.num_attention_heads
        self.pos_conv_embed = PositionalConvEmbedding(config)
        # Pre-norm: the last norm, which feeds the CTC head. Post-norm: the first, the start of the residual stream.
        norm = InputDtypeLayerNorm if config.pre_norm else nn.LayerNorm
        self.layer_norm = norm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layers = nn.ModuleList(TransformerLayer(config) for _ in range(config.num_hidden_layers))
        self.gradient_checkpointing = False

    def forward(self, hidden: torch.Tensor, frame_lengths: torch.Tensor, layers: list[bool] | None = None,
                packing: FramePacking | None = None) -> torch.Tensor:
        """(B, T, D), (B,) frames -> (B, T, D), zeros at padded frames.

        ``layers``: which layers run (default: :meth:`draw_layers` from torch's global generator). The layers
        run on the valid frames only, packed into (N, D) once after the positional conv and unpacked once at
        the end, by ``packing`` (:class:`~ptasr.model.packing.FramePacking`; ``None``: made from
        ``frame_lengths`` on their device).
        """
        packing = FramePacking.of(frame_lengths, hidden.shape[1]) if packing is None else packing
        # transformers zeroes padded frames so the positional conv does not smear them into valid ones.
        hidden = hidden * packing.valid[..., None].to(hidden.dtype)
        packed = packing.pack(hidden + self.pos_conv_embed(hidden))  # (N, D)
        if not self.pre_norm:
            packed = self.layer_norm(packed)
        packed = self.dropout(packed)
        varlen = self.varlen_attention(packed, packing)
        layers = self.draw_layers(None) if layers is None else layers
        for layer, runs in zip(self.layers, layers, strict=True):
            if not runs:
                # A sharded layer (FSDP2) reduces its gradients itself, and not at all when it did not run;
                # reading its shards here would gather them: only a DDP-replicated layer needs the zero.
                if torch.is_grad_enabled() and not isinstance(layer, FSDPModule):
                    packed = packed + _zero_through(layer)
            elif self.gradient_checkpointing and self.training:
                packed = checkpoint(layer, packed, packing, varlen, use_reentrant=False)
            else:
                packed = layer(packed, packing, varlen)
        if self.pre_norm:
            packed = self.layer_norm(packed)
        return packing.unpack(packed)  # (B, T, D)

    def varlen_attention(self, packed: torch.Tensor, packing: FramePacking) -> bool:
        """Whether attention takes the packed sequences as they are (``varlen_attn``, flash attention on CUDA).

        It needs torch >= 2.10, a CUDA device, half precision (as q, k and v come out of autocast's linears),
        the sequences' offsets from the host, and no attention dropout (the kernel has none). Elsewhere
        attention runs on the padded layout, with padded keys masked: the same function. Decided once per
        forward pass, here rather than in the (compiled) layers; the first use of each way is logged.
        """
        device = packed.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else packed.dtype
        varlen = (varlen_attn is not None and device == "cuda" and dtype in (torch.float16, torch.bfloat16)
                  and packing.offsets is not None and not (self.training and self.attention_dropout > 0)
                  and self.head_size % 8 == 0 and self.head_size <= 256)
        _log_once("attention: variable-length flash attention on the packed frames (varlen_attn)" if varlen else
                  "attention: scaled_dot_product_attention on the padded layout, padded keys masked")
        return varlen

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


class PositionalConvEmbedding(nn.Module):
    """Relative positions from a wide grouped convolution over time, weight-normalised over the kernel axis.

    ``config.positional_conv`` picks how the same convolution is computed: "direct" (the grouped conv kernel)
    or "fft" (products of spectra, :func:`~ptasr.model.kernels.fft_conv`). Either way the weights are those of
    the ``nn.Conv1d`` in ``conv``, under transformers' names.
    """

    def __init__(self, config: Wav2Vec2Config) -> None:
        super().__init__()
        kernel, width = config.num_conv_pos_embeddings, config.hidden_size
        conv = nn.Conv1d(width, width, kernel, padding=kernel // 2, groups=config.num_conv_pos_embedding_groups)
        # fairseq's init, applied before weight norm so that g starts as ||v||.
        nn.init.normal_(conv.weight, mean=0.0, std=2 * math.sqrt(1 / (kernel * width)))
        nn.init.zeros_(conv.bias)
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        self.method = config.positional_conv
        self.activation = _activation(config.feat_extract_activation)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, T, D) positional term."""
        if self.method == "fft":
            return self.activation(fft_conv(self.conv, hidden))
        positions = channels_last_conv(self.conv, hidden)  # (B, T + 1, D) for an even kernel, else (B, T, D)
        # "Same" padding of an even kernel yields one frame too many; transformers' SamePad drops the last.
        return self.activation(positions[:, : hidden.shape[1]])


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

    def forward(self, packed: torch.Tensor, packing: FramePacking, varlen: bool = False) -> torch.Tensor:
        """(N, D) packed frames -> (N, D); ``varlen`` as :meth:`Transformer.varlen_attention` decided."""
        if self.pre_norm:
            packed = packed + self.dropout(self.attention(self.layer_norm(packed), packing, varlen))
            return packed + self.feed_forward(self.final_layer_norm(packed))
        packed = self.layer_norm(packed + self.dropout(self.attention(packed, packing, varlen)))
        return self.final_layer_norm(packed + self.feed_forward(packed))


class SelfAttention(nn.Module):
    """Multi-head self-attention of each example's frames, on the packed frames or on the padded layout."""

    def __init__(self, config: Wav2Vec2Config) -> None:
        super().__init__()
        width = config.hidden_size
        self.num_heads, self.dropout = config.num_attention_heads, config.attention_dropout
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, packed: torch.Tensor, packing: FramePacking, varlen: bool = False) -> torch.Tensor:
        """(N, D) packed frames -> (N, D). The default scale Dh ** -0.5 is transformers' scaling."""
        count, width = packed.shape
        if varlen:  # q, k, v: (N, H, Dh), each example's rows between its offsets
            q, k, v = (proj(packed).view(count, self.num_heads, width // self.num_heads)
                       for proj in (self.q_proj, self.k_proj, self.v_proj))
            context = varlen_attn(q, k, v, packing.offsets, packing.offsets, packing.longest, packing.longest)
            return self.out_proj(context.reshape(count, width))
        heads = (packing.batch, packing.frames, self.num_heads, width // self.num_heads)
        q, k, v = (packing.unpack(proj(packed), zero_padding=False).view(heads).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        # q, k, v: (B, H, T, Dh)
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

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, D), frame by frame."""
        inner = self.intermediate_dropout(self.intermediate_act_fn(self.intermediate_dense(packed)))
        return self.output_dropout(self.output_dense(inner))


# --- helpers -------------------------------------------------------------------------------------------------


def _zero_through(layer: nn.Module) -> torch.Tensor:
    """0, computed from one element of each of ``layer``'s parameters: a skipped layer still gets gradients.

    DDP (without ``find_unused_parameters``, which walks the autograd graph every step) waits for a gradient
    of every parameter before it all-reduces; a layer LayerDrop skipped would leave it waiting. Through this
    zero every parameter gets an all-zero gradient instead, for the cost of a few scalar ops. The training
    module, which drew the layers, then removes those gradients again, so the optimiser leaves a skipped layer
    alone, as it does when the layer got no gradient at all.
    """
    return sum(parameter.reshape(-1)[0] for parameter in layer.parameters()) * 0.0


_LOGGED: set[str] = set()


def _log_once(message: str) -> None:
    """Log ``message`` the first time this process meets it (which attention path runs, at the start)."""
    if message not in _LOGGED:
        _LOGGED.add(message)
        log.info(message)


_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "swish": nn.SiLU}


def _activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; ptasr implements {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()
