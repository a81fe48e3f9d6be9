"""Tests for the f-AnoGAN encoder: transgan_lib.models.encoder, transgan_lib.encoder_training and
the encoder / hybrid methods of transgan_lib.mapping.map_images."""
import pytest
import torch

from transgan_lib.config import ConfigError, EncoderConfig, ModelConfig
from transgan_lib.methods.transgan.encoder import (
    encoder_checkpoint_path,
    ensure_encoder,
    load_encoder,
    reuse_problem,
    save_encoder,
    train_encoder,
)
from transgan_lib.methods.transgan.mapping import (
    DEFAULT_ITERATIONS,
    HYBRID_DIVISOR,
    map_images,
    resolve_iterations,
)
from transgan_lib.models import build_discriminator
from transgan_lib.models.encoder import LatentEncoder
from transgan_lib.utils import atomic_torch_save

SIZE, LATENT = 16, 8


@pytest.fixture(scope="module")
def models(linear_tanh_generator):
    torch.manual_seed(0)
    D = build_discriminator(ModelConfig(image_size=SIZE, model_size="tiny", latent_dim=LATENT))
    return linear_tanh_generator(latent_dim=LATENT, image_size=SIZE), D


@pytest.fixture(scope="module")
def normals(models):
    G, _ = models
    with torch.no_grad():
        return G(torch.randn(48, LATENT, generator=torch.Generator().manual_seed(3)))


@pytest.fixture(scope="module")
def trained(models, normals, tmp_path_factory):
    G, D = models
    path = encoder_checkpoint_path(tmp_path_factory.mktemp("runs"), "demo")
    E, history = train_encoder(G, D, normals[:40], epochs=6, batch_size=8, lr=3e-3, seed=0, progress=False,
                               val_images=normals[40:], checkpoint_path=path, gan_checkpoint="runs/demo/last.pt")
    return E, history, path


@pytest.mark.parametrize("size,model_size", [(16, "tiny"), (32, "small"), (64, "tiny")])
def test_encoder_maps_images_to_codes(size, model_size):
    E = LatentEncoder(image_size=size, latent_dim=12, model_size=model_size)
    x = torch.rand(3, 3, size, size) * 2 - 1
    z = E(x)
    assert z.shape == (3, 12)
    torch.testing.assert_close(E(x[1:2]), z[1:2], atol=1e-5, rtol=0)  # no batch coupling (GroupNorm)
    assert LatentEncoder(**E.config()).config() == E.config()


def test_encoder_rejects_bad_sizes():
    with pytest.raises(ValueError, match="image_size 24"):
        LatentEncoder(image_size=24, latent_dim=8)
    with pytest.raises(ValueError, match="model_size"):
        LatentEncoder(image_size=16, latent_dim=8, model_size="huge")
    with pytest.raises(ValueError, match="built for 16x16"):
        LatentEncoder(image_size=16, latent_dim=8)(torch.zeros(1, 3, 32, 32))


def test_training_lowers_the_loss_and_leaves_gan_frozen(models, trained):
    G, D = models
    _, history, _ = trained
    assert history["epoch"] == list(range(1, 7))
    assert history["train_loss"][-1] < 0.5 * history["train_loss"][0]
    assert len(history["val_loss"]) == 6 and history["val_loss"][-1] < history["val_loss"][0]
    assert all(p.requires_grad for p in D.parameters()) and all(p.requires_grad for p in G.parameters())


def test_encoder_checkpoint_round_trip(trained, normals):
    E, history, path = trained
    assert path.name == "encoder.pt" and path.parent.name == "demo"
    E2, meta = load_encoder(path)
    torch.testing.assert_close(E2(normals[:4]), E(normals[:4]))
    assert meta["history"] == history and meta["gan_checkpoint"] == "runs/demo/last.pt"
    assert meta["encoder_config"] == E.config() and not E2.training


def test_encoder_file_records_its_settings_and_epochs_done(trained):
    _, _, path = trained
    meta = load_encoder(path)[1]
    asked = EncoderConfig(epochs=6, batch_size=8, lr=3e-3, seed=0, model_size="tiny")
    assert meta["settings"] == asked.to_dict() and meta["epochs_done"] == 6
    assert reuse_problem(meta, "runs/demo/last.pt", asked) is None
    assert "another GAN checkpoint" in reuse_problem(meta, "runs/demo/other.pt", asked)
    assert "other settings" in reuse_problem(meta, "runs/demo/last.pt", EncoderConfig(epochs=6, batch_size=8, lr=1e-4))
    assert "completed 6 of the 8" in reuse_problem({**meta, "settings": {**meta["settings"], "epochs": 8}},
                                                   "runs/demo/last.pt",
                                                   EncoderConfig(**{**asked.to_dict(), "epochs": 8}))


