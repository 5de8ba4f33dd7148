"""ptasr: wav2vec 2.0 / XLS-R fine-tuning with CTC on PyTorch Lightning."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["Wav2Vec2CTC", "Wav2Vec2Config"]

if TYPE_CHECKING:
    from ptasr.model.config import Wav2Vec2Config
    from ptasr.model.wav2vec2 import Wav2Vec2CTC


def __getattr__(name: str):
    # Lazy so that `import ptasr.data` (in every DataLoader worker) does not build the model module.
    if name == "Wav2Vec2CTC":
        from ptasr.model.wav2vec2 import Wav2Vec2CTC

        return Wav2Vec2CTC
    if name == "Wav2Vec2Config":
        from ptasr.model.config import Wav2Vec2Config

        return Wav2Vec2Config
    raise AttributeError(f"module 'ptasr' has no attribute {name!r}")
