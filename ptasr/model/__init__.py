"""The wav2vec 2.0 / XLS-R model: config, encoder + CTC head, masking, loss, checkpoint conversion.

Nothing here imports Lightning: the model is plain PyTorch.
"""

from ptasr.model.config import PRESETS, Wav2Vec2Config
from ptasr.model.convert import CheckpointError
from ptasr.model.loss import ctc_loss
from ptasr.model.wav2vec2 import Wav2Vec2CTC

__all__ = ["PRESETS", "CheckpointError", "Wav2Vec2CTC", "Wav2Vec2Config", "ctc_loss"]