def test_an_encoder_trained_for_fewer_epochs_than_asked_is_not_reused(models, normals, tmp_path, capsys):
    G, D = models
    path, asked = tmp_path / "encoder.pt", EncoderConfig(epochs=2, batch_size=8, lr=3e-3)
    kw = dict(path=path, gan_fingerprint="sha256:gan", val_images=normals[40:], progress=False)
    # 1. asked 2 epochs, the file records 1 done of those 2 (an interrupted training): retrained
    E1, _ = train_encoder(G, D, normals[:16], epochs=1, batch_size=8, lr=3e-3, progress=False)
    save_encoder(E1, path, history={"epoch": [1]}, gan_checkpoint="sha256:gan", settings=asked)
    ensure_encoder(G, D, normals[:16], settings=asked, **kw)
    assert load_encoder(path)[1]["epochs_done"] == 2 and "completed 1 of the 2 epochs" in capsys.readouterr().out
    # 2. now complete for these settings: reused as it is
    stamp = path.stat().st_mtime_ns
    ensure_encoder(G, D, normals[:16], settings=asked, **kw)
    assert path.stat().st_mtime_ns == stamp and capsys.readouterr().out == ""
    # 3. more epochs asked than it was trained for: retrained with them
    ensure_encoder(G, D, normals[:16], settings=EncoderConfig(**{**asked.to_dict(), "epochs": 3}), **kw)
    assert load_encoder(path)[1]["epochs_done"] == 3 and "other settings" in capsys.readouterr().out
    # 4. the same epochs with another learning rate: retrained too
    ensure_encoder(G, D, normals[:16], settings=EncoderConfig(epochs=3, batch_size=8, lr=1e-3), **kw)
    assert load_encoder(path)[1]["settings"]["lr"] == 1e-3


def test_load_encoder_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_encoder(tmp_path / "nope.pt")
    atomic_torch_save({"G_ema": {}, "model_config": {}}, tmp_path / "last.pt")
    with pytest.raises(ConfigError, match="not an encoder checkpoint"):
        load_encoder(tmp_path / "last.pt")
    E = LatentEncoder(image_size=SIZE, latent_dim=LATENT)
    save_encoder(E, tmp_path / "enc.pt")
    assert load_encoder(tmp_path / "enc.pt")[1]["history"] == {}


def test_train_encoder_accepts_dict_datasets_and_checks_latent_size(models, normals):
    G, D = models

    class Items(torch.utils.data.Dataset):  # MVTecAD-style items
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return {"image": normals[i], "label": 0}

    E, history = train_encoder(G, D, Items(), epochs=1, batch_size=4, kappa=0.0, progress=False)
    assert E.latent_dim == LATENT and history["train_feature_mse"] == [0.0]
    with pytest.raises(ConfigError, match="latent_dim 5"):
        train_encoder(G, D, normals[:4], epochs=1, encoder=LatentEncoder(image_size=SIZE, latent_dim=5),
                      progress=False)


def test_encoder_and_hybrid_methods(models, trained, normals):
    G, D = models
    E, _, _ = trained
    x = normals[40:44]
    enc = map_images(G, D, x, method="encoder", encoder=E, progress=False)
    assert enc.method == "encoder" and enc.iterations == 0 and enc.z.shape == (4, LATENT)
    assert enc.reconstructions.shape == x.shape and enc.total_score.shape == (4,) and enc.seconds_per_image > 0
    torch.testing.assert_close(enc.z, E(x), atol=1e-5, rtol=0)
    hyb = map_images(G, D, x, method="hybrid", encoder=E, lr=0.02, progress=False)
    assert hyb.method == "hybrid" and hyb.iterations == DEFAULT_ITERATIONS // HYBRID_DIVISOR
    torch.testing.assert_close(hyb.loss_history[0], enc.total_score, atol=1e-5, rtol=0)  # starts at E(x)
    assert (hyb.total_score < enc.total_score).all()
    assert map_images(G, D, x, method="hybrid", encoder=E, iterations=3, progress=False).iterations == 3


def test_iteration_rule_per_method():
    assert resolve_iterations("iterative", None) == DEFAULT_ITERATIONS == 1000
    assert resolve_iterations("iterative", 50) == 50
    assert resolve_iterations("hybrid", None) == resolve_iterations("hybrid", DEFAULT_ITERATIONS) == 100
    assert resolve_iterations("hybrid", 300) == 300
    assert resolve_iterations("encoder", 1000) == 0


def test_map_images_argument_errors(models, normals):
    G, D = models
    with pytest.raises(ValueError, match="needs a trained encoder"):
        map_images(G, D, normals[:2], method="encoder")
    with pytest.raises(ValueError, match="unknown mapping method"):
        map_images(G, D, normals[:2], method="magic")
    it = map_images(G, D, normals[:2], method="iterative", iterations=2, progress=False)
    assert it.method == "iterative" and it.iterations == 2
