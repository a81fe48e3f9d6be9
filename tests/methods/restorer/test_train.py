"""The restorer objective through the one training loop: one step lowers the restoration and
segmentation losses on a fixed batch and updates G, D and the head; files and history; exact resume."""
import json
import pathlib
import warnings

import torch

from transgan_lib.config import TrainConfig
from transgan_lib.methods import create_state
from transgan_lib.methods.restorer.train import KIND as RESTORER_KIND
from transgan_lib.training.losses import focal_loss, ssim_loss
from transgan_lib.methods.restorer.train import make_defects, restore_step
from transgan_lib.training.state import load_checkpoint
from transgan_lib.methods.transgan.train import main, train_gan

SIZE = 32
RESTORE = {"head_dim": 8, "enc_depth": 1}


class ImageSet(torch.utils.data.Dataset):
    """Smooth coloured normals (a texture the restorer can learn), MVTecAD dict items."""

    def __init__(self, n, seed=0):
        g = torch.Generator().manual_seed(seed)
        base = torch.rand(n, 3, 1, 1, generator=g) * 1.2 - 0.6
        ys = torch.linspace(0, 6.28, SIZE)
        self.images = (base + 0.2 * torch.sin(ys)[None, None, :, None]
                       + 0.05 * torch.randn(n, 3, SIZE, SIZE, generator=g)).clamp(-1, 1)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": 0}


def _cfg(out, **kw):
    base = dict(output_dir=str(out), category="toy", image_size=SIZE, model_size="tiny", epochs=2, batch_size=4,
                device="cpu", lr=2e-4, seed=3, checkpoint_every=1, objective="restore", restore=RESTORE)
    base.update(kw)
    return TrainConfig(**base)


def _run(out, **kw):
    cfg = _cfg(out, **{k: v for k, v in kw.items() if k != "max_steps"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return train_gan(cfg, ImageSet(16), ImageSet(4, seed=1), progress=False, max_steps=kw.get("max_steps"))


def _losses(G, real, defective, masks):
    with torch.no_grad():
        x_hat, logits = G(defective, segment=True)
    return (x_hat - real).abs().mean() + ssim_loss(x_hat, real), focal_loss(logits, masks)


def test_one_step_lowers_restoration_and_segmentation_losses_and_updates_g_d_and_head(tmp_path):
    cfg = _cfg(tmp_path, lr=1e-3, restore={**RESTORE, "p_defect": 1.0, "seg_detach": False})
    st = create_state(cfg, torch.device("cpu"))
    real = ImageSet(8).images
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    defective, masks = make_defects(real, cfg.restore_config(), gen)  # the step's own defects
    gen.set_state(state)
    before = {name: {k: v.clone() for k, v in m.state_dict().items()}
              for name, m in (("encoder", st.G.encoder), ("generator", st.G.generator), ("head", st.G.head),
                              ("D", st.D))}
    rest0, seg0 = _losses(st.G, real, defective, masks)
    stats = restore_step(st, real, gen)
    rest1, seg1 = _losses(st.G, real, defective, masks)
    assert rest1 < rest0 and seg1 < seg0
    assert torch.isclose(stats["rest_loss"], rest0) and torch.isclose(stats["seg_loss"], seg0, rtol=1e-4)
    for name, m in (("encoder", st.G.encoder), ("generator", st.G.generator), ("head", st.G.head), ("D", st.D)):
        changed = any(not torch.equal(v, before[name][k]) for k, v in m.state_dict().items())
        assert changed, f"{name} was not updated"
    assert st.step == 1 and st.g_step == 1 and st.ema.n_averaged.item() == 1


def test_run_writes_restorer_checkpoint_and_history(tmp_path):
    result = _run(tmp_path)
    root = pathlib.Path(result["output_dir"])
    assert result["checkpoint"] == str(root / "restorer.pt")
    assert not (root / "checkpoint.pt").exists() and not (root / "weights.pt").exists()  # a GAN's files stay apart
    ckpt = load_checkpoint(root / "restorer.pt", kind=RESTORER_KIND)
    assert ckpt["kind"] == "restorer" and ckpt["config"]["objective"] == "restore" and ckpt["step"] == 8
    hist = json.loads((root / "restore_history.json").read_text())  # beside a GAN's history.json
    assert not (root / "history.json").exists() and not (root / "samples_latest.png").exists()
    for key in ("rest_loss", "seg_loss", "adv_loss", "g_loss", "d_loss", "val_l1", "val_seg_pixel_auroc",
                "val_seg_image_auroc", "val_residual_pixel_auroc", "diversity"):
        assert key in hist[-1] and hist[-1][key] == hist[-1][key], key  # present, not NaN
    assert (root / "restore_samples_latest.png").exists() and (root / "restore_history.png").exists()


def test_stopped_then_resumed_equals_uninterrupted(tmp_path):
    reference = _run(tmp_path / "ref")
    first = _run(tmp_path / "cut", max_steps=6)  # stops inside epoch 2
    assert first["step"] == 6
    resumed = _run(tmp_path / "cut")
    a, b = load_checkpoint(resumed["checkpoint"], kind=RESTORER_KIND), load_checkpoint(reference["checkpoint"],
                                                                                      kind=RESTORER_KIND)
    for key in ("G", "D", "G_ema"):
        for name, t in a[key].items():
            assert torch.equal(t, b[key][name]), f"{key}.{name} differs"
    assert (a["step"], a["g_step"], a["epoch"]) == (b["step"], b["g_step"], b["epoch"]) == (8, 8, 2)
    drop = ("seconds", "images_per_second")
    strip = lambda h: [{k: v for k, v in r.items() if k not in drop} for r in h]  # noqa: E731
    assert strip(resumed["history"]) == strip(reference["history"])


def test_cli_takes_the_objective_and_restore_overrides(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr("transgan_lib.methods.transgan.train.train_gan",
                        lambda cfg, **kw: seen.setdefault("cfg", cfg) and {"history": [], "checkpoint": ""})
    main(["--objective", "restore", "--restore", '{"seg_weight": 2.5}', "--output_dir", str(tmp_path)])
    assert seen["cfg"].objective == "restore" and seen["cfg"].restore_config().seg_weight == 2.5


def test_a_gan_checkpoint_saved_before_the_objective_existed_resumes_without_a_warning(tmp_path):
    cfg = _cfg(tmp_path, objective="gan", restore={}, epochs=1, latent_dim=32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        first = train_gan(cfg, ImageSet(8), ImageSet(4, seed=1), progress=False)
    ckpt = torch.load(first["checkpoint"], weights_only=True)
    for key in ("objective", "restore"):  # as written before the restorer objective
        del ckpt["config"][key]
    torch.save(ckpt, first["checkpoint"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        resumed = train_gan(_cfg(tmp_path, objective="gan", restore={}, epochs=2, latent_dim=32), ImageSet(8),
                            ImageSet(4, seed=1), progress=False)
    assert resumed["step"] == 4 and len(resumed["history"]) == 2
