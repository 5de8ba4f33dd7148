"""Checkpoints in and out: Hugging Face folders and hub ids, fairseq ``.pt`` files, and our own export.

Our parameter names are transformers' ``Wav2Vec2ForCTC`` names, so reading an HF checkpoint is a handful of
renames (old weight-norm names, a headless prefix) and a list of keys dropped on purpose. fairseq names differ
more; ``FAIRSEQ_TO_HF`` maps them in one literal table. Every source key is used or dropped by rule, every
model key is filled or explicitly re-initialised, every shape is checked, and a failure lists the keys.

Weights are read only through safetensors or ``torch.load(weights_only=True)``: a checkpoint cannot run code.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import pickle
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from ptasr.errors import CheckpointError, HubError, MissingPathError
from ptasr.model.config import Wav2Vec2Config

if TYPE_CHECKING:
    from ptasr.model.wav2vec2 import Wav2Vec2CTC

log = logging.getLogger(__name__)
# How a pretrained model's CTC head was kept or rebuilt: its own logger, which train.py silences where a
# checkpoint's head replaces that one right after (resuming, evaluating a checkpoint).
head_log = logging.getLogger(f"{__name__}.head")

StateDict = dict[str, torch.Tensor]

# Pretraining-only modules of Wav2Vec2ForPreTraining / fairseq's Wav2Vec2Model: never used for CTC.
_PRETRAINING_ONLY = ("quantizer.", "project_q.", "project_hid.", "final_proj.", "label_embs_concat")

# fairseq key -> transformers/ptasr key; "{}" is the layer index (the first number in the key).
FAIRSEQ_TO_HF: dict[str, str | None] = {
    "feature_extractor.conv_layers.{}.0.weight": "wav2vec2.feature_extractor.conv_layers.{}.conv.weight",
    "feature_extractor.conv_layers.{}.0.bias": "wav2vec2.feature_extractor.conv_layers.{}.conv.bias",
    # extractor_mode "default": GroupNorm in the first layer only, at index 2 of its Sequential
    "feature_extractor.conv_layers.{}.2.weight": "wav2vec2.feature_extractor.conv_layers.{}.layer_norm.weight",
    "feature_extractor.conv_layers.{}.2.bias": "wav2vec2.feature_extractor.conv_layers.{}.layer_norm.bias",
    # extractor_mode "layer_norm": Sequential(TransposeLast, LayerNorm, TransposeLast) at index 2
    "feature_extractor.conv_layers.{}.2.1.weight": "wav2vec2.feature_extractor.conv_layers.{}.layer_norm.weight",
    "feature_extractor.conv_layers.{}.2.1.bias": "wav2vec2.feature_extractor.conv_layers.{}.layer_norm.bias",
    "layer_norm.weight": "wav2vec2.feature_projection.layer_norm.weight",
    "layer_norm.bias": "wav2vec2.feature_projection.layer_norm.bias",
    "post_extract_proj.weight": "wav2vec2.feature_projection.projection.weight",
    "post_extract_proj.bias": "wav2vec2.feature_projection.projection.bias",
    "mask_emb": "wav2vec2.masked_spec_embed",
    "encoder.pos_conv.{}.weight_g": "wav2vec2.encoder.pos_conv_embed.conv.weight_g",
    "encoder.pos_conv.{}.weight_v": "wav2vec2.encoder.pos_conv_embed.conv.weight_v",
    "encoder.pos_conv.{}.bias": "wav2vec2.encoder.pos_conv_embed.conv.bias",
    "encoder.layer_norm.weight": "wav2vec2.encoder.layer_norm.weight",
    "encoder.layer_norm.bias": "wav2vec2.encoder.layer_norm.bias",
    "encoder.layers.{}.self_attn.q_proj.weight": "wav2vec2.encoder.layers.{}.attention.q_proj.weight",
    "encoder.layers.{}.self_attn.q_proj.bias": "wav2vec2.encoder.layers.{}.attention.q_proj.bias",
    "encoder.layers.{}.self_attn.k_proj.weight": "wav2vec2.encoder.layers.{}.attention.k_proj.weight",
    "encoder.layers.{}.self_attn.k_proj.bias": "wav2vec2.encoder.layers.{}.attention.k_proj.bias",
    "encoder.layers.{}.self_attn.v_proj.weight": "wav2vec2.encoder.layers.{}.attention.v_proj.weight",
    "encoder.layers.{}.self_attn.v_proj.bias": "wav2vec2.encoder.layers.{}.attention.v_proj.bias",
    "encoder.layers.{}.self_attn.out_proj.weight": "wav2vec2.encoder.layers.{}.attention.out_proj.weight",
    "encoder.layers.{}.self_attn.out_proj.bias": "wav2vec2.encoder.layers.{}.attention.out_proj.bias",
    "encoder.layers.{}.self_attn_layer_norm.weight": "wav2vec2.encoder.layers.{}.layer_norm.weight",
    "encoder.layers.{}.self_attn_layer_norm.bias": "wav2vec2.encoder.layers.{}.layer_norm.bias",
    "encoder.layers.{}.fc1.weight": "wav2vec2.encoder.layers.{}.feed_forward.intermediate_dense.weight",
    "encoder.layers.{}.fc1.bias": "wav2vec2.encoder.layers.{}.feed_forward.intermediate_dense.bias",
    "encoder.layers.{}.fc2.weight": "wav2vec2.encoder.layers.{}.feed_forward.output_dense.weight",
    "encoder.layers.{}.fc2.bias": "wav2vec2.encoder.layers.{}.feed_forward.output_dense.bias",
    "encoder.layers.{}.final_layer_norm.weight": "wav2vec2.encoder.layers.{}.final_layer_norm.weight",
    "encoder.layers.{}.final_layer_norm.bias": "wav2vec2.encoder.layers.{}.final_layer_norm.bias",
    # a fine-tuned fairseq model's CTC projection (after the w2v_encoder. prefix is removed)
    "proj.weight": "lm_head.weight",
    "proj.bias": "lm_head.bias",
}

# transformers < 4.41 saved the positional conv's weight norm under torch's old names.
_OLD_WEIGHT_NORM = {"weight_g": "parametrizations.weight.original0", "weight_v": "parametrizations.weight.original1"}

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


# --- reading sources -----------------------------------------------------------------------------------------


def resolve_source(source: str | Path) -> Path:
    """A local folder or file as is; a hub id (``org/name``) downloaded with huggingface_hub."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    if not is_hub_id(source):
        raise MissingPathError(f"no checkpoint at {str(source)!r}: not a file or folder, and not a hub id")
    return download(str(source), MODEL_FILES)


