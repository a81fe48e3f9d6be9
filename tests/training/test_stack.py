"""The shared training stack (transgan_lib.training.stack): optimiser step, checkpoint format and IO, resume policy."""
import dataclasses
import random

import numpy as np
import pytest
import torch
from torch import nn

from transgan_lib.config import ConfigError, TrainConfig
from transgan_lib.training.stack import (
    CheckpointError,
    build_checkpoint,
    check_resume,
    epoch_seed,
    grad_scaler,
    optimizer_step,
    read_checkpoint,
    load_checkpoint_state,
    save_checkpoint,
)


def _draws():
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_optimizer_step_clips_the_total_grad_norm():
    layer = nn.Linear(4, 1, bias=False)
    nn.init.zeros_(layer.weight)
    opt = torch.optim.SGD(layer.parameters(), lr=1.0)
    scaler = grad_scaler(torch.device("cpu"), None)
    x = torch.full((1, 4), 3.0)  # grad of the output = x, norm 6
    optimizer_step(layer(x).sum(), opt, scaler, grad_clip=1.5)
    assert torch.allclose(layer.weight, torch.full((1, 4), -0.75))  # -x * 1.5 / 6: norm 1.5
    optimizer_step(layer(x).sum(), opt, scaler, grad_clip=0)  # no clipping
    assert torch.allclose(layer.weight, torch.full((1, 4), -3.75))
    assert not scaler.is_enabled()  # fp32: no loss scaling


def test_checkpoint_round_trip_restores_states_and_rng(tmp_path):
    cfg = TrainConfig(model_size="tiny", image_size=32, latent_dim=8)
    model = nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    optimizer_step(model(torch.ones(1, 3)).sum(), opt, grad_scaler(torch.device("cpu"), None))
    objects = {"net": model, "opt": opt, "scaler": {"a": grad_scaler(torch.device("cpu"), None)}}
    torch.manual_seed(5)
    path = save_checkpoint(build_checkpoint("gan", cfg, objects, epoch=3, history=[{"epoch": 3}], step=7),
                           tmp_path / "checkpoint.pt")
    expected, weights = _draws(), {k: v.clone() for k, v in model.state_dict().items()}
    ckpt = read_checkpoint(path, "gan")
    assert (ckpt["kind"], ckpt["epoch"], ckpt["step"], ckpt["history"]) == ("gan", 3, 7, [{"epoch": 3}])
    assert ckpt["config"] == cfg.to_dict() and ckpt["model_config"]["latent_dim"] == 8
    with torch.no_grad():
        model.weight.add_(1.0)
    load_checkpoint_state(ckpt, objects)
    assert all(torch.equal(t, weights[k]) for k, t in model.state_dict().items())
    assert _draws() == expected  # python, numpy and torch draws continue as after the save
    with pytest.raises(ValueError, match="kind"):
        save_checkpoint({**ckpt, "kind": None}, path)  # a checkpoint without its kind could not be read back


def test_read_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="run me first"):
        read_checkpoint(tmp_path / "none.pt", "gan", train_hint="run me first")
    path = tmp_path / "checkpoint.pt"
    torch.save({"kind": "cifar-dual", "format_version": 1}, path)
    with pytest.raises(CheckpointError, match="'cifar-dual' checkpoint, but a 'gan'"):
        read_checkpoint(path, "gan")
    torch.save({"kind": "gan", "format_version": 2}, path)
    with pytest.raises(CheckpointError, match="newer"):
        read_checkpoint(path, "gan")
    torch.save({"kind": "gan", "format_version": 1}, path)
    with pytest.raises(CheckpointError, match=r"missing \['G'\]"):
        read_checkpoint(path, "gan", required=("G",))
    torch.save([1, 2], path)
    with pytest.raises(CheckpointError, match="not a transgan_lib training checkpoint"):
        read_checkpoint(path, "gan")


def test_resume_policy_names_every_change_and_ignores_free_fields():
    saved = TrainConfig(model_size="tiny").to_dict()
    free = TrainConfig(model_size="tiny", epochs=5, device="cpu", num_workers=2)
    assert check_resume(saved, free, "ckpt.pt") == {}
    changed = dataclasses.replace(free, lr=3e-4, batch_size=2)
    with pytest.raises(ConfigError, match="ckpt.pt") as err:
        check_resume(saved, changed, "ckpt.pt")
    assert "batch_size: checkpoint 8 vs config 2" in str(err.value) and "lr: checkpoint 0.0001" in str(err.value)
    assert "epochs" not in str(err.value)
    with pytest.warns(UserWarning, match="batch_size.*lr"):
        assert set(check_resume(saved, changed, "ckpt.pt", warn=True)) == {"batch_size", "lr"}


def test_epoch_seed_differs_by_epoch_and_rank():
    seeds = {epoch_seed(0, e, r) for e in range(3) for r in range(2)}
    assert len(seeds) == 6 and all(0 <= s < 2 ** 63 for s in seeds)
    assert epoch_seed(0, 1) == epoch_seed(0, 1, 0)
