"""What several test files share: the small model and run of the training tests, and checkpoint-writing fakes.

A plain module (not a test module), imported by the test files and by ``conftest.py``'s fixtures.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import torch

from ptasr.data.text import Vocabulary
from ptasr.train.module import Wav2Vec2CTCModule

# A wav2vec2 of ~40 k parameters: same layout as "tiny", every width shrunk.
SMALL_MODEL = [
    "--model.config_overrides.hidden_size=32",
    "--model.config_overrides.num_hidden_layers=1",
    "--model.config_overrides.num_attention_heads=2",
    "--model.config_overrides.intermediate_size=64",
    "--model.config_overrides.conv_dim=[16,16,16,16,16,16,16]",
    "--model.config_overrides.num_conv_pos_embeddings=16",
    "--model.config_overrides.num_conv_pos_embedding_groups=4",
]
# 50 training clips (the dev split), one validation batch, a few steps: seconds on CPU.
SMALL_RUN = [
    "--data.train_splits=[dev]",
    "--data.num_workers=0",
    "--data.batch_size=8",
    "--data.eval_batch_size=10",
    "--trainer.limit_val_batches=2",
    "--trainer.limit_test_batches=2",
    "--trainer.val_check_interval=2",
    "--trainer.log_every_n_steps=1",
    "--trainer.enable_model_summary=false",
    "--model.schedule=linear",
    "--model.warmup_steps=2",
]


def small_module(vocab: Vocabulary, **hparams: Any) -> Wav2Vec2CTCModule:
    """The SMALL_MODEL as a module built in Python; ``config_overrides`` add to its overrides."""
    overrides = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                     conv_dim=[16] * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                     ctc_loss_reduction="mean")
    overrides.update(hparams.pop("config_overrides", {}))
    return Wav2Vec2CTCModule(len(vocab), vocab.pad_id, config_overrides=overrides, **hparams)


class NaNLossAtStep(Wav2Vec2CTCModule):
    """Poisons the loss of one update, as a diverging batch would."""

    bad_step = 1

    def training_step(self, batch, batch_idx):
        outputs = super().training_step(batch, batch_idx)
        if self.global_step == self.bad_step:
            outputs["loss"] = outputs["loss"] * float("nan")
        return outputs


def fake_checkpoint(step: int) -> dict[str, object]:
    """A checkpoint-like dict of about 400 kB: big enough that half of it is a truncated file."""
    return {"global_step": step, "weights": torch.full((100_000,), float(step))}


def save_half_then(failure: Callable[[], None]) -> Callable[..., None]:
    """A `torch.save` that writes half of the checkpoint's bytes into the file, then calls `failure`."""
    real_save = torch.save

    def save(obj, file, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        file.write(data[: len(data) // 2])
        file.flush()
        failure()

    return save
