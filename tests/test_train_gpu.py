"""Training on a CUDA GPU: mixed precision, the fused optimiser and device-side skipping. Skipped without a GPU."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import SMALL_MODEL, SMALL_RUN, NaNLossAtStep, dev_split_data, small_module

from ptasr.data import BUNDLED_CORPUS
from ptasr.train.callbacks import MixedPrecisionHealth
from ptasr.train.cli import CONFIG_DIR, cli_main

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_fit_on_gpu(tmp_path: Path, precision: str) -> None:
    cli = cli_main(["fit", f"--trainer.logger.init_args.save_dir={tmp_path}", *SMALL_MODEL, *SMALL_RUN,
                    "--trainer.accelerator=gpu", f"--trainer.precision={precision}", "--trainer.max_steps=4"])
    trainer = cli.trainer
    assert trainer.global_step == 4
    optimizer = trainer.optimizers[0]
    # Fused AdamW except under fp16 loss scaling, where Lightning must unscale before clipping.
    assert bool(optimizer.defaults["fused"]) == (precision == "bf16-mixed")
    # (Lightning moves the module back to the CPU when fit ends, so its parameters do not say where it trained.)
    assert trainer.strategy.root_device.type == "cuda"
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"]) and float(metrics["train/audio_seconds_per_second"]) > 0
    if precision == "16-mixed":
        assert "amp/loss_scale" in metrics


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_nonfinite_loss_skips_the_update_on_gpu(precision: str) -> None:
    data = dev_split_data()
    module = small_module(data.vocab, lr=1e-3)
    module.__class__ = NaNLossAtStep
    trainer = L.Trainer(accelerator="gpu", devices=1, precision=precision, max_steps=3, limit_val_batches=0,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, gradient_clip_val=1.0, callbacks=[MixedPrecisionHealth()])
    trainer.fit(module, datamodule=data)
    # fp16: the GradScaler also skips the updates whose scaled gradients overflow (its first ones, at the initial
    # scale 2**16), halving the scale for each; every skipped update, the poisoned one included, is counted.
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    expected = 1 if scaler is None else round(math.log2(2.0**16 / scaler.get_scale()))
    assert expected >= 1 and int(module.skipped_steps) == expected
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_xls_r_300m_reference_and_improved_recipes_run(tmp_path: Path) -> None:
    # Both recipes, with random XLS-R 300m weights (no hub here) on the bundled corpus, a few updates each.
    common = [f"--trainer.logger.init_args.save_dir={tmp_path}", f"--data.train={BUNDLED_CORPUS}", f"--data.val={BUNDLED_CORPUS}",
              f"--data.test={BUNDLED_CORPUS}", "--model.pretrained=null",
              "--model.preset=xls-r-300m", "--trainer.max_steps=6", "--trainer.limit_val_batches=2",
              "--trainer.val_check_interval=1.0", "--trainer.check_val_every_n_epoch=1",
              "--trainer.num_sanity_val_steps=0", "--data.loading.num_workers=4", "--trainer.log_every_n_steps=2"]
    reference = cli_main(["fit", "-c", str(CONFIG_DIR / "xls-r-300m_pt_cv7.yaml"), *common])
    assert reference.trainer.global_step == 6
    improved = cli_main(["fit", "-c", str(CONFIG_DIR / "xls-r-300m_pt_improved.yaml"), *common,
                         "--model.warmup_steps=2", "--model.hold_steps=2", "--model.freeze_transformer_steps=2"])
    assert improved.trainer.global_step == 6
    for cli in (reference, improved):
        print(cli.trainer.precision, {k: round(float(v), 4) for k, v in cli.trainer.callback_metrics.items()})
