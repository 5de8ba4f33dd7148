"""What several test files share: the small model and run of the training tests, checkpoint-writing fakes and
the word LM of the LM tests.

A plain module (not a test module), imported by the test files and by ``conftest.py``'s fixtures.
"""

from __future__ import annotations

import io
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ptasr.data import BUNDLED_CORPUS, SpeechDataModule
from ptasr.data.settings import BatchSettings, LoadingSettings
from ptasr.data.sources import DataSource
from ptasr.data.text import Vocabulary
from ptasr.train.module import Wav2Vec2CTCModule

# How long a test waits for a subprocess (or a fit's progress) before calling it hung. Only a hang guard, not a
# measure: far past what the slowest of them needs on two cores shared with a competing process (the suite must
# pass under load; a tighter bound would fail there and prove nothing more).
HANG_S = 1800

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
    f"--data.train=[{{path: {BUNDLED_CORPUS}, splits: [dev]}}]",
    "--data.loading.num_workers=0",
    "--data.batching.batch_size=8",
    "--data.batching.eval_batch_size=10",
    "--trainer.limit_val_batches=2",
    "--trainer.limit_test_batches=2",
    "--trainer.val_check_interval=2",
    "--trainer.log_every_n_steps=1",
    "--trainer.enable_model_summary=false",
    "--model.schedule=linear",
    "--model.warmup_steps=2",
]


def dev_split_data() -> SpeechDataModule:
    """The bundled corpus's dev split (50 clips) to train on, in batches of 8, no worker processes."""
    return SpeechDataModule([DataSource(BUNDLED_CORPUS, splits=["dev"])], batching=BatchSettings(batch_size=8),
                            loading=LoadingSettings(num_workers=0))


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


def word_arpa(path: Path, bigrams: dict[str, float]) -> Path:
    """Write a word bigram ARPA model that knows "casa" and "mesa" but not "caza" (log10 probabilities,
    back-offs) to ``path`` and return it.

    Args:
        bigrams: ``{"first second": log10 probability}``, in the order the file lists them.
    """
    unigrams = ["-1.0\t<unk>\t0", "-99\t<s>\t-0.3", "-0.5\t</s>\t0", "-0.3\tcasa\t-0.3", "-0.6\tmesa\t-0.3"]
    lines = ["\\data\\", f"ngram 1={len(unigrams)}", f"ngram 2={len(bigrams)}", "", "\\1-grams:", *unigrams]
    lines += ["", "\\2-grams:", *(f"{p:g}\t{pair}" for pair, p in bigrams.items()), "", "\\end\\", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def train_py_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The error line of a ``train.py`` run that failed: exactly one, the last thing on stderr, no traceback."""
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    errors = [line for line in lines if line.startswith("train.py: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr[-3000:]
    return errors[0]


def sigterm_two_ranks(command: list[str], folder: Path, env: dict[str, str], updates_first: int, what: str
                      ) -> tuple[int, list[list[int]], str]:
    """Run a 2-rank ``train.py fit`` ``command`` (with test_run_end's ``SlowStepLog`` writing
    ``folder/rank{N}.log``) in its own session, SIGTERM rank 0's process once rank 0 logged ``updates_first``
    updates, and return the exit status, each rank's logged updates and the stderr. A fit that makes no
    progress fails the test (``what`` names it); one still running at the end is killed with its session."""
    import os
    import signal
    import time

    fit = subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True, start_new_session=True)  # its own session: a failure here ends both ranks
    log = folder / "rank0.log"
    try:
        deadline = time.monotonic() + HANG_S
        while not (log.exists() and len(log.read_text().split()) >= updates_first):
            assert fit.poll() is None, fit.communicate()[1][-3000:]
            assert time.monotonic() < deadline, f"the {what} fit made no progress"
            time.sleep(0.1)
        fit.send_signal(signal.SIGTERM)  # rank 0's process only
        _, stderr = fit.communicate(timeout=HANG_S)
    finally:
        if fit.poll() is None:
            os.killpg(fit.pid, signal.SIGKILL)
    updates = [[int(step) for step in (folder / f"rank{rank}.log").read_text().split()] for rank in (0, 1)]
    return fit.returncode, updates, stderr
