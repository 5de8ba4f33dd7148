"""The training CLI end to end on the bundled corpus, in process, with a model small enough for CPU tests.

One module-scoped run trains a few steps; the tests then read its checkpoint and TensorBoard events,
validate and test from the checkpoint, and resume it.
"""

from __future__ import annotations

import sys
from itertools import islice
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import SMALL_MODEL, SMALL_RUN, NaNLossAtStep, dev_split_data, small_module
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ptasr.data.audio import normalize_waveform
from ptasr.data.text import Vocabulary
from ptasr.evaluation.scoring import collapse_whitespace, edit_counts, error_rate
from ptasr.model.config import Wav2Vec2Config
from ptasr.recognition.recognizer import Recognizer
from ptasr.train.cli import cli_main
from ptasr.train.module import Wav2Vec2CTCModule

STEPS = 4


def _args(save_dir: Path, subcommand: str = "fit", *extra: str) -> list[str]:
    return [subcommand, f"--trainer.logger.init_args.save_dir={save_dir}", *SMALL_MODEL, *SMALL_RUN, *extra]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, L.Trainer]:
    save_dir = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["train.py"])
        cli = cli_main(_args(save_dir, "fit", f"--trainer.max_steps={STEPS}"))
    return save_dir / "demo" / "version_0", cli.trainer


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_fit_trains_and_writes_a_run_folder(run: tuple[Path, L.Trainer]) -> None:
    run_dir, trainer = run
    assert trainer.global_step == STEPS
    assert {"checkpoints", "config.yaml", "vocab.json", "normalizer.json"} <= {p.name for p in run_dir.iterdir()}
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert any(p.name.startswith("best-") for p in (run_dir / "checkpoints").iterdir())
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"]) and torch.isfinite(metrics["val/loss"])
    # val/wer and val/cer are the corpus rates of the last validation's transcripts (the weights did not move
    # since). Recomputed here under the same bf16 autocast, an untrained model's near-tied logits still flip a
    # few characters, hence the tolerance; a per-batch average or a rate of the wrong texts is off by more.
    module, data = trainer.lightning_module, trainer.datamodule
    references, predictions = [], []
    with torch.no_grad(), trainer.precision_plugin.forward_context():
        for batch in islice(data.val_dataloader(), 2):  # --trainer.limit_val_batches=2
            logits, frames = module.eval()(batch["waveforms"], batch["lengths"])
            references += batch["texts"]
            predictions += [collapse_whitespace(text) for text in module.decode(logits, frames)]
    words, chars = edit_counts(references, predictions)
    assert float(metrics["val/wer"]) == pytest.approx(error_rate(words), rel=0.05)
    assert float(metrics["val/cer"]) == pytest.approx(error_rate(chars), rel=0.05)


def test_checkpoint_carries_everything_to_rebuild_the_model(run: tuple[Path, L.Trainer]) -> None:
    run_dir, trainer = run
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    saved = checkpoint["ptasr"]
    config = Wav2Vec2Config(**saved["model_config"])
    vocab = Vocabulary.from_dict(saved["vocab"])
    assert config.hidden_size == 32 and config.vocab_size == len(vocab) and config.pad_token_id == vocab.pad_id
    assert vocab == trainer.datamodule.vocab
    assert saved["normalizer"] == trainer.datamodule.normalizer.to_dict()
    # Outside a Trainer the module takes its vocabulary from the checkpoint and can decode.
    module = Wav2Vec2CTCModule.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", map_location="cpu")
    assert module.vocab == vocab
    # ... and transcribes as the Recognizer loaded from the same file does
    waveform = normalize_waveform(torch.randn(16000, generator=torch.Generator().manual_seed(0)))
    logits, frames = module.eval()(waveform[None], torch.tensor([16000]))
    recognizer = Recognizer.load(run_dir / "checkpoints" / "last.ckpt", dtype=torch.float32)
    assert module.decode(logits, frames) == [recognizer.transcribe([waveform])[0].text]


def test_tensorboard_has_the_scalars_and_text(run: tuple[Path, L.Trainer]) -> None:
    run_dir, _ = run
    scalars = _scalars(run_dir)
    expected = {"train/loss", "val/loss", "val/wer", "val/cer", "lr", "train/grad_norm",
                "train/audio_seconds_per_second", "train/blank_share", "val/blank_share",
                "train/infeasible_utterances", "train/nonfinite_losses", "train/skipped_steps"}
    assert expected <= set(scalars), expected - set(scalars)
    assert all(value > 0 for _, value in scalars["train/audio_seconds_per_second"])
    assert {1, 3} <= {step for step, _ in scalars["val/wer"]}  # validation after updates 2 and 4
    events = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    events.Reload()
    assert {"val/predictions/text_summary", "val/worst/text_summary"} <= set(events.Tags()["tensors"])


