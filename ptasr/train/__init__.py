"""Training: the LightningModule, callbacks, learning-rate schedules and the LightningCLI entry point.

The only part of ptasr that joins the model (``ptasr.model``) and the data (``ptasr.data``).
"""

from ptasr.train.blank_watch import BlankPlateauWatch
from ptasr.train.callbacks import CTCHealth, MixedPrecisionHealth, TrainingMonitor, WERMetrics
from ptasr.train.last_checkpoint import LastCheckpoint
from ptasr.train.learning_watch import NotLearningWatch
from ptasr.train.lm_validation import LMValidation
from ptasr.train.module import Wav2Vec2CTCModule

__all__ = ["BlankPlateauWatch", "CTCHealth", "LMValidation", "LastCheckpoint", "MixedPrecisionHealth",
           "NotLearningWatch", "TrainingMonitor", "WERMetrics", "Wav2Vec2CTCModule"]
