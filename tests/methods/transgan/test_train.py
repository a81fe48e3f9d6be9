"""Training loop: files, step counting, EMA, checkpoints, exact resume, config checks, diversity."""
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from transgan_lib.config import ConfigError, TrainConfig
from transgan_lib.methods.transgan.checkpoint import load_checkpoint, load_generator, load_models
from transgan_lib.methods.transgan.train import main, train_gan
from transgan_lib.training.diversity import diversity_ratio, evaluate_diversity, sample_diversity
from transgan_lib.training.stack import CheckpointError, build_ema

SIZE = 32


class ImageSet(torch.utils.data.Dataset):
    """Items in the MVTecAD dict format; `fail_at` raises on that access (a simulated crash)."""

    def __init__(self, n, seed=0, fail_at=None):
        g = torch.Generator().manual_seed(seed)
        base = torch.rand(n, 3, 1, 1, generator=g) * 2 - 1  # distinct colours + noise
        self.images = (base + 0.3 * torch.randn(n, 3, SIZE, SIZE, generator=g)).clamp(-1, 1)
        self.fail_at, self.calls = fail_at, 0

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise RuntimeError("simulated crash")
        return {"image": self.images[i], "label": 0, "mask": torch.zeros(1, SIZE, SIZE),
                "defect": "good", "path": f"img{i}.png"}


def _cfg(out, **kw):
    base = dict(output_dir=str(out), category="toy", image_size=SIZE, model_size="tiny", latent_dim=32,
                epochs=2, batch_size=4, device="cpu", lr=2e-4, seed=3, checkpoint_every=1, sample_every=1)
    base.update(kw)
    return TrainConfig(**base)


def _run(out, train=None, **kw):
    """16 training images at batch 4: 4 steps per epoch."""
    cfg = _cfg(out, **{k: v for k, v in kw.items() if k not in ("max_steps", "resume")})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an early EMA is low-diversity
        return train_gan(cfg, train or ImageSet(16), ImageSet(4, seed=1), progress=False,
                         max_steps=kw.get("max_steps"), resume=kw.get("resume", True))