def test_validate_and_test_from_the_checkpoint_log_into_its_run(run: tuple[Path, L.Trainer]) -> None:
    run_dir, _ = run
    ckpt = str(run_dir / "checkpoints" / "last.ckpt")
    save_dir = run_dir.parent.parent
    fit_config = (run_dir / "config.yaml").read_text()
    validated = cli_main(_args(save_dir, "validate", f"--ckpt_path={ckpt}"))
    assert {"val/wer", "val/cer", "val/loss"} <= set(validated.trainer.callback_metrics)
    tested = cli_main(_args(save_dir, "test", f"--ckpt_path={ckpt}"))
    assert {"test/wer", "test/cer", "test/loss"} <= set(tested.trainer.callback_metrics)
    # each evaluation in its own sub-folder of the run: TensorBoard shows it beside the training curves
    assert Path(tested.trainer.log_dir) == run_dir / "test"
    assert {"test/wer", "test/cer"} <= set(_scalars(run_dir / "test"))
    assert (run_dir / "config.yaml").read_text() == fit_config  # the training config is kept
    assert (run_dir / "test" / "config_test.yaml").is_file()
    assert (run_dir / "validate" / "config_validate.yaml").is_file()


def test_resume_from_last_continues_in_the_same_run_folder(run: tuple[Path, L.Trainer]) -> None:
    run_dir, _ = run
    save_dir = run_dir.parent.parent
    resumed = cli_main(_args(save_dir, "fit", "--ckpt_path=last", f"--trainer.max_steps={STEPS + 2}"))
    assert resumed.trainer.global_step == STEPS + 2
    assert Path(resumed.trainer.log_dir) == run_dir
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["version_0"]  # no new version_1
    # The resumed curve continues where the first one stopped (the scheduler state came back too).
    steps = [step for step, _ in _scalars(run_dir)["train/loss"]]
    assert max(steps) == STEPS + 1 and steps.count(STEPS) == 1


def test_resuming_last_with_nothing_to_resume_starts_a_new_run_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, recwarn: pytest.WarningsRecorder
) -> None:
    # a scheduler's job script resubmits the same command: its first run has no last.ckpt yet
    with caplog.at_level("INFO"):
        cli = cli_main(_args(tmp_path, "fit", "--ckpt_path=last", "--trainer.max_steps=1",
                             "--trainer.limit_val_batches=0"))
    assert cli.trainer.global_step == 1 and Path(cli.trainer.log_dir) == tmp_path / "demo" / "version_0"
    looked = str(tmp_path / "demo" / "*" / "checkpoints" / "last*.ckpt")
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[run] --ckpt_path last")]
    assert said == [f"[run] --ckpt_path last: no last checkpoint at {looked} yet, so this fit starts a new run"]
    assert not [w for w in recwarn if "save_last" in str(w.message)]  # Lightning's hint does not apply here
    assert (tmp_path / "demo" / "version_0" / "checkpoints" / "last.ckpt").is_file()  # the next submission resumes


def test_a_fresh_fit_gets_a_new_run_folder(tmp_path: Path) -> None:
    (tmp_path / "demo" / "version_0" / "checkpoints").mkdir(parents=True)
    cli = cli_main(_args(tmp_path, "fit", "--trainer.max_steps=1", "--trainer.limit_val_batches=0"))
    assert Path(cli.trainer.log_dir).name == "version_1"


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_a_nonfinite_loss_skips_the_update_on_device(precision: str) -> None:
    # bf16-mixed also covers fused AdamW + clipping, which Lightning's own clipping refuses under autocast.
    data = dev_split_data()
    module = small_module(data.vocab, lr=1e-3)
    module.__class__ = NaNLossAtStep  # same weights and hparams, poisoned step
    trainer = L.Trainer(accelerator="cpu", max_steps=3, limit_val_batches=0, logger=False, precision=precision,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        gradient_clip_val=1.0)
    trainer.fit(module, datamodule=data)
    optimizer = trainer.optimizers[0]
    assert optimizer.defaults["fused"]  # the device-side skip path
    assert int(module.skipped_steps) == 1
    assert all(torch.isfinite(p).all() for p in module.parameters())
    # Fused Adam undid the skipped update's step count: 3 updates attempted, 2 applied.
    assert {int(state["step"]) for state in optimizer.state.values()} == {2}


def test_frozen_transformer_trains_only_the_head(tmp_path: Path) -> None:
    data = dev_split_data()
    module = small_module(data.vocab, lr=1e-3, freeze_transformer_steps=2, freeze_feature_encoder=True)
    before = {name: p.detach().clone() for name, p in module.model.named_parameters()}
    trainer = L.Trainer(accelerator="cpu", max_steps=2, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=data)
    changed = {name for name, p in module.model.named_parameters() if not torch.equal(p, before[name])}
    assert changed == {"lm_head.weight", "lm_head.bias"}


