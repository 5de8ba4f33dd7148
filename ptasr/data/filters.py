"""Which clips to keep: :func:`filter_manifest` (run on each split by :func:`build_manifest`) drops duplicate
rows, missing files, empty texts, unreadable headers, clips outside the duration bounds and texts CTC cannot
align to their audio, and counts every reason in a :class:`FilterReport` that the data module logs once;
:func:`check_leakage` warns when evaluation clips or sentences also occur in training.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import torch

from ptasr.data.audio import SAMPLE_RATE
from ptasr.data.sources import Reader
from ptasr.data.table import Manifest
from ptasr.data.text import TextNormalizer
from ptasr.errors import DataError
from ptasr.lengths import conv_output_lengths

log = logging.getLogger(__name__)


@dataclass
class FilterReport:
    """How many rows of one split each filter removed, in the order the filters run."""

    split: str
    total: int
    removed: dict[str, int] = field(default_factory=dict)

    @property
    def kept(self) -> int:
        return self.total - sum(self.removed.values())

    def __str__(self) -> str:
        reasons = ", ".join(f"{count} {reason}" for reason, count in self.removed.items() if count) or "none"
        return f"{self.split}: kept {self.kept} of {self.total} clips; removed: {reasons}"


@dataclass(frozen=True)
class FilterSettings:
    """Which clips are usable for training and evaluation (``data.filters``).

    Args:
        min_duration: shortest clip kept, seconds.
        max_duration: longest clip kept, seconds (``None``: no limit); 20 is the reference's
            ``max_duration_in_seconds``.
        conv_kernel: feature-encoder kernel widths, for the CTC-feasibility filter (train.py sets them from the
            model: they must match its conv stack).
        conv_stride: feature-encoder strides, likewise.
        leakage: what to do when evaluation clips or sentences also occur in training.
    """

    min_duration: float = 0.0
    max_duration: float | None = 20.0
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    leakage: Literal["warn", "raise", "ignore"] = "warn"


def build_manifest(source: Reader, splits: Sequence[str], normalizer: TextNormalizer,
                   settings: FilterSettings) -> tuple[Manifest, list[FilterReport]]:
    """Read, normalise and filter ``splits`` of ``source``; one report per split."""
    manifests, reports = [], []
    for split in splits:
        manifest, report = filter_manifest(source, source.read_split(split, normalizer), settings, split)
        manifests.append(manifest)
        reports.append(report)
    return Manifest.concat(manifests), reports


def filter_manifest(source: Reader, manifest: Manifest, settings: FilterSettings, split: str,
                    check_files: bool = True) -> tuple[Manifest, FilterReport]:
    """Drop unusable rows and fill in durations. Cheap filters run first so headers are read only when needed.

    ``check_files=False`` trusts the listing (a test of what the later filters do to a missing file)."""
    report = FilterReport(split, len(manifest))

    def apply(reason: str, mask: np.ndarray) -> None:
        nonlocal manifest
        report.removed[reason] = int((~mask).sum())
        if not mask.all():
            manifest = manifest.select(np.flatnonzero(mask))

    unique = first_rows(manifest.keys)
    if not unique.all():  # counted only where it happens, so that reports of clean data keep their fields
        apply("duplicate row", unique)
    if check_files:
        apply("missing file", source.exists(manifest))
    apply("empty text", np.array([bool(t) for t in manifest.texts], dtype=bool))
    manifest = replace(manifest, durations=source.durations(manifest))  # a copy: the caller's rows stay as read
    apply("unreadable audio header", ~np.isnan(manifest.durations))
    too_long = manifest.durations > settings.max_duration if settings.max_duration is not None else False
    apply("outside duration bounds", ~((manifest.durations < settings.min_duration) | too_long))
    apply("CTC-infeasible", ctc_feasible(manifest.texts, manifest.durations, settings))
    return manifest, report


def first_rows(keys: Sequence[str]) -> np.ndarray:
    """Boolean (N,): the first row of each key. A clip listed twice is a duplicate row, not a missing file.

    >>> first_rows(["a.mp3", "b.mp3", "a.mp3"]).tolist()
    [True, True, False]
    """
    first: dict[str, int] = {}
    for row, key in enumerate(keys):
        first.setdefault(key, row)
    keep = np.zeros(len(keys), dtype=bool)
    keep[list(first.values())] = True
    return keep


def ctc_feasible(texts: Sequence[str], durations: np.ndarray, settings: FilterSettings) -> np.ndarray:
    """Boolean (N,): CTC can align each text to its audio, i.e. labels + repeated neighbours <= frames.

    CTC needs a blank between two equal consecutive labels, so "ss" costs three frames. Frames come from the
    one shared formula (:func:`ptasr.lengths.conv_output_lengths`) applied to the 16 kHz sample count.
    """
    samples = torch.from_numpy(np.floor(durations * SAMPLE_RATE).astype(np.int64))
    frames = conv_output_lengths(samples, settings.conv_kernel, settings.conv_stride).numpy()
    labels = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    feasible = labels <= frames
    # repeats <= labels - 1, so only rows with 2 * labels > frames can fail on repeats: count only those
    for i in np.flatnonzero(feasible & (2 * labels > frames)):
        feasible[i] = ctc_frames_needed(texts[i]) <= frames[i]
    return feasible


def ctc_frames_needed(text: str) -> int:
    """Fewest frames CTC needs to emit ``text``: one per label, plus a blank between two equal neighbours.

    >>> ctc_frames_needed("passo")
    6
    """
    return len(text) + sum(a == b for a, b in zip(text, text[1:]))


# ---------------------------------------------------------------------------------------------------------
# Leakage guard
# ---------------------------------------------------------------------------------------------------------


def check_leakage(train: Manifest, evaluation: Manifest, eval_name: str,
                  action: Literal["warn", "raise", "ignore"] = "warn") -> tuple[int, int]:
    """Count evaluation clips whose clip id or normalised sentence also occurs in training; warn or raise.

    Returns:
        ``(shared clips, shared sentences)``, counted over evaluation rows.
    """
    if action == "ignore":
        return 0, 0
    train_ids, train_texts = set(train.ids), set(train.texts)
    shared_clips = sum(i in train_ids for i in evaluation.ids)
    shared_texts = [t for t in evaluation.texts if t in train_texts]
    if shared_clips or shared_texts:
        message = (f"leakage: {shared_clips} of {len(evaluation)} {eval_name} clips and {len(shared_texts)} of its "
                   f"sentences (e.g. {shared_texts[:3]}) also occur in training; evaluation on them overstates "
                   f"accuracy. Use disjoint splits (a release: splits [train] in data.train, [dev] in data.val), or set "
                   f"data.filters.leakage=ignore if this is intended")
        if action == "raise":
            raise DataError(message)
        log.warning(message)
    return shared_clips, len(shared_texts)