# vocab.json and added_tokens.json name the symbols of a fine-tuned model's head (see load_pretrained).
MODEL_FILES = ["config.json", "*.safetensors", "*.safetensors.index.json", "pytorch_model.bin*", "vocab.json",
               "added_tokens.json"]


def is_hub_id(source: str | Path) -> bool:
    """``org/name``, as the hub spells repositories (a local path that exists is never asked)."""
    return bool(_HUB_ID.match(str(source)))


def download(hub_id: str, patterns: list[str]) -> Path:
    """The files of a hub repository matching ``patterns``, in the local cache; any failure is one OSError."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(hub_id, allow_patterns=patterns))
    except Exception as error:  # noqa: BLE001 -- every hub failure gets the same way out, with its cause attached
        raise HubError(
            f"could not fetch {hub_id!r} from the Hugging Face hub ({type(error).__name__}: {error}). "
            f"If you are offline, download the model folder on a connected machine and pass its path instead."
        ) from error


def safe_torch_load(path: Path) -> Any:
    """``torch.load`` that refuses anything but tensors and plain containers (argparse.Namespace allowed)."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"refusing to load {path}: it holds pickled objects other than tensors, which could run code "
            f"({str(error).splitlines()[0]}). Convert it to safetensors with a tool you trust."
        ) from error
    except (RuntimeError, EOFError) as error:  # torch's reader on a file cut short or damaged
        raise CheckpointError(damaged_file_message(path, error)) from error


def damaged_file_message(path: Path, error: BaseException) -> str:
    """The one line for a weights file that cannot be read: its first reason, and the likely cause."""
    reason = (str(error).split(". ")[0] or type(error).__name__).strip()
    return (f"cannot read {path} ({reason}): it is truncated or damaged (as an interrupted copy, download or save "
            f"leaves it), or not a checkpoint at all; copy it again or use another checkpoint")


def load_safetensors(path: Path) -> StateDict:
    """``safetensors.torch.load_file`` with a damaged file as a :class:`CheckpointError`."""
    from safetensors import SafetensorError

    try:
        return load_file(path)
    except SafetensorError as error:
        raise CheckpointError(damaged_file_message(path, error)) from error


