"""ONNX export of a :class:`~ptasr.model.wav2vec2.Wav2Vec2CTC`, and a model of the same interface that runs it.

``model.onnx`` (float32) has the model's own signature, with the batch and the time axis dynamic:

    inputs   waveforms (B, S) float32, 16 kHz, zero-padded;  lengths (B,) int64 valid samples
    outputs  logits (B, T, V) float32;                        frame_lengths (B,) int64 valid frames

It is ``torch.export``'s trace of the same forward pass that PyTorch runs, frame packing included: the number
of valid frames is a dynamic size in the graph (ONNX's ``NonZero``), so padded frames cost the exported
model no more than they cost PyTorch. Inputs shorter than :func:`min_samples` are padded by :class:`OnnxCTC`.

    ptasr export run/checkpoints/last.ckpt out/ --onnx       # out/model.onnx beside the HF files
    ptasr transcribe out/ clip.wav --backend onnx

Needs ``pip install 'ptasr[onnx]'`` (onnxscript to export, onnxruntime to run).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn.utils import parametrize

from ptasr.errors import MissingPathError, SettingError
from ptasr.lengths import conv_output_lengths
from ptasr.model.config import Wav2Vec2Config
from ptasr.model.wav2vec2 import Wav2Vec2CTC

if TYPE_CHECKING:
    from ptasr.recognition.recognizer import Recognizer

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
INPUTS = ("waveforms", "lengths")
OUTPUTS = ("logits", "frame_lengths")
INSTALL = "pip install 'ptasr[onnx]'"


def min_samples(config: Wav2Vec2Config) -> int:
    """The shortest padded input the exported graph takes: the samples that make two frames.

    ``torch.export`` treats a size of 1 as a special case (broadcasting), so the time axis is traced for at least
    two frames; :class:`OnnxCTC` pads shorter batches, which leaves every valid frame unchanged.

    >>> min_samples(Wav2Vec2Config.preset("tiny"))
    720
    """
    samples = 2
    for kernel, stride in zip(reversed(config.conv_kernel), reversed(config.conv_stride), strict=True):
        samples = (samples - 1) * stride + kernel
    return samples


def export_onnx(model: Wav2Vec2CTC, path: str | Path) -> Path:
    """Write ``model`` to ``path`` as ONNX (float32, dynamic batch and time axes); returns ``path``.

    The export runs on a float32 CPU copy in eval mode, with the positional conv's weight norm folded into a
    plain weight (the same values; the graph then does not recompute it on every call).
    """
    _require("onnxscript", "export to ONNX")
    path = Path(path)
    frozen = Wav2Vec2CTC(model.config).eval()
    frozen.load_state_dict({name: tensor.detach().float().cpu() for name, tensor in model.state_dict().items()})
    parametrize.remove_parametrizations(frozen.wav2vec2.encoder.pos_conv_embed.conv, "weight")
    # Two examples of different lengths: the trace must not see a batch of one or one without padding.
    shortest = min_samples(model.config)
    lengths = torch.tensor([2 * shortest, shortest + 1])
    waveforms = torch.randn(2, 2 * shortest) * (torch.arange(2 * shortest) < lengths[:, None])
    batch = torch.export.Dim("batch", min=1)
    samples = torch.export.Dim("samples", min=shortest)
    with _quiet_exporter():
        program = torch.onnx.export(
            frozen,
            (waveforms, lengths),
            dynamo=True,
            input_names=list(INPUTS),
            output_names=list(OUTPUTS),
            dynamic_shapes={"waveforms": {0: batch, 1: samples}, "lengths": {0: batch}},
            optimize=True,
            verbose=False,
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path))  # a graph over 2 GB (XLS-R 1B and up) keeps its weights in model.onnx.data beside it
    return path


class OnnxCTC(nn.Module):
    """:class:`Wav2Vec2CTC`'s inference interface over an ONNX Runtime session on the CPU.

    ``model(waveforms, lengths) -> (logits, frame_lengths)`` as the PyTorch model in eval mode, so the
    recognizer (chunking, batching, decoding) runs unchanged on top of it.
    """

    def __init__(self, path: str | Path, config: Wav2Vec2Config, threads: int | None = None) -> None:
        super().__init__()
        onnxruntime = _require("onnxruntime", "run an ONNX model")
        path = Path(path)
        if not path.is_file():
            raise MissingPathError(f"no ONNX model at {path}; write one with `ptasr export MODEL {path.parent} --onnx`")
        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.config = config
        self.min_samples = min_samples(config)
        # The recognizer reads its device and dtype from the model's parameters: the session takes float32 on the CPU.
        self.device_anchor = nn.Parameter(torch.empty(0), requires_grad=False)

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S) float, (B,) int64 samples -> logits (B, T, V) float32, frame_lengths (B,) int64, on the CPU."""
        frames = conv_output_lengths(waveforms.shape[1], self.config.conv_kernel, self.config.conv_stride)
        if frames == 0:
            empty = torch.zeros(waveforms.shape[0], 0, self.config.vocab_size)
            return empty, torch.zeros(waveforms.shape[0], dtype=torch.long)
        if waveforms.shape[1] < self.min_samples:  # frames past every example's length: padding, cut off below
            waveforms = nn.functional.pad(waveforms, (0, self.min_samples - waveforms.shape[1]))
        feed = {"waveforms": waveforms.detach().float().cpu().contiguous().numpy(),
                "lengths": lengths.detach().long().cpu().contiguous().numpy()}
        logits, frame_lengths = self.session.run(list(OUTPUTS), feed)
        return torch.from_numpy(logits)[:, :frames], torch.from_numpy(frame_lengths)


def onnx_recognizer(source: str | Path, threads: int | None = None) -> Recognizer:
    """A :class:`~ptasr.recognition.recognizer.Recognizer` for an exported folder, its network run by ONNX Runtime.

    The folder is what ``ptasr export ... --onnx`` writes: the vocabulary and normaliser come from its HF files,
    the network from ``model.onnx``.
    """
    from ptasr.recognition.recognizer import Recognizer
    from ptasr.recognition.trained_model import load_folder_normalizer, load_folder_vocabulary

    folder = Path(source)
    path = folder / ONNX_FILE
    if not path.is_file():
        raise MissingPathError(f"no {ONNX_FILE} in {source}; write it with `ptasr export MODEL {source} --onnx`, "
                               f"or drop --backend onnx")
    if not (folder / "config.json").is_file():
        raise MissingPathError(f"no config.json in {source}: an ONNX model folder needs the config it was exported with")
    # The PyTorch weights beside it are not read: the network is the ONNX graph, its shapes from config.json.
    model = OnnxCTC(path, Wav2Vec2Config.from_json(folder / "config.json"), threads)
    return Recognizer(model, load_folder_vocabulary(folder), load_folder_normalizer(folder),
                      {"folder": str(folder), "source": str(source)})


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silences the exporter's notes that concern no wav2vec2 model: its registry reports that torchvision's
    operators are unavailable, and it keeps one name for the batch axis the two inputs share (as intended)."""
    registry = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry.level
    registry.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*axis name: batch will not be used.*")
            yield
    finally:
        registry.setLevel(level)


def _require(module: str, purpose: str) -> object:
    try:
        return __import__(module)
    except ImportError as error:
        raise SettingError(f"{module} is needed to {purpose} but is not installed; {INSTALL}") from error
