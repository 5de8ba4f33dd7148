"""Clips to batches: the Dataset decoding clips in workers, the collate function, and the resumable loader.

The loader runs with ``batch_size=None`` and a :class:`~ptasr.data.sampler.BucketBatchSampler` as its
sampler, so every "index" the sampler yields is a whole batch: one worker decodes one batch.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ptasr.data.audio import SAMPLE_RATE, AudioDecodeError, load_audio
from ptasr.data.filters import ctc_frames_needed
from ptasr.data.sampler import BucketBatchSampler
from ptasr.data.table import Manifest
from ptasr.data.text import Vocabulary
from ptasr.errors import SettingError
from ptasr.lengths import conv_output_lengths

log = logging.getLogger(__name__)

LABEL_PAD = -100  # the ignore index HF and our ctc_loss use for padded label positions


@dataclass
class Example:
    """One decoded clip: ``waveform`` float32 (S,) at 16 kHz, normalised; ``labels`` int64 (L,); ``source``: which
    of several evaluation sources it comes from (0 where there is one)."""

    waveform: torch.Tensor
    labels: torch.Tensor
    text: str
    id: str
    age: str
    gender: str
    accent: str
    source: int = 0


class ClipDataset(Dataset):
    """The clips of a manifest, decoded and encoded on demand (in DataLoader workers).

    Indexing takes a batch of clip indices (what :class:`BucketBatchSampler` yields) and returns one
    :class:`Example` per index, or ``None`` for a clip that cannot be used — unreadable, empty, truncated
    (decoding to less than ``min_decoded_fraction`` of the manifest's duration), or too short for CTC to emit
    its text (checked on the decoded length: the manifest filter saw the listed duration, and one such clip
    in a batch makes the loss infinite, which skips the whole update when ``ctc_zero_infinity`` is off).
    A bad clip costs one warning and its place in the batch, never the run.

    Args:
        manifest: clips with durations (from :func:`ptasr.data.filters.build_manifest`).
        vocab: encodes the normalised texts into labels.
        sample_rate: rate the waveforms are resampled to.
        min_decoded_fraction: shortest acceptable decoded length, as a fraction of the listed duration.
        conv_kernel: feature-encoder kernel widths, for the CTC check (must match the model's).
        conv_stride: feature-encoder strides, likewise.
        sources: int64 (N,): the evaluation source of each row, carried into ``batch["sources"]`` so that
            each source is scored alone as well as pooled; ``None``: all rows are source 0.
    """

    def __init__(self, manifest: Manifest, vocab: Vocabulary, sample_rate: int = SAMPLE_RATE,
                 min_decoded_fraction: float = 0.9, conv_kernel: Sequence[int] = (10, 3, 3, 3, 3, 2, 2),
                 conv_stride: Sequence[int] = (5, 2, 2, 2, 2, 2, 2), sources: np.ndarray | None = None) -> None:
        if manifest.durations is None:
            raise ValueError("the manifest has no durations; build it with build_manifest()")
        if sources is not None and len(sources) != len(manifest):
            raise ValueError(f"sources has {len(sources)} rows, the manifest {len(manifest)}")
        self.sources = sources
        self.manifest = manifest
        self.vocab = vocab
        self.sample_rate = sample_rate
        self.min_decoded_fraction = min_decoded_fraction
        self.conv_kernel, self.conv_stride = tuple(conv_kernel), tuple(conv_stride)

    def __len__(self) -> int:
        return len(self.manifest)

    def __getitem__(self, indices: Sequence[int]) -> list[Example | None]:
        return [self.load(i) for i in indices]

    def load(self, index: int) -> Example | None:
        """Clip ``index`` decoded, resampled, normalised and encoded; ``None`` (with a warning) if unusable."""
        m = self.manifest
        source = m.audio(index)
        try:
            waveform = load_audio(source, self.sample_rate)
        except (AudioDecodeError, OSError) as error:
            log.warning("skipping clip %s: %s", m.ids[index], error)
            return None
        expected = m.durations[index] * self.sample_rate
        if len(waveform) < self.min_decoded_fraction * expected:
            log.warning("skipping clip %s: truncated, decodes to %d samples of the %d its listed duration "
                        "(%.2f s) implies", m.ids[index], len(waveform), round(expected), m.durations[index])
            return None
        frames = conv_output_lengths(len(waveform), self.conv_kernel, self.conv_stride)
        if ctc_frames_needed(m.texts[index]) > frames:
            log.warning("skipping clip %s: CTC-infeasible, its %d decoded samples give %d frames, fewer than its "
                        "text needs (%d)", m.ids[index], len(waveform), frames, ctc_frames_needed(m.texts[index]))
            return None
        labels = torch.tensor(self.vocab.encode(m.texts[index]), dtype=torch.int64)
        source = 0 if self.sources is None else int(self.sources[index])
        return Example(waveform, labels, m.texts[index], m.ids[index], m.ages[index], m.genders[index],
                       m.accents[index], source)


def collate_clips(examples: Sequence[Example | None], pad_to_multiple: int = 1) -> dict[str, Any]:
    """Pad a batch; clips that could not be loaded (``None``) are dropped and counted.

    Args:
        examples: the clips of one batch, ``None`` for each unreadable one.
        pad_to_multiple: pad the waveforms up to a multiple of this many samples, so that batches come in
            few shapes. The model ignores the extra padding: it reads ``lengths``.

    Returns:
        ``waveforms`` float32 (B, S) zero-padded; ``lengths`` int64 (B,) samples; ``labels`` int64 (B, L)
        padded with -100; ``label_lengths`` int64 (B,); ``texts``, ``ids``, ``age``, ``gender``, ``accent``
        lists of B strings; ``sources`` a list of B ints (each clip's evaluation source, see
        :class:`ClipDataset`); ``num_skipped`` int. B may be 0 when every clip was unreadable.
    """
    kept = [e for e in examples if e is not None]
    lengths = torch.tensor([len(e.waveform) for e in kept], dtype=torch.int64)
    label_lengths = torch.tensor([len(e.labels) for e in kept], dtype=torch.int64)
    padded = -(-int(lengths.max()) // pad_to_multiple) * pad_to_multiple if kept else 0
    waveforms = torch.zeros(len(kept), padded, dtype=torch.float32)
    labels = torch.full((len(kept), int(label_lengths.max()) if kept else 0), LABEL_PAD, dtype=torch.int64)
    for i, example in enumerate(kept):
        waveforms[i, : lengths[i]] = example.waveform
        labels[i, : label_lengths[i]] = example.labels
    return {
        "waveforms": waveforms,
        "lengths": lengths,
        "labels": labels,
        "label_lengths": label_lengths,
        "texts": [e.text for e in kept],
        "ids": [e.id for e in kept],
        "age": [e.age for e in kept],
        "gender": [e.gender for e in kept],
        "accent": [e.accent for e in kept],
        "sources": [e.source for e in kept],
        "num_skipped": len(examples) - len(kept),
    }


class ClipLoader(DataLoader):
    """A DataLoader over :class:`ClipDataset` batches that Lightning can save and restore mid-epoch.

    Lightning checkpoints ``state_dict()`` of every train loader that has one (``fit_loop`` ->
    ``CombinedLoader._state_dicts``) and calls ``load_state_dict`` before iterating again on resume. The
    position is counted here, as batches handed to the training loop, because the sampler itself runs
    ahead by the batches that workers prefetch. Also counts clips skipped as unreadable (``num_skipped``).

    Lightning re-creates a loader from its ``__init__`` arguments for ``predict`` (to track batch indices),
    adding ``sampler=``, ``shuffle=False`` and ``batch_sampler=None``; hence those two arguments, which take
    no other value here (the sampler decides order and batching). Pass ``sampler`` by keyword: Lightning
    repeats the original call's arguments, and a positional sampler would then be given twice.

    Args:
        dataset: the clips.
        sampler: yields the batches (already sharded for this rank).
        num_workers, pin_memory, persistent_workers, prefetch_factor: as for ``DataLoader``.
        generator: seeds the workers' base seed (as for ``DataLoader``).
        pad_to_multiple: pad each batch's waveforms to a multiple of this many samples (``collate_clips``).
        shuffle: ``None`` or ``False`` only; set ``shuffle`` on the sampler.
        batch_sampler: ``None`` only; the sampler yields the batches.
    """

    def __init__(self, dataset: ClipDataset, sampler: BucketBatchSampler, num_workers: int = 0,
                 pin_memory: bool = False, persistent_workers: bool = False, prefetch_factor: int | None = None,
                 generator: torch.Generator | None = None, shuffle: bool | None = None,
                 batch_sampler: None = None, pad_to_multiple: int = 1) -> None:
        if shuffle or batch_sampler is not None:
            raise ValueError(f"ClipLoader takes shuffle=None/False and batch_sampler=None (got {shuffle!r}, "
                             f"{batch_sampler!r}): its BucketBatchSampler decides order and batches")
        if pad_to_multiple < 1:
            raise SettingError(f"pad_to_multiple must be a positive number of samples, got {pad_to_multiple}")
        self.pad_to_multiple = pad_to_multiple
        super().__init__(dataset, sampler=sampler, batch_size=None,
                         collate_fn=functools.partial(collate_clips, pad_to_multiple=pad_to_multiple),
                         num_workers=num_workers, pin_memory=pin_memory,
                         persistent_workers=persistent_workers and num_workers > 0,
                         prefetch_factor=prefetch_factor if num_workers > 0 else None, generator=generator)
        self.batches_done = 0
        self.num_skipped = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        # read the resume position before the workers start pulling batches from the sampler
        self.batches_done = self.sampler.resume_batch
        for batch in super().__iter__():
            self.batches_done += 1
            self.num_skipped += batch["num_skipped"]
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict(batches_done=self.batches_done)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)
