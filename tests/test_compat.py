"""Each private or undocumented library name of ptasr/compat.py, called on real objects of the installed versions.

A failure here means an upgrade renamed or removed the name: fix ptasr/compat.py (and only it).
"""

from __future__ import annotations

from pathlib import Path

import datasets
import lightning as L
import torch

from ptasr import compat
from ptasr.compat import is_sharded_checkpoint, load_sharded_checkpoint


def test_should_update_logs_follows_log_every_n_steps() -> None:
    trainer = L.Trainer(accelerator="cpu", logger=False, log_every_n_steps=0, enable_progress_bar=False)
    assert compat.should_update_logs(trainer) is False  # logging off
    trainer = L.Trainer(accelerator="cpu", logger=False, log_every_n_steps=1, enable_progress_bar=False)
    assert compat.should_update_logs(trainer) is True  # no loop running: Lightning would log


def test_skip_fused_step_leaves_parameters_moments_and_step_count() -> None:
    for skip in (True, False):
        weight = torch.nn.Parameter(torch.ones(3))
        optimizer = torch.optim.AdamW([weight], lr=0.1, fused=True)
        weight.grad = torch.ones(3)
        compat.skip_fused_step(optimizer, torch.tensor(skip))
        optimizer.step()
        assert torch.equal(weight.detach(), torch.ones(3)) == skip
        assert int(optimizer.state[weight]["step"]) == (0 if skip else 1)


def test_cpu_has_native_bf16_answers() -> None:
    assert compat.cpu_has_native_bf16() in (True, False)
    assert compat.cpu_has_native_bf16() == compat.cpu_has_native_bf16()  # a property of the machine


def test_conv_with_is_the_modules_computation_with_other_weights() -> None:
    conv = torch.nn.Conv1d(4, 6, 3, padding=1, groups=2, padding_mode="reflect")
    x = torch.randn(2, 4, 10)
    assert torch.equal(compat.conv_with(conv, x, conv.weight, conv.bias), conv(x))
    weight = torch.randn_like(conv.weight)
    assert not torch.allclose(compat.conv_with(conv, x, weight, None), conv(x))


def test_dataset_fingerprint_changes_with_the_data() -> None:
    first = datasets.Dataset.from_dict({"text": ["a", "b"]})
    same = datasets.Dataset.from_dict({"text": ["a", "b"]})
    other = datasets.Dataset.from_dict({"text": ["a", "c"]})
    assert isinstance(compat.dataset_fingerprint(first), str) and compat.dataset_fingerprint(first)
    assert compat.dataset_fingerprint(first) == compat.dataset_fingerprint(same)
    assert compat.dataset_fingerprint(first) != compat.dataset_fingerprint(other)
    assert compat.dataset_fingerprint(first.select([0])) != compat.dataset_fingerprint(first)


def test_save_checkpoint_now_saves_as_model_checkpoint_does(tmp_path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.demos.boring_classes import BoringModel

    callback = ModelCheckpoint(dirpath=tmp_path, filename="last", save_top_k=1)
    trainer = L.Trainer(accelerator="cpu", logger=False, max_steps=2, limit_val_batches=0, callbacks=[callback],
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(BoringModel())
    assert compat.last_saved_step(callback) == 2  # its own save at the end of the run
    (tmp_path / "last.ckpt").unlink()
    compat.save_checkpoint_now(callback, trainer)  # again, now, under the same name
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == 2
    assert [path.name for path in tmp_path.iterdir()] == ["last.ckpt"]


def test_take_launched_ranks_takes_the_ddp_launchers_processes() -> None:
    trainer = L.Trainer(accelerator="cpu", strategy="ddp", devices=2, logger=False, enable_progress_bar=False)
    started = object()  # what the launcher holds per rank it started: a subprocess.Popen
    trainer.strategy.launcher.procs.append(started)
    assert compat.take_launched_ranks(trainer) == [started]
    assert compat.take_launched_ranks(trainer) == []  # taken: the launcher's watcher no longer sees it
    single = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    assert compat.take_launched_ranks(single) == []


def test_take_over_sigterm_clears_lightnings_flag() -> None:
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    trainer._signal_connector._sigterm_notifier_fn(15, None)  # what Lightning's SIGTERM handler does
    assert trainer.received_sigterm
    compat.take_over_sigterm(trainer)
    assert not trainer.received_sigterm


def test_sharded_checkpoint_folder_is_recognised_and_read_whole(tmp_path: Path) -> None:
    # The layout the sharded strategy writes: torch.distributed.checkpoint's files plus Lightning's meta.pt.
    import torch.distributed.checkpoint as dcp

    folder = tmp_path / "last.ckpt"
    weights = {"model.w": torch.arange(6.0).reshape(2, 3)}
    dcp.save({"state_dict": weights}, checkpoint_id=folder, no_dist=True)
    assert not is_sharded_checkpoint(folder)  # shards without Lightning's file: not a training checkpoint
    torch.save({"global_step": 7, "ptasr": {"vocab": None}}, folder / "meta.pt")
    assert is_sharded_checkpoint(folder) and not is_sharded_checkpoint(tmp_path)
    checkpoint = load_sharded_checkpoint(folder)
    assert checkpoint["global_step"] == 7 and checkpoint["ptasr"] == {"vocab": None}
    torch.testing.assert_close(checkpoint["state_dict"]["model.w"], weights["model.w"])


def test_process_group_store_is_the_default_groups(tmp_path: Path) -> None:
    store = torch.distributed.FileStore(str(tmp_path / "store"), 1)
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        keys = store.num_keys()
        compat.process_group_store().set("ptasr/key", "1")
        assert compat.process_group_store().get("ptasr/key") == b"1"
        assert store.num_keys() == keys + 1  # kept in the store the group was given (under the group's prefix)
    finally:
        torch.distributed.destroy_process_group()