def read_hf_weights(folder: Path) -> StateDict:
    """The state dict of an HF folder: model.safetensors (possibly sharded) or pytorch_model.bin."""
    if (folder / "model.safetensors").exists():
        return load_safetensors(folder / "model.safetensors")
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index_name).exists():
            shards = sorted(set(json.loads((folder / index_name).read_text())["weight_map"].values()))
            state: StateDict = {}
            for shard in shards:
                state.update(load_safetensors(folder / shard) if shard.endswith(".safetensors")
                             else safe_torch_load(folder / shard))
            return state
    if (folder / "pytorch_model.bin").exists():
        return safe_torch_load(folder / "pytorch_model.bin")
    raise MissingPathError(f"no model.safetensors or pytorch_model.bin in {folder}")


def hf_to_ptasr(state: StateDict) -> StateDict:
    """Rename an HF wav2vec2 state dict to ours: headless prefix, old weight-norm names."""
    headless = any(key.startswith("feature_extractor.") for key in state)
    renamed = {}
    for key, value in state.items():
        key = f"wav2vec2.{key}" if headless and not key.startswith(_PRETRAINING_ONLY) else key
        for old, new in _OLD_WEIGHT_NORM.items():
            key = re.sub(rf"\bconv\.{old}$", f"conv.{new}", key)
        renamed[key] = value
    return renamed


