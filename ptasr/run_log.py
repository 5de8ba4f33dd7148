"""What a training run's folder tells the model card: its TensorBoard scalars as one :class:`ResultRow` per
evaluation, and the ``config.yaml`` LightningCLI saved beside them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# --- the run folder ------------------------------------------------------------------------------------------


def find_log_dir(source: Path) -> Path | None:
    """The run folder of a checkpoint (``<run>/checkpoints/x.ckpt``) when it holds TensorBoard events."""
    for candidate in (source.parent.parent, source.parent):
        if any(candidate.glob("events.out.tfevents.*")):
            return candidate
    return None


def run_config(log_dir: Path | None) -> dict[str, Any]:
    """The ``config.yaml`` LightningCLI saved in the run folder (trainer settings, seed), if there is one."""
    if log_dir is None or not (log_dir / "config.yaml").is_file():
        return {}
    return yaml.safe_load((log_dir / "config.yaml").read_text(encoding="utf-8")) or {}


# --- training results from TensorBoard -----------------------------------------------------------------------


@dataclass
class ResultRow:
    """One evaluation during training, as a row of the model card's results table."""

    step: int  # optimiser updates done, as the reference card counts (TensorBoard's step + 1)
    epoch: float | None
    training_loss: float | None
    validation_loss: float | None
    wer: float | None
    cer: float | None
    # each validation source's (Wer, Cer), scored alone (val/<name>/wer); empty where the run had one source
    sources: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)


# what WERMetrics logs per source; a name holds no "/" (the data module refuses one)
_SOURCE_WER = re.compile(r"val/([^/]+)/wer")


def read_scalars(log_dir: Path) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` from every event file in ``log_dir``; a resumed run's later values win."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, dict[int, float]] = {}
    for events in sorted(log_dir.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})  # 0: keep every point
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            for event in accumulator.Scalars(tag):
                scalars.setdefault(tag, {})[event.step] = event.value
    return scalars


def training_results(scalars: dict[str, dict[int, float]]) -> list[ResultRow]:
    """One row per evaluation step (``val/loss`` or ``val/wer`` logged).

    Training Loss is the last ``train/loss`` logged at or before that step, Epoch the logged epoch there.
    Lightning logs at the index of the update just done, counting from 0: the evaluation after 250 updates is
    at TensorBoard step 249, and its row says 250, like the reference card's Step column. Sources are the
    names of ``val/<name>/wer``, in name order (the event files do not keep the data module's order).

    >>> training_results({"train/loss": {0: 9.0, 5: 3.0}, "val/wer": {4: 0.5}, "epoch": {4: 1.0}})
    [ResultRow(step=5, epoch=1.0, training_loss=9.0, validation_loss=None, wer=0.5, cer=None, sources={})]
    >>> training_results({"val/wer": {4: 0.5}, "val/b/wer": {4: 0.75}, "val/a/wer": {4: 0.25}})[0].sources
    {'a': (0.25, None), 'b': (0.75, None)}
    """
    train = sorted(scalars.get("train/loss", {}).items())
    steps = sorted(set(scalars.get("val/loss", {})) | set(scalars.get("val/wer", {})))
    names = sorted(match[1] for match in map(_SOURCE_WER.fullmatch, scalars) if match)
    rows = []
    for step in steps:
        before = [value for s, value in train if s <= step]
        rows.append(ResultRow(
            step=step + 1,
            epoch=scalars.get("epoch", {}).get(step),
            training_loss=before[-1] if before else None,
            validation_loss=scalars.get("val/loss", {}).get(step),
            wer=scalars.get("val/wer", {}).get(step),
            cer=scalars.get("val/cer", {}).get(step),
            sources={name: (scalars.get(f"val/{name}/wer", {}).get(step), scalars.get(f"val/{name}/cer", {}).get(step))
                     for name in names},
        ))
    return rows
