"""Running a trained model: transcribe audio of any length, with word timestamps if asked.

A :class:`Recognizer` is a model with its vocabulary and text normaliser; :meth:`Recognizer.load` takes a
``train.py`` checkpoint, an exported or Hugging Face model folder, or a hub id (``ptasr.recognition.trained_model``).

Long recordings are cut into overlapping chunks exactly as transformers' ASR pipeline does with
``chunk_length_s``/``stride_length_s``: each chunk sees ``stride`` seconds of context on both sides, and only
the frames of its middle part are kept, so the stitched frames cover the recording once. The chunks of many
files are sorted by length and run in batches; decoding (greedy, or beam search with an n-gram LM) runs on
the stitched frames of each file, which is where word timestamps come from. What comes back is in
``ptasr.recognition.transcript``; what audio goes in, in ``ptasr.recognition.inputs``.

Notation: S samples (16 kHz), T frames (one per ``samples_per_frame`` samples, 320 = 20 ms for wav2vec2),
V vocabulary size.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.nn.utils import parametrize

from ptasr.data.audio import SAMPLE_RATE, normalize_waveform
from ptasr.data.text import TextNormalizer, Vocabulary
from ptasr.decoding.confidence import DEFAULT_MEASURE, ConfidenceMeasure, word_confidences
from ptasr.errors import CheckpointError, SettingError
from ptasr.model.config import Wav2Vec2Config
from ptasr.model.wav2vec2 import Wav2Vec2CTC
from ptasr.precision_probe import guard_low_precision
from ptasr.recognition.devices import resolve_device, resolve_dtype
from ptasr.recognition.inputs import AudioInput, describe_input, read_input
from ptasr.recognition.trained_model import load_any
from ptasr.recognition.transcript import Transcript, token_spans, word_spans

if TYPE_CHECKING:
    from ptasr.decoding.lm import BeamSearchDecoder


# --- chunking, as transformers' pipeline does it -----------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    """Samples ``[start, end)`` of a recording; ``left``/``right`` samples at its edges are context only."""

    start: int
    end: int
    left: int
    right: int


def chunk_recording(num_samples: int, chunk: int, left: int, right: int) -> list[Chunk]:
    """Overlapping windows of ``chunk`` samples whose middles tile ``[0, num_samples)``.

    Same windows as transformers' ``chunk_iter``: consecutive starts are ``chunk - left - right`` apart, the
    first window has no left context and the last no right context.

    >>> chunk_recording(10, chunk=6, left=1, right=1)
    [Chunk(start=0, end=6, left=0, right=1), Chunk(start=4, end=10, left=1, right=0)]
    >>> chunk_recording(3, chunk=6, left=1, right=1)
    [Chunk(start=0, end=3, left=0, right=0)]
    """
    step = chunk - left - right
    chunks = []
    for start in range(0, max(num_samples, 1), step):
        end = min(start + chunk, num_samples)
        is_last = start + chunk >= num_samples
        this_left, this_right = (0 if start == 0 else left), (0 if is_last else right)
        if end - start > this_left:  # a tail made of context only adds nothing
            chunks.append(Chunk(start, end, this_left, this_right))
        if is_last:
            break
    return chunks


def kept_frames(chunk: Chunk, samples_per_frame: int) -> tuple[int, int]:
    """Frames ``[first, last)`` of a chunk's output that belong to its middle part.

    transformers rounds ``samples / samples_per_frame`` (not the conv formula) and scales the strides by it;
    ptasr rounds the same way so both libraries keep the same frames and give the same transcripts.

    >>> kept_frames(Chunk(0, 16000, 0, 3200), 320)
    (0, 40)
    """
    samples = chunk.end - chunk.start
    frames = int(round(samples / samples_per_frame))
    left = int(round(chunk.left / samples * frames))
    right = int(round(chunk.right / samples * frames))
    return left, frames - right


@dataclass(frozen=True)
class Chunking:
    """Chunk length and context in seconds; ``chunk_length_s=None`` runs every recording in one piece.

    ``stride_length_s`` defaults to a sixth of the chunk on each side, as in transformers. Lengths are rounded
    to whole frames.
    """

    chunk_length_s: float | None = 20.0
    stride_length_s: float | None = None

    def samples(self, samples_per_frame: int) -> tuple[int, int, int] | None:
        """(chunk, left, right) in samples, or None when chunking is off."""
        if not self.chunk_length_s:
            return None
        stride_s = self.chunk_length_s / 6 if self.stride_length_s is None else self.stride_length_s

        def align(seconds: float) -> int:
            return int(round(seconds * SAMPLE_RATE / samples_per_frame) * samples_per_frame)

        chunk, stride = align(self.chunk_length_s), align(stride_s)
        if chunk <= 2 * stride:
            raise SettingError(f"chunk_length_s {self.chunk_length_s} must exceed twice stride_length_s {stride_s}")
        return chunk, stride, stride

    def split(self, num_samples: int, samples_per_frame: int) -> list[Chunk]:
        sizes = self.samples(samples_per_frame)
        if num_samples == 0:
            return []
        if sizes is None:
            return [Chunk(0, num_samples, 0, 0)]
        return chunk_recording(num_samples, *sizes)


# --- the recognizer ----------------------------------------------------------------------------------------


@dataclass
class Recognizer:
    """A CTC model with its vocabulary and normaliser, ready to transcribe.

    >>> vocab = Vocabulary.build(["ab"])
    >>> model = Wav2Vec2CTC(Wav2Vec2Config.preset("tiny", vocab_size=len(vocab), pad_token_id=vocab.pad_id))
    >>> recognizer = Recognizer(model, vocab, TextNormalizer())
    >>> [t.duration for t in recognizer.transcribe([torch.zeros(8000)])]
    [0.5]
    """

    model: Wav2Vec2CTC
    vocab: Vocabulary
    normalizer: TextNormalizer
    metadata: dict[str, Any] = field(default_factory=dict)
    confidence: ConfidenceMeasure = DEFAULT_MEASURE  # how word confidences are computed

    def __post_init__(self) -> None:
        head = self.model.config.vocab_size
        if head != len(self.vocab):
            where = self.metadata.get("source", "the model")
            raise CheckpointError(f"{where}: the vocabulary has {len(self.vocab)} tokens but the CTC head has {head}; "
                                  f"the vocabulary and the weights do not belong together")
        self.model.eval()

    @classmethod
    def load(
        cls, source: str | Path, device: str | torch.device | None = "cpu", dtype: torch.dtype | str = "auto"
    ) -> Recognizer:
        """From a Lightning checkpoint, an exported/HF folder, or a hub id (see the module docstring).

        ``dtype`` is the network's precision: ``"auto"`` (bfloat16 where the device runs it natively, see
        :func:`ptasr.recognition.devices.resolve_dtype`), float32, bfloat16 or float16 (GPUs). Emissions are decoded in float32 either way.
        """
        model, vocab, normalizer, metadata = load_any(source)
        recognizer = cls(model, vocab, normalizer, {**metadata, "source": str(source)})
        return recognizer.to(device, dtype)

    def to(self, device: str | torch.device | None, dtype: torch.dtype | str | None = None) -> Recognizer:
        """Move to ``device`` (``"auto"``: CUDA if available) in ``dtype`` (``"auto"``: see :func:`ptasr.recognition.devices.resolve_dtype`)."""
        device = resolve_device(device)
        self.model.to(device=device, dtype=None if dtype is None else resolve_dtype(dtype, device))
        # CPU bf16/fp16 kernels are wrong for some shapes on some CPUs: those modules run in float32 instead.
        guard_low_precision(self.model, self.dtype, device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def samples_per_frame(self) -> int:
        return math.prod(self.model.config.conv_stride)

    # --- model outputs -------------------------------------------------------------------------------------

    @torch.inference_mode()
    def log_probs(self, waveforms: Sequence[torch.Tensor], batch_size: int = 8) -> list[torch.Tensor]:
        """Per-frame log-probabilities of each waveform: B tensors (S_i,) -> B tensors (T_i, V) on the CPU.

        Waveforms are sorted by length and padded into batches of ``batch_size``, so batches waste little on
        padding; results come back in input order.
        """
        order = sorted(range(len(waveforms)), key=lambda i: -waveforms[i].shape[0])
        results: list[torch.Tensor | None] = [None] * len(waveforms)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            for row, out in zip(rows, self._forward([waveforms[i] for i in rows]), strict=True):
                results[row] = out
        return results  # type: ignore[return-value]

    def _forward(self, waveforms: list[torch.Tensor]) -> list[torch.Tensor]:
        """One padded batch: B tensors (S_i,) -> B tensors (T_i, V) float32 log-probabilities on the CPU."""
        lengths = torch.tensor([w.shape[0] for w in waveforms], dtype=torch.long)
        batch = torch.nn.utils.rnn.pad_sequence(list(waveforms), batch_first=True)  # (B, S), zero padded
        # The positional conv's weight norm is the same in every call: compute it once per batch, not per use.
        with parametrize.cached():
            logits, frame_lengths = self.model(batch.to(self.device, self.dtype), lengths.to(self.device))
        log_probs = logits.float().log_softmax(dim=-1).cpu()  # (B, T, V)
        return [row[:n] for row, n in zip(log_probs, frame_lengths.tolist(), strict=True)]

    # --- transcription -------------------------------------------------------------------------------------

    def transcribe(self, inputs: Sequence[AudioInput], **options: Any) -> list[Transcript]:
        """Transcripts of ``inputs`` in order; see :meth:`transcribe_iter` for the options."""
        return list(self.transcribe_iter(inputs, **options))

    def transcribe_iter(
        self,
        inputs: Iterable[AudioInput],
        batch_size: int = 8,
        chunking: Chunking = Chunking(),
        word_timestamps: bool = False,
        decoder: BeamSearchDecoder | None = None,
        group_size: int | None = None,
        keep_log_probs: bool = False,
    ) -> Iterator[Transcript]:
        """Transcribe audio files or waveforms, yielding results in input order.

        Args:
            inputs: paths (any format soundfile reads, any rate, mono or stereo), 1-D 16 kHz tensors, or
                ``(samples, sample_rate)`` pairs with samples (S,) or (C, S).
            batch_size: chunks per forward pass.
            chunking: how long recordings are cut (default: 20 s chunks with 3.3 s of context each side).
            word_timestamps: also return each word's start and end time and confidence (``self.confidence``).
            decoder: a beam search decoder (``ptasr.decoding.lm.BeamSearchDecoder``); greedy decoding when None.
            group_size: inputs read and batched together (default ``8 * batch_size``); bounds memory.
            keep_log_probs: also return each input's (T, V) log-probabilities (``Transcript.log_probs``) and the
                token spans of its decoded path (``Transcript.spans``).
        """
        inputs = iter(inputs)
        group_size = group_size or max(16, 8 * batch_size)
        while group := list(islice(inputs, group_size)):
            for transcript in self._transcribe_group(group, batch_size, chunking, word_timestamps, decoder):
                yield transcript if keep_log_probs else replace(transcript, log_probs=None, spans=None)

    def _transcribe_group(
        self, group: list[AudioInput], batch_size: int, chunking: Chunking, word_timestamps: bool,
        decoder: BeamSearchDecoder | None,
    ) -> list[Transcript]:
        audio = [read_input(item) for item in group]
        pieces: list[tuple[int, Chunk]] = []
        for index, waveform in enumerate(audio):
            if isinstance(waveform, torch.Tensor):
                pieces += [(index, chunk) for chunk in chunking.split(waveform.shape[0], self.samples_per_frame)]
        waveforms = [self._chunk_waveform(audio[index], chunk) for index, chunk in pieces]
        chunk_log_probs = self.log_probs(waveforms, batch_size)
        stitched: dict[int, list[torch.Tensor]] = {}
        for (index, chunk), log_probs in zip(pieces, chunk_log_probs, strict=True):
            first, last = kept_frames(chunk, self.samples_per_frame)
            stitched.setdefault(index, []).append(log_probs[first:last])
        results = []
        for index, (item, waveform) in enumerate(zip(group, audio, strict=True)):
            source = describe_input(item)
            if isinstance(waveform, str):
                results.append(Transcript(source, "", 0.0, error=waveform))
                continue
            frames = torch.cat(stitched[index]) if index in stitched else torch.zeros(0, len(self.vocab))
            results.append(self.decode(source, frames, waveform.shape[0] / SAMPLE_RATE, word_timestamps, decoder))
        return results

    def _chunk_waveform(self, waveform: torch.Tensor, chunk: Chunk) -> torch.Tensor:
        piece = waveform[chunk.start:chunk.end]
        # transformers' feature extractor normalises every chunk on its own; so do we, for the same input.
        return piece if chunk.end - chunk.start == waveform.shape[0] else normalize_waveform(piece)

    def decode(
        self, source: str, log_probs: torch.Tensor, duration: float, word_timestamps: bool = False,
        decoder: BeamSearchDecoder | None = None,
    ) -> Transcript:
        """Decode one recording's stitched (T, V) log-probabilities, greedy or with ``decoder``, into a transcript
        that keeps them and its path's spans; with ``word_timestamps``, its words carry their confidence.

        Decoding again under other LM weights needs no second pass of the network (``evaluate --tune``).
        """
        frames = torch.tensor([log_probs.shape[0]])
        if decoder is not None:
            hypothesis = decoder(log_probs[None], frames)[0]
            ids, spans = hypothesis.tokens, hypothesis.spans
        else:
            spans = token_spans(log_probs.argmax(dim=-1).tolist(), self.vocab.pad_id)
            ids = [token for token, _, _ in spans]  # what greedy_decode gives, read off the same best path
        words = None
        if word_timestamps:
            confidences = word_confidences(log_probs, spans, self.vocab.word_delimiter_id, self.confidence)
            words = word_spans(spans, self.vocab, self.samples_per_frame / SAMPLE_RATE, confidences)
        return Transcript(source, self.vocab.decode(ids), duration, words, log_probs=log_probs, spans=spans)