def _parse_conv_layers(expression: str) -> list[tuple[int, int, int]]:
    """fairseq's ``conv_feature_layers`` string, e.g. "[(512, 10, 5)] + [(512, 3, 2)] * 4", without eval."""

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.List | ast.Tuple):
            return [value(item) for item in node.elts]
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mult):
            left, right = value(node.left), value(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise CheckpointError(f"conv_feature_layers {expression!r} is not a plain list expression")

    return [tuple(layer) for layer in value(ast.parse(expression, mode="eval").body)]


def fairseq_config(model_cfg: dict[str, Any]) -> Wav2Vec2Config:
    """Our config from a fairseq wav2vec2 model config (fairseq's defaults where a key is absent)."""
    layers = _parse_conv_layers(
        model_cfg.get("conv_feature_layers", "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2")
    )
    return Wav2Vec2Config(
        conv_dim=tuple(dim for dim, _, _ in layers),
        conv_kernel=tuple(kernel for _, kernel, _ in layers),
        conv_stride=tuple(stride for _, _, stride in layers),
        conv_bias=model_cfg.get("conv_bias", False),
        feat_extract_norm="layer" if model_cfg.get("extractor_mode", "default") == "layer_norm" else "group",
        hidden_size=model_cfg.get("encoder_embed_dim", 768),
        num_hidden_layers=model_cfg.get("encoder_layers", 12),
        num_attention_heads=model_cfg.get("encoder_attention_heads", 12),
        intermediate_size=model_cfg.get("encoder_ffn_embed_dim", 3072),
        hidden_act=model_cfg.get("activation_fn", "gelu"),
        num_conv_pos_embeddings=model_cfg.get("conv_pos", 128),
        num_conv_pos_embedding_groups=model_cfg.get("conv_pos_groups", 16),
        pre_norm=model_cfg.get("layer_norm_first", False),
        vocab_size=None,
    )


def _fairseq_template(key: str) -> tuple[str, str | None]:
    # The first number in a key is its layer index: "encoder.layers.3.fc1.weight" -> ("encoder.layers.{}.fc1.weight", "3")
    match = re.search(r"\.(\d+)(?=\.)", key)
    if match is None:
        return key, None
    return key[: match.start()] + ".{}" + key[match.end():], match.group(1)


def fairseq_to_ptasr(state: StateDict) -> StateDict:
    """Rename a fairseq wav2vec2 state dict (pretrained or fine-tuned) to ours; unknown keys raise."""
    renamed, unknown = {}, []
    for key, value in state.items():
        key = key.removeprefix("w2v_encoder.").removeprefix("w2v_model.")
        if key.startswith(_PRETRAINING_ONLY):
            continue
        template, index = _fairseq_template(key)
        if template not in FAIRSEQ_TO_HF:
            unknown.append(key)
            continue
        renamed[FAIRSEQ_TO_HF[template].format(index)] = value
    if unknown:
        raise CheckpointError(f"fairseq checkpoint has keys ptasr does not know: {unknown[:20]}")
    return hf_to_ptasr(renamed)


def read_fairseq(path: Path) -> tuple[Wav2Vec2Config, StateDict]:
    """Config and renamed weights of a fairseq checkpoint (``xlsr2_300m.pt`` layout, or fine-tuned)."""
    checkpoint = safe_torch_load(path)
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise CheckpointError(f"{path} is not a fairseq checkpoint (no 'model' entry)")
    cfg = checkpoint.get("cfg") or {"model": vars(checkpoint.get("args") or argparse.Namespace())}
    model_cfg = dict(cfg["model"])
    if "w2v_args" in model_cfg and model_cfg["w2v_args"]:  # fine-tuned: the encoder's config is nested
        model_cfg = dict(model_cfg["w2v_args"]["model"])
    config = fairseq_config(model_cfg)
    state = fairseq_to_ptasr(checkpoint["model"])
    if "lm_head.weight" in state:
        # fairseq's CTC blank is its dictionary's first symbol (<s>, index 0).
        config = config.replace(vocab_size=state["lm_head.weight"].shape[0], pad_token_id=0)
    return config, state


# --- loading into a model ------------------------------------------------------------------------------------


def load_pretrained(
    cls: type[Wav2Vec2CTC],
    source: str | Path,
    vocab_size: int | None,
    overrides: dict[str, Any],
    vocab: Sequence[str] | None = None,
) -> Wav2Vec2CTC:
    """See ``Wav2Vec2CTC.from_pretrained``."""
    path = resolve_source(source)
    source_tokens: list[str] | None = None  # the symbols of the source's head rows, when it says
    if path.is_file() and is_ptasr_checkpoint(path):
        config, state, source_tokens = read_ptasr_checkpoint(path)
    elif path.is_file():
        config, state = read_fairseq(path)
    else:
        if not (path / "config.json").exists():
            raise MissingPathError(f"no config.json in {path}: expected a Hugging Face wav2vec2 model folder")
        config, state = Wav2Vec2Config.from_json(path / "config.json"), hf_to_ptasr(read_hf_weights(path))
        source_tokens = read_folder_tokens(path)
    head = state.get("lm_head.weight")
    if vocab is not None:
        vocab_size = len(vocab)
    if vocab_size is None:
        if head is None:
            raise CheckpointError(
                f"{source} has no CTC head (no lm_head.weight): pass vocab_size=<your vocabulary size> "
                f"to create one"
            )
        vocab_size = head.shape[0]
    blank = overrides.get("pad_token_id", config.pad_token_id)
    carried: dict[int, int] = {}  # new head row -> source head row
    if vocab is not None and head is not None:
        # The head's rows mean the source's symbols: keep it only for the very same symbols in the same order.
        same = source_tokens == list(vocab) and blank == config.pad_token_id
        if not same:
            carried = shared_rows(source_tokens, config.pad_token_id, list(vocab), blank) if source_tokens else {}
            _log_head_rebuild(source, vocab, carried, known=source_tokens is not None)
        new_head = not same
    else:
        new_head = head is None or head.shape[0] != vocab_size
        if new_head and head is not None:
            head_log.warning("%s: replacing its %d-token CTC head by a new %d-token one", source, head.shape[0], vocab_size)
    source_head = {k: state.pop(k) for k in ("lm_head.weight", "lm_head.bias") if new_head and k in state}
    model = cls(config.replace(vocab_size=vocab_size, **overrides))
    reinitialised = {"lm_head.weight", "lm_head.bias"} if new_head else set()
    load_checked(model, state, reinitialised | {"wav2vec2.masked_spec_embed"}, source=str(source))
    if carried:
        copy_head_rows(model.lm_head, source_head, carried)
    return model


def shared_rows(source: Sequence[str], source_blank: int, target: Sequence[str], target_blank: int) -> dict[int, int]:
    """Target head row -> source head row, for each symbol both vocabularies have; the blanks pair up by role.

    >>> shared_rows(["[PAD]", "a", "b", "|"], 0, ["a", "c", "|", "<pad>"], 3)
    {0: 1, 2: 3, 3: 0}
    """
    rows = {token: row for row, token in enumerate(source) if row != source_blank}
    carried = {row: rows[token] for row, token in enumerate(target) if row != target_blank and token in rows}
    carried[target_blank] = source_blank
    return dict(sorted(carried.items()))


def copy_head_rows(lm_head: torch.nn.Linear, source: StateDict, rows: dict[int, int]) -> None:
    """Copy the source head's rows (``lm_head.weight`` (V', C), ``lm_head.bias`` (V',)) into ``lm_head``'s."""
    target, origin = torch.tensor(list(rows)), torch.tensor(list(rows.values()))
    with torch.no_grad():
        lm_head.weight[target] = source["lm_head.weight"][origin].to(lm_head.weight.dtype)
        if lm_head.bias is not None and "lm_head.bias" in source:
            lm_head.bias[target] = source["lm_head.bias"][origin].to(lm_head.bias.dtype)


def _log_head_rebuild(source: str | Path, vocab: Sequence[str], carried: dict[int, int], known: bool) -> None:
    if not known:
        head_log.warning("%s: its CTC head's symbols are unknown (no vocabulary beside it): a new %d-symbol head for "
                    "the data's vocabulary", source, len(vocab))
        return
    new = [token for row, token in enumerate(vocab) if row not in carried]
    head_log.warning("%s: CTC head rebuilt for the data's %d-symbol vocabulary: %d rows carried over (symbols in "
                "both, the blank included), %d new%s", source, len(vocab), len(carried), len(new),
                f" ({' '.join(new[:20])}{' ...' if len(new) > 20 else ''})" if new else "")


def is_ptasr_checkpoint(path: Path) -> bool:
    """A ``train.py`` checkpoint (a zip archive, as torch.save writes) rather than a fairseq ``.pt``."""
    return path.suffix == ".ckpt" and zipfile.is_zipfile(path)


def read_ptasr_checkpoint(path: Path) -> tuple[Wav2Vec2Config, StateDict, list[str] | None]:
    """Config, weights and head symbols of a ``train.py`` checkpoint (``checkpoint["ptasr"]`` holds the first
    and the last, the LightningModule's ``model.`` entries the weights)."""
    checkpoint = safe_torch_load(path)
    saved = checkpoint.get("ptasr") if isinstance(checkpoint, dict) else None
    if not saved or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a ptasr training checkpoint (no 'ptasr' and 'state_dict' entries)")
    state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    tokens = (saved.get("vocab") or {}).get("tokens")
    return Wav2Vec2Config(**saved["model_config"]), state, list(tokens) if tokens else None


def read_folder_tokens(folder: Path) -> list[str] | None:
    """The symbol of each head row from an HF folder's ``vocab.json`` (+ ``added_tokens.json``, where HF's
    script puts ``<s>``/``</s>``), or ``None`` without a vocab.json or when its ids leave gaps."""
    if not (folder / "vocab.json").is_file():
        return None
    ids = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    if (folder / "added_tokens.json").is_file():
        ids = {**json.loads((folder / "added_tokens.json").read_text(encoding="utf-8")), **ids}
    by_id = {index: token for token, index in ids.items()}
    if sorted(by_id) != list(range(len(by_id))):
        return None
    return [by_id[index] for index in range(len(by_id))]


def load_checked(
    model: torch.nn.Module, state: StateDict, may_be_missing: set[str], source: str = "checkpoint"
) -> None:
    """Load ``state`` into ``model`` after checking that every key and every shape is accounted for.

    Keys only the checkpoint has are dropped if they are pretraining-only or the learned mask vector of a
    model that does not mask; keys only the model has must be in ``may_be_missing`` (then they keep their
    fresh initialisation). Anything else raises ``CheckpointError`` listing the keys.
    """
    expected = model.state_dict()
    dropped = [k for k in state if k.startswith(_PRETRAINING_ONLY) or
               (k == "wav2vec2.masked_spec_embed" and k not in expected)]
    state = {k: v for k, v in state.items() if k not in dropped}
    unexpected = sorted(set(state) - set(expected))
    missing = sorted(set(expected) - set(state) - may_be_missing)
    shapes = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
              for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    problems = [f"{name} ({len(keys)}): {keys[:10]}" for name, keys in
                (("unexpected keys", unexpected), ("missing keys", missing), ("shape mismatches", shapes)) if keys]
    if problems:
        raise CheckpointError(f"{source} does not fit a {model.__class__.__name__} of this config: " + "; ".join(problems))
    model.load_state_dict(state, strict=False)
    fresh = sorted(set(expected) - set(state))
    if dropped:
        log.info("%s: dropped %d pretraining-only keys", source, len(dropped))
    if fresh:
        log.info("%s: newly initialised %s", source, fresh)


# --- writing -------------------------------------------------------------------------------------------------


def save_pretrained(model: Wav2Vec2CTC, directory: str | Path) -> None:
    """config.json + model.safetensors in transformers' ``Wav2Vec2ForCTC`` layout."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save_json(directory / "config.json")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
