"""Speech data for CTC fine-tuning: sources (Common Voice, manifests, parquet, hub datasets), text
normalisation, vocabulary, audio, batching.

Only :mod:`ptasr.data.datamodule` imports Lightning; everything else here runs in plain PyTorch (and in
DataLoader workers), and nothing here imports :mod:`ptasr.model`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ptasr.data.text import DEFAULT_CHARS_TO_IGNORE, TextNormalizer, Vocabulary

# The synthetic Portuguese corpus shipped with the package (scripts/make_tiny_corpus.py), in release layout.
BUNDLED_CORPUS: str = str(Path(__file__).resolve().parent.parent / "assets" / "cv-tiny-pt")

__all__ = ["BUNDLED_CORPUS", "DEFAULT_CHARS_TO_IGNORE", "SpeechDataModule", "TextNormalizer", "Vocabulary"]

if TYPE_CHECKING:
    from ptasr.data.datamodule import SpeechDataModule


def __getattr__(name: str):
    # lazy: DataLoader workers import ptasr.data and should not pay for importing Lightning
    if name == "SpeechDataModule":
        from ptasr.data.datamodule import SpeechDataModule

        return SpeechDataModule
    raise AttributeError(f"module 'ptasr.data' has no attribute {name!r}")