def _same_state(a, b):
    for key in ("G", "D", "G_ema"):
        for name, t in a[key].items():
            assert torch.equal(t, b[key][name]), f"{key}.{name} differs"
    for key in ("opt_G", "opt_D"):
        for pid, s in a[key]["state"].items():
            for name, t in s.items():
                assert torch.equal(t, b[key]["state"][pid][name]), f"{key} state {pid}.{name} differs"
    assert (a["step"], a["g_step"], a["epoch"]) == (b["step"], b["g_step"], b["epoch"])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 2-epoch run, shared by several tests."""
    out = tmp_path_factory.mktemp("ref")
    return _run(out)


def test_run_writes_files_and_history(reference):
    out = reference["output_dir"]
    import pathlib
    names = {p.name for p in pathlib.Path(out).iterdir()}
    for name in ("checkpoint.pt", "samples_epoch_0001.png", "samples_epoch_0002.png", "samples_latest.png",
                 "history.csv", "history.json", "history.png"):
        assert name in names, name
    hist = json.loads((pathlib.Path(out) / "history.json").read_text())
    assert [r["epoch"] for r in hist] == [1, 2]
    assert [r["step"] for r in hist] == [4, 8]  # the step counter really increments
    for key in ("d_loss", "g_loss", "gp", "d_real", "d_fake", "val_d_real", "diversity", "collapse_warning",
                "seconds", "images_per_second"):
        assert key in hist[-1] and hist[-1][key] is not None, key
    assert np.isfinite([hist[-1][k] for k in ("d_loss", "g_loss", "gp", "diversity")]).all()
    assert hist[-1]["gp"] > 0
    assert reference["history"] == hist
    assert Image.open(pathlib.Path(out) / "samples_latest.png").size == (4 * SIZE + 10, 4 * SIZE + 10)
    assert not reference["generator"].training


def test_n_critic_two_updates_g_every_other_step(tmp_path):
    result = _run(tmp_path, n_critic=2, epochs=1, loss="hinge")
    assert result["history"][0]["gp"] == 0.0  # hinge: no gradient penalty
    ckpt = load_checkpoint(result["checkpoint"])
    d_steps = ckpt["opt_D"]["state"][0]["step"].item()
    g_steps = ckpt["opt_G"]["state"][0]["step"].item()
    assert (ckpt["step"], d_steps) == (4, 4)
    assert (ckpt["g_step"], g_steps) == (2, 2)
    assert ckpt["ema_n_averaged"].item() == 2


def test_ema_matches_hand_computation():
    G = nn.Linear(3, 2)
    ema = build_ema(G, decay=0.9, warmup=False)
    ema.update_parameters(G)  # first update: a copy
    w0 = G.weight.detach().clone()
    with torch.no_grad():
        G.weight.add_(1.0)
    ema.update_parameters(G)
    assert torch.allclose(ema.module.weight, 0.9 * w0 + 0.1 * (w0 + 1.0), atol=1e-7)
    assert not torch.allclose(ema.module.weight, G.weight)



def test_ema_warmup_follows_g_early_then_reaches_the_decay():
    G = nn.Linear(3, 2)
    ema = build_ema(G, decay=0.999)
    ema.update_parameters(G)  # t=0: a copy
    w0 = G.weight.detach().clone()
    with torch.no_grad():
        G.weight.add_(1.0)
    ema.update_parameters(G)  # t=1: d = min(0.999, 2/11)
    d = 2.0 / 11.0
    assert torch.allclose(ema.module.weight, d * w0 + (1 - d) * (w0 + 1.0), atol=1e-6)
    for _ in range(20000):
        ema.n_averaged += 1  # far into training the warm-up decay exceeds 0.999: the cap applies
    w1 = ema.module.weight.detach().clone()
    with torch.no_grad():
        G.weight.add_(1.0)
    ema.update_parameters(G)
    assert torch.allclose(ema.module.weight, 0.999 * w1 + 0.001 * G.weight, atol=1e-6)

def test_checkpoint_round_trip(reference):
    path = reference["checkpoint"]
    ckpt = load_checkpoint(path)
    for key in ("G", "D", "G_ema", "opt_G", "opt_D", "scaler", "epoch", "step", "config", "model_config",
                "rng", "fixed_z", "history", "format_version"):
        assert key in ckpt, key
    assert ckpt["epoch"] == 2 and ckpt["step"] == 8 and ckpt["kind"] == "gan"
    z = torch.randn(2, 32, generator=torch.Generator().manual_seed(0))
    G, mc = load_generator(path)
    assert mc.latent_dim == 32 and not G.training
    assert torch.equal(G(z), reference["generator"](z))
    G_raw, _ = load_generator(path, ema=False)
    assert not torch.allclose(G_raw(z), G(z))  # the EMA differs from the trained G
    G2, D2, mc2, tc = load_models(path)
    assert tc.epochs == 2 and mc2 == mc
    x = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    assert torch.equal(D2(x), reference["discriminator"](x))


def test_resume_at_end_is_a_no_op(reference, tmp_path):
    import shutil
    out = tmp_path / "copy"
    shutil.copytree(reference["output_dir"], out / "toy")
    result = _run(out)
    assert result["step"] == 8 and len(result["history"]) == 2


def test_stopped_by_max_steps_then_resumed_equals_uninterrupted(reference, tmp_path):
    first = _run(tmp_path, max_steps=6)  # stops in the middle of epoch 2
    assert first["step"] == 6
    assert load_checkpoint(first["checkpoint"])["epoch_state"]["batch"] == 2
    resumed = _run(tmp_path)
    _same_state(load_checkpoint(resumed["checkpoint"]), load_checkpoint(reference["checkpoint"]))
    drop = ("seconds", "images_per_second")
    strip = lambda h: [{k: v for k, v in r.items() if k not in drop} for r in h]  # noqa: E731
    assert strip(resumed["history"]) == strip(reference["history"])


def test_crash_then_resume_equals_uninterrupted(reference, tmp_path):
    # 16 fixed-reference reads + 16 reads in epoch 1, then a crash inside epoch 2
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(tmp_path, train=ImageSet(16, fail_at=16 + 16 + 6))
    assert load_checkpoint(tmp_path / "toy" / "checkpoint.pt")["epoch"] == 1
    resumed = _run(tmp_path)
    _same_state(load_checkpoint(resumed["checkpoint"]), load_checkpoint(reference["checkpoint"]))


def test_checkpoint_without_kind_still_loads(reference, tmp_path):
    """Checkpoints written before the shared stack added `kind` are recognised as GAN ones."""
    ckpt = load_checkpoint(reference["checkpoint"])
    old = tmp_path / "checkpoint.pt"
    torch.save({k: v for k, v in ckpt.items() if k != "kind"}, old)
    G, _ = load_generator(old)
    assert all(torch.equal(t, ckpt["G_ema"][k]) for k, t in G.state_dict().items())


def test_resume_with_changed_training_settings_warns(reference, tmp_path):
    import shutil
    shutil.copytree(reference["output_dir"], tmp_path / "toy")
    with pytest.warns(UserWarning, match="changed training settings") as record:
        result = _run(tmp_path, lr=3e-4, n_critic=2, sample_every=2)  # done already: resuming is a no-op
    message = str(next(w.message for w in record if "changed" in str(w.message)))
    assert "lr: checkpoint 0.0002 vs config 0.0003" in message and "n_critic: checkpoint 1 vs config 2" in message
    assert "sample_every" not in message  # a free field
    assert result["step"] == 8


def test_resume_with_other_architecture_names_the_field(reference, tmp_path):
    import shutil
    shutil.copytree(reference["output_dir"], tmp_path / "toy")
    with pytest.raises(ConfigError, match="latent_dim: checkpoint 32 vs config 64"):
        _run(tmp_path, latent_dim=64)
    with pytest.raises(ConfigError, match="d_dim"):
        load_generator(reference["checkpoint"], expect=_cfg(tmp_path, model={"d_dim": 32}).model_config())
    # the attention backend is not an architecture change
    G, mc = load_generator(reference["checkpoint"], expect=_cfg(tmp_path, model={"attn_impl": "math"}).model_config())
    assert mc.attn_impl == "sdpa"


def test_missing_and_corrupt_checkpoint_errors(tmp_path):
    missing = tmp_path / "nope" / "checkpoint.pt"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_checkpoint(missing)
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=str(bad)):
        load_generator(bad)
    torch.save({"G": {}}, bad)
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(bad)


def test_diversity_values_by_hand():
    a = torch.zeros(1, 1, 2, 2)
    images = torch.cat([a, a + 1, a + 3])  # pairwise distances 2, 6, 4 -> mean 4
    assert sample_diversity(images) == pytest.approx(4.0)
    assert diversity_ratio(images * 0.5, images) == pytest.approx(0.5)
    assert sample_diversity(images[:1]) == 0.0


class ConstantG(nn.Module):
    """A collapsed generator: the output ignores z."""

    def __init__(self):
        super().__init__()
        self.image = nn.Parameter(torch.rand(1, 3, SIZE, SIZE) * 2 - 1)

    def forward(self, z):
        return self.image.expand(z.shape[0], -1, -1, -1) + 0 * z.sum()


class NoisyG(ConstantG):
    def forward(self, z):
        return torch.tanh(z[:, :3, None, None].expand(-1, 3, SIZE, SIZE) * 3)


def test_collapsed_generator_is_flagged():
    z = torch.randn(16, 32, generator=torch.Generator().manual_seed(0))
    real = ImageSet(16).images
    with pytest.warns(RuntimeWarning, match="collapsed"):
        result = evaluate_diversity(ConstantG(), z, real, epoch=3)
    assert result["diversity"] < 1e-6 and result["collapse_warning"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        healthy = evaluate_diversity(NoisyG(), z, real)
    assert healthy["diversity"] > 0.1 and not healthy["collapse_warning"]


def test_cli_trains_on_a_folder_of_pngs(tmp_path):
    folder = tmp_path / "data" / "toy" / "train" / "good"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps({"model_size": "tiny", "image_size": SIZE, "latent_dim": 32, "epochs": 5}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = main(["--config", str(cfg_file), "--data_root", str(tmp_path / "data"), "--category", "toy",
                       "--output_dir", str(tmp_path / "runs"), "--epochs", "1", "--batch_size", "4",
                       "--device", "cpu", "--val_fraction", "0.2", "--no_progress"])
    ckpt = load_checkpoint(tmp_path / "runs" / "toy" / "checkpoint.pt")
    assert ckpt["config"]["epochs"] == 1 and ckpt["config"]["latent_dim"] == 32  # flag beats file
    assert ckpt["step"] == 2  # 8 training images (2 held out for validation) / batch 4
    assert "val_d_real" in result["history"][0]


def test_viz_grids_and_figures(tmp_path, reference):
    from matplotlib.figure import Figure

    from transgan_lib.viz.figures import (
        image_grid,
        plot_history,
        plot_image_grid,
        plot_roc_curves,
        plot_score_histograms,
        save_image_grid,
    )
    images = torch.stack([torch.full((3, 8, 8), -1.0), torch.full((3, 8, 8), 1.0)])
    grid = image_grid(images, nrow=2, padding=0)
    assert grid.shape == (8, 16, 3) and grid.dtype == np.uint8
    assert grid[:, :8].max() == 0 and grid[:, 8:].min() == 255  # [-1, 1] -> [0, 255]
    save_image_grid(images, tmp_path / "g.png", nrow=1)
    assert Image.open(tmp_path / "g.png").size == (8 + 4, 2 * 8 + 6)  # padding 2
    assert isinstance(plot_image_grid(images, 2, title="t"), Figure)
    fig = plot_history(reference["history"])
    ax_div = fig.axes[2]
    assert any(np.allclose(line.get_ydata(), 0.1) for line in ax_div.get_lines())  # the collapse line
    fig = plot_score_histograms([0.1, 0.2, 0.9, 1.0, 0.95], ["good", "good", "scratch", "scratch", "stain"])
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["good (n=2)", "scratch (n=2)", "stain (n=1)"]
    fig = plot_roc_curves({"latent": ([0, 0.5, 1], [0, 0.9, 1], 0.87)})
    assert "latent (AUC 0.870)" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