def test_an_empty_batch_is_skipped() -> None:
    vocab = Vocabulary.build(["ab"])
    module = small_module(vocab)
    module.trainer = L.Trainer(accelerator="cpu", logger=False)
    empty = {"waveforms": torch.zeros(0, 0), "lengths": torch.zeros(0, dtype=torch.long),
             "labels": torch.zeros(0, 0, dtype=torch.long), "label_lengths": torch.zeros(0, dtype=torch.long),
             "texts": [], "ids": []}
    assert module.training_step(empty, 0) is None
    assert module.validation_step(empty, 0) is None


def test_clipping_uses_the_measured_norm() -> None:
    vocab = Vocabulary.build(["ab"])
    module = small_module(vocab)
    module.trainer = L.Trainer(accelerator="cpu", logger=False)
    parameters = [p for p in module.parameters() if p.requires_grad]
    for parameter in parameters:
        parameter.grad = torch.full_like(parameter, 3.0)
    module._grad_norm = torch.nn.utils.get_total_norm([p.grad for p in parameters])
    assert module._grad_norm > 1.0
    module.configure_gradient_clipping(torch.optim.AdamW(parameters, fused=True), gradient_clip_val=1.0,
                                       gradient_clip_algorithm="norm")
    clipped = torch.nn.utils.get_total_norm([p.grad for p in parameters])
    assert clipped == pytest.approx(1.0, rel=1e-4)


def test_only_layers_dropped_in_every_batch_of_an_update_lose_their_gradients() -> None:
    # The model gives a dropped layer all-zero gradients (for DDP); AdamW would still move it by its momentum
    # and decay it, so the module removes them, but only for layers dropped in every batch of the update.
    vocab = Vocabulary.build(["ab"])
    module = small_module(vocab, config_overrides=dict(num_hidden_layers=4, layerdrop=0.5))
    module.trainer = L.Trainer(accelerator="cpu", logger=False)
    encoder = module.model.wav2vec2.encoder
    batch = {"waveforms": torch.randn(2, 8000), "lengths": torch.tensor([8000, 6000]),
             "labels": torch.tensor([[1, 2], [2, 1]]), "label_lengths": torch.tensor([2, 2]), "texts": ["", ""],
             "ids": ["a", "b"]}

    def dropped_by(batch_idx: int) -> set[int]:  # each batch index draws its own layers (seed, update, batch)
        layers = module.model.draw_layers(module._step_generator(batch_idx))
        return {index for index, runs in enumerate(layers) if not runs}

    draws = {i: dropped_by(i) for i in range(60)}
    # two batches that both dropped some layer, and each dropped a layer the other ran
    first, second = next((i, j) for i in draws for j in draws
                         if i < j and draws[i] & draws[j] and draws[i] - draws[j] and draws[j] - draws[i])
    skipped = draws[first] & draws[second]
    module.log = lambda *args, **kwargs: None  # no fit loop here to log into
    for batch_idx in (first, second):  # two accumulated batches of one update
        outputs = module.training_step(batch, batch_idx)
        assert set(outputs["dropped_layers"]) == draws[batch_idx]  # the module ran the layers it drew
        outputs["loss"].backward()
    module._drop_skipped_layer_gradients()
    for index, layer in enumerate(encoder.layers):
        assert all((p.grad is None) == (index in skipped) for p in layer.parameters()), index
    assert module._dropped_layers is None  # the next update starts afresh


def test_parameter_groups_and_switches_reach_the_model() -> None:
    vocab = Vocabulary.build(["ab"])
    module = small_module(vocab, lr=1e-3, head_lr=5e-3, weight_decay=0.1, total_steps=10,
                           freeze_feature_encoder=True, gradient_checkpointing=True)
    module.trainer = L.Trainer(accelerator="cpu", logger=False)
    optimizer = module.configure_optimizers()["optimizer"]
    names = {id(p): n for n, p in module.model.named_parameters()}
    groups = {(g["name"], g["lr"], g["weight_decay"]): {names[id(p)] for p in g["params"]}
              for g in optimizer.param_groups}
    assert groups[("head", 5e-3, 0.1)] == {"lm_head.weight"}
    assert groups[("head", 5e-3, 0.0)] == {"lm_head.bias"}
    body_decayed = groups[("body", 1e-3, 0.1)]
    assert "wav2vec2.encoder.layers.0.attention.q_proj.weight" in body_decayed
    assert not any(n.endswith((".bias", "original0")) or "norm" in n for n in body_decayed)
    assert "wav2vec2.encoder.layers.0.layer_norm.weight" in groups[("body", 1e-3, 0.0)]
    grouped = set().union(*groups.values())
    assert not any("feature_extractor" in n for n in grouped)  # frozen: not in the optimiser at all
    assert grouped == {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert module.model.wav2vec2.encoder.gradient_checkpointing
