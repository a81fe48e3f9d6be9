"""Tests for the dual-discriminator model, its training, checkpoints and evaluation (transgan_lib.cifar)."""
import ast
import csv
import dataclasses
import json
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

from transgan_lib.cifar.config import CifarConfig, run_dir, run_files
from transgan_lib.cifar.data import AnomalySplit, to_float
from transgan_lib.cifar.evaluate import evaluate_cifar, run_all_classes, run_cifar
from transgan_lib.cifar.model import EncoderWeightsError, load_resnet
from transgan_lib.cifar.score import (
    combine_scores,
    feature_bank,
    fit_combiner,
    pixel_baselines,
    score_images,
    select_parts,
)
from transgan_lib.cifar.train import (
    build_cifar_models,
    build_optimizers,
    load_cifar_checkpoint,
    train_cifar,
    train_step,
)
from transgan_lib.config import ConfigError, config_from_parameters
from transgan_lib.methods.transgan.checkpoint import CheckpointError, load_checkpoint, load_generator
from transgan_lib.metrics import image_auroc
from transgan_lib.runs import run_paths

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "05_cifar_dual_discriminator.ipynb"
# A tiny model: 16 px, TransGAN "tiny", random ResNet18 at 32 px (never downloads).
TINY = dict(image_size=16, model_size="tiny", latent_dim=32, pretrained=False, feature_extractor="resnet18",
            encoder_input_size=32, head_hidden=64, patch_size=4, batch_size=16, device="cpu", progress=False)
KINDS = ("blob", "flat", "gradient", "stripes")


def learnable_image(kind: str, rng: np.random.Generator, size: int = 16) -> np.ndarray:
    """Normal kinds are smooth (flat colour, linear gradient, Gaussian blob) in random colours; the
    anomaly kind is period-2 stripes around a random colour: clearly different structure."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    c1, c2 = rng.uniform(0.2, 0.8, 3), rng.uniform(0.2, 0.8, 3)
    if kind == "stripes":
        s = (np.arange(size) % 2) * 2 - 1.0
        s = np.broadcast_to(s[None, :] if rng.random() < 0.5 else s[:, None], (size, size))
        return (np.clip(c1 + 0.15 * s[..., None], 0, 1) * 255).round().astype(np.uint8)
    if kind == "gradient":
        t = xx if rng.random() < 0.5 else yy
    elif kind == "blob":
        cy, cx = rng.uniform(0.3, 0.7, 2)
        t = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.05)
    else:
        t = np.zeros_like(xx)
    return ((c1 * (1 - t[..., None]) + c2 * t[..., None]) * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def learnable_root(tmp_path_factory):
    """ImageFolder layout: 30 train and 12 test images per kind, 16 x 16 PNG."""
    root = tmp_path_factory.mktemp("learnable")
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("test", 12)):
        for kind in KINDS:
            (root / split / kind).mkdir(parents=True)
            for k in range(n):
                Image.fromarray(learnable_image(kind, rng)).save(root / split / kind / f"{k}.png")
    return root


def bar_image(kind: str, rng: np.random.Generator, size: int = 16) -> np.ndarray:
    """A dark and a light colour, at random which is the background, on a fixed template: "flat"
    (background only), "bar_left" / "bar_right" (a 4 px vertical bar in columns 2-5 / 10-13).
    Every pixel has the same distribution in every kind, and bar_left and bar_right the same colour
    histogram; only where the bar is differs."""
    dark, light = rng.uniform(0.05, 0.4, 3), rng.uniform(0.6, 0.95, 3)
    background, bar = (dark, light) if rng.random() < 0.5 else (light, dark)
    t = np.zeros((size, size, 1))
    if kind == "bar_left":
        t[:, 2:6] = 1
    elif kind == "bar_right":
        t[:, size - 6:size - 2] = 1
    return ((background * (1 - t) + bar * t) * 255).round().astype(np.uint8)


def write_bars(root: Path, seed: int = 0) -> Path:
    """ImageFolder layout of `bar_image`s: 80 train and 40 test images per kind, 16 x 16 PNG."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", 80), ("test", 40)):
        for kind in ("bar_left", "flat", "bar_right"):
            (root / split / kind).mkdir(parents=True)
            for k in range(n):
                Image.fromarray(bar_image(kind, rng)).save(root / split / kind / f"{k}.png")
    return root


# bar_right is the anomaly: the normals' bar is on the left (or there is none). A trained model learns
# to draw the bar on the left, so it misses a right bar; an untrained one reconstructs every kind
# equally badly. Over data/model seeds 0-4: untrained AUROC 0.48-0.55, trained 0.87-1.0, margin
# >= 0.38 (default loss weights; with w_adv_anomalous 1 instead of 3, trained 0.90-1.0). The score
# leaves out the latent part: the random encoder's latent error is a random projection that sees
# where the bar is (untrained latent-part AUROC 0.13-0.86 over those seeds), a coin the test must not
# depend on. lr 1e-3: the default 1e-4 needs several times the steps.
BARS = dict(dataset="folder", anomaly_class="bar_right", labelled_anomaly_ratio=0.1, epochs=5, lr=1e-3,
            score_weights={"l1": 1.0, "patch": 1.0}, score_combiner="sum", **TINY)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run (5 epochs, ~15 s) on `write_bars` with bar_right as the anomaly; (cfg, run, metrics)."""
    root = write_bars(tmp_path_factory.mktemp("bars"))
    cfg = CifarConfig(data_root=str(root), output_dir=str(tmp_path_factory.mktemp("runs")), **BARS)
    run, metrics = run_cifar(cfg)
    return cfg, run, metrics


def test_config_presets_roundtrip_and_errors():
    assert (CifarConfig().feature_extractor, CifarConfig().encoder_input_size) == ("resnet50", 224)
    tiny = CifarConfig(model_size="tiny")
    assert (tiny.feature_extractor, tiny.encoder_input_size, tiny.finetune_encoder) == ("convnet", 32, True)
    # only ImageNet weights stay frozen by default; random ones train with the model
    assert not CifarConfig().finetune_encoder and CifarConfig(pretrained=False).finetune_encoder
    assert (CifarConfig().lr, CifarConfig().beta1, CifarConfig().beta2) == (1e-4, 0.001, 0.99)
    cfg = CifarConfig(anomaly_class="cat", w_abc=2.0, **TINY)
    assert CifarConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    for bad in (dict(feature_extractor="vgg"), dict(d_loss="wgan"), dict(protocol="x"), dict(dataset="mnist"),
                dict(score_weights={"mse": 1.0})):
        with pytest.raises(ConfigError):
            CifarConfig(**bad)
    with pytest.raises(ConfigError, match="unknown"):
        CifarConfig.from_dict({"epochz": 3})


def test_pretrained_download_failure_says_set_pretrained_false(monkeypatch):
    def no_network(self, *args, **kwargs):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", no_network)  # never downloads
    with pytest.raises(EncoderWeightsError, match="pretrained=False") as err:
        load_resnet("resnet18", pretrained=True)
    assert "resnet18" in str(err.value) and "no network" in str(err.value)


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before, module, prefix=""):
    after = module.state_dict()
    return {k for k in before if k.startswith(prefix) and not torch.equal(before[k], after[k])}


@pytest.mark.parametrize("finetune", [False, True])
def test_one_training_step_updates_what_it_should(finetune):
    torch.manual_seed(0)
    cfg = CifarConfig(finetune_encoder=finetune, **TINY)
    models = build_cifar_models(cfg)
    model, d_n, d_a = models
    for m in models:
        m.train()
    opts = build_optimizers(models, cfg)
    before = {name: _snapshot(m) for name, m in zip(("model", "d_n", "d_a"), models)}
    x_n, x_a = torch.rand(4, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    out = train_step(models, opts, x_n, x_a, cfg)
    assert set(out) >= {"l1", "patch", "latent", "adv_normal", "adv_anomalous", "abc", "d_normal", "d_anomalous"}
    assert all(torch.isfinite(v) for v in out.values()) and out["latent"] > 0
    changed = _changed(before["model"], model)
    for prefix in ("generator.to_tokens", "generator.to_rgb", "to_latent.0", "to_latent_rec.0"):
        assert any(k.startswith(prefix) for k in changed), f"{prefix} not updated"
    assert _changed(before["d_n"], d_n) and _changed(before["d_a"], d_a)
    trunk = {k for k in before["model"] if k.startswith("features.trunk")}
    if finetune:
        assert changed & trunk
    else:  # frozen: weights and BatchNorm statistics untouched, eval mode kept
        assert not changed & trunk
        assert not model.features.trunk.training
        assert not any(p.requires_grad for p in model.features.trunk.parameters())
        assert all(p.requires_grad for p in model.to_latent_rec.parameters())


def test_trainable_trunk_learns_batchnorm_statistics_from_real_images_only():
    """E1's pass over images updates a trainable trunk's BatchNorm statistics; E2's pass over
    reconstructions uses them without changing them (scoring would see a mixture otherwise)."""
    torch.manual_seed(0)
    model = build_cifar_models(CifarConfig(**TINY)).model.train()
    assert model.features.trainable and model.features.trunk.training
    bn = next(m for m in model.features.trunk.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    model.encode_reconstruction(x)
    assert torch.equal(bn.running_mean, before) and model.features.trunk.training
    model.encode(x)
    assert not torch.equal(bn.running_mean, before)


def test_step_without_labelled_anomalies():
    cfg = CifarConfig(**TINY)
    models = build_cifar_models(cfg)
    before = _snapshot(models.d_anomalous)
    out = train_step(models, build_optimizers(models, cfg), torch.zeros(3, 3, 16, 16), torch.zeros(0, 3, 16, 16), cfg)
    assert out["d_anomalous"] == 0 and out["adv_anomalous"] == 0 and not _changed(before, models.d_anomalous)


def test_combine_scores_standardises_on_reference():
    reference = {"l1": np.array([1.0, 3.0]), "patch": np.array([0.0, 2.0])}
    parts = {"l1": np.array([2.0, 5.0]), "patch": np.array([1.0, 1.0])}
    # l1: (x - 2) / 1, patch: (x - 1) / 1
    assert combine_scores(parts, reference, {"l1": 1.0, "patch": 2.0}).tolist() == [0.0, 3.0]
    kept = select_parts(parts, np.array([False, True]))
    assert {k: v.tolist() for k, v in kept.items()} == {"l1": [5.0], "patch": [1.0]}


@pytest.mark.parametrize("extractor,n_stages", [("convnet", 4), ("resnet18", 5)])
def test_score_parts_nearest_code_features_and_d_anomalous(extractor, n_stages):
    """"nearest" is the distance of E1(x) to the closest code of the normals' bank, "features" the
    cosine distance of each trunk stage to the closest bank image's, summed over the stages (both 0
    for the bank's own images), "anomalies" minus that sum to the labelled anomalies' bank,
    "d_anomalous" D_anomalous' logit on x; a combination leaves out weight-0 and unscored parts."""
    torch.manual_seed(0)
    cfg = CifarConfig(**{**TINY, "feature_extractor": extractor})
    model, _, d_a = build_cifar_models(cfg)
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    bank, anomaly_bank = feature_bank(model, images[:3]), feature_bank(model, images[4:])
    parts = score_images(model, images, cfg, bank=bank, anomaly_bank=anomaly_bank, d_anomalous=d_a)
    for name in ("nearest", "features"):
        assert np.allclose(parts[name][:3], 0, atol=1e-3) and (parts[name][3:] > 1e-3).all(), name
    assert np.allclose(parts["anomalies"][4:], 0, atol=1e-4) and (parts["anomalies"][:4] < -1e-3).all()
    with torch.no_grad():
        z = model.eval().encode(to_float(images))
        expected = torch.cdist(z, bank.codes).min(dim=1).values
        trunk_in = (to_float(images) + 1) / 2
        trunk_in = F.interpolate(trunk_in, size=cfg.encoder_input_size, mode="bilinear", align_corners=False)
        h, stage_sum, to_anomalies = (trunk_in - model.features.mean) / model.features.std, 0.0, 0.0
        for i, layer in enumerate(model.features.trunk):  # by hand: each stage, pooled to <= 4 x 4
            h = layer(h)
            if i in model.features.stage_ends:
                v = F.normalize(F.adaptive_avg_pool2d(h, min(h.shape[-1], 4)).flatten(1), dim=1)
                stage_sum = stage_sum + (1 - (v @ v[:3].T).max(dim=1).values)
                to_anomalies = to_anomalies + (1 - (v @ v[4:].T).max(dim=1).values)
        logits = d_a.eval()(to_float(images)).flatten()
    assert len(bank.stages) == n_stages  # convnet: 3 blocks + output; ResNet: layer1-4 + pooled output
    np.testing.assert_allclose(parts["nearest"], expected.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(parts["features"], stage_sum.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(parts["anomalies"], -to_anomalies.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(parts["d_anomalous"], logits.numpy(), rtol=1e-5, atol=1e-5)
    assert set(score_images(model, images, cfg)) == {"l1", "patch", "latent"}
    reference = {k: v[:3] for k, v in parts.items()}
    only_l1 = ({"l1": parts["l1"]}, {"l1": reference["l1"]})  # a weight-0 part need not be scored
    assert np.array_equal(combine_scores(*only_l1, {"l1": 1.0, "d_anomalous": 0.0, "anomalies": 1.0}),
                          combine_scores(parts, reference, {"l1": 1.0}))


def test_pixel_floors_known_answer():
    """kNN: the distance to the nearest training normal in raw pixels; logistic regression: fit on
    the training normals and the labelled anomalies (dark vs bright images: it ranks the bright
    test images first), left out without labelled anomalies."""
    g = torch.Generator().manual_seed(0)
    dark = torch.randint(0, 100, (20, 3, 4, 4), generator=g, dtype=torch.uint8)
    bright = torch.randint(156, 256, (12, 3, 4, 4), generator=g, dtype=torch.uint8)
    split = AnomalySplit(train_images=torch.cat([dark[:14], bright[:4]]), train_labels=torch.tensor([0] * 14 + [1] * 4),
                         val_images=dark[14:15], val_labels=torch.tensor([0]),
                         test_images=torch.cat([dark[15:], bright[4:]]), test_labels=torch.tensor([0] * 5 + [1] * 8),
                         test_targets=torch.tensor([0] * 5 + [1] * 8), classes=["a", "b"], target_class=1,
                         protocol="one_vs_rest_anomaly")
    floors = pixel_baselines(split)
    expected = torch.cdist(to_float(split.test_images).flatten(1).double(),
                           to_float(dark[:14]).flatten(1).double()).min(dim=1).values
    np.testing.assert_allclose(floors["knn"], expected.numpy(), rtol=1e-5)
    assert image_auroc(split.test_labels, floors["logistic"]) == 1.0
    only_normals = AnomalySplit(**{**split.__dict__, "train_images": dark[:14], "train_labels": torch.zeros(14)})
    assert set(pixel_baselines(only_normals)) == {"knn"}


def test_training_detects_what_the_untrained_model_cannot(trained):
    """The same split scored by the run's starting point (epochs=0: same seed, same initial weights)
    is near chance; the trained model is far better (see BARS). metrics.json's "untrained" floor is
    exactly that starting point's score."""
    cfg, run, metrics = trained
    untrained, _ = evaluate_cifar(train_cifar(dataclasses.replace(cfg, epochs=0, output_dir=cfg.output_dir + "_0")))
    assert metrics["baselines"]["untrained"]["auroc"] == pytest.approx(untrained["auroc"], abs=1e-9)
    assert untrained["baselines"]["untrained"]["auroc"] == pytest.approx(untrained["auroc"], abs=1e-9)
    print(f"\nbars tiny run: AUROC {metrics['auroc']:.3f} (untrained model: {untrained['auroc']:.3f}), "
          f"AUPRC {metrics['auprc']:.3f}, parts {metrics['auroc_parts']}, {metrics['seconds_per_epoch']:.2f} s/epoch")
    assert 0.4 <= untrained["auroc"] <= 0.6, "the fixture must not be solvable without training"
    assert metrics["auroc"] >= untrained["auroc"] + 0.3


def test_run_cifar_counts_the_split_and_writes_metrics(trained):
    cfg, run, metrics = trained
    assert metrics["n_test"] == 120 and metrics["n_test_anomalous"] == 40
    assert metrics["n_train_anomalous"] == 8 and metrics["n_train_normal"] == 144  # 160 normals - 16 val
    assert metrics["class_name"] == "bar_right" and len(run.history) == cfg.epochs == metrics["epochs"]
    saved = json.loads((run_dir(cfg) / "metrics.json").read_text())
    assert saved["auroc"] == pytest.approx(metrics["auroc"]) and saved["anomaly_class"] == "bar_right"
    # the floors, on the same test images and with the same metric code
    split = run.split
    knn = torch.cdist(to_float(split.test_images).flatten(1).double(),
                      to_float(split.train_images[split.train_labels == 0]).flatten(1).double()).min(dim=1).values
    assert saved["baselines"]["knn"]["auroc"] == pytest.approx(image_auroc(split.test_labels, knn))
    assert set(saved["baselines"]) == {"knn", "logistic", "untrained"}
    assert 0 <= saved["baselines"]["logistic"]["auroc"] <= 1


def test_default_score_without_labelled_anomalies_leaves_out_the_anomalies_part(learnable_root, tmp_path):
    """Without labelled anomalies the default (logistic) combiner has nothing to fit and the score falls back
    to the sum of features + anomalies; with no "anomalies" part (NaN in the metrics) that is the features
    part alone."""
    cfg = CifarConfig(dataset="folder", data_root=str(learnable_root), anomaly_class="blob", labelled_anomaly_ratio=0.0,
                      epochs=0, output_dir=str(tmp_path), **TINY)
    assert cfg.score_weights == {"features": 1.0, "anomalies": 1.0} and cfg.score_combiner == "logistic"
    metrics, scores = evaluate_cifar(train_cifar(cfg))
    assert metrics["score_rule"]["score_weights"] == cfg.score_weights
    assert "anomalies" not in scores["test"] and np.isnan(metrics["auroc_parts"]["anomalies"])
    assert metrics["auroc"] == pytest.approx(metrics["auroc_parts"]["features"])
    labelled, _ = evaluate_cifar(train_cifar(dataclasses.replace(cfg, labelled_anomaly_ratio=0.2,
                                                                output_dir=str(tmp_path / "labelled"))))
    assert 0 <= labelled["auroc_parts"]["anomalies"] <= 1


def test_threshold_from_validation_normals_only(trained):
    cfg, run, metrics = trained
    _, scores = evaluate_cifar(run)
    val = scores["val"]
    assert (val["labels"] == 0).all()  # 8 labelled anomalies x 0.1 -> none held out
    assert metrics["threshold"] == pytest.approx(np.percentile(val["score"], cfg.threshold_percentile))
    # standardised on validation normals: they score mean 0 per part
    assert abs(val["score"].mean()) < 1e-9


def test_fit_combiner_is_a_balanced_logistic_regression_on_parts_standardised_by_the_normals():
    from sklearn.linear_model import LogisticRegression
    rng = np.random.default_rng(0)
    normals = {"l1": rng.normal(5, 2, 40), "features": rng.normal(0, 1, 40)}
    anomalies = {"l1": rng.normal(5, 2, 6), "features": rng.normal(3, 1, 6), "d_anomalous": np.zeros(6)}
    combiner = fit_combiner(normals, anomalies)
    assert combiner.parts == ("l1", "features")  # only parts both sets have, in SCORE_PARTS order
    X = np.stack([(normals[p] - normals[p].mean()) / normals[p].std() for p in combiner.parts], 1)
    Xa = np.stack([(anomalies[p] - normals[p].mean()) / normals[p].std() for p in combiner.parts], 1)
    clf = LogisticRegression(class_weight="balanced", C=0.1, max_iter=2000).fit(
        np.r_[X, Xa], np.r_[np.zeros(40), np.ones(6)])
    np.testing.assert_allclose(combiner(anomalies), clf.decision_function(Xa), rtol=1e-6)
    assert combiner.coef[1] > abs(combiner.coef[0])  # the part that separates carries the score


def test_the_logistic_combiner_is_fitted_without_test_labels(trained):
    """Flipping every test label (a marker only the test set carries) must not move the fitted combiner or
    the scores: it is fitted on validation normals and labelled anomalies only. The untrained floor is
    the same combiner refitted on the untrained model's parts."""
    cfg, run, _ = trained
    run = dataclasses.replace(run, cfg=dataclasses.replace(cfg, score_combiner="logistic"))
    metrics, scores = evaluate_cifar(run)
    flipped = dataclasses.replace(run, split=dataclasses.replace(run.split, test_labels=1 - run.split.test_labels))
    metrics_f, scores_f = evaluate_cifar(flipped)
    assert metrics["score_rule"]["coef"] == metrics_f["score_rule"]["coef"] and len(metrics["score_rule"]["coef"]) == 7
    np.testing.assert_array_equal(scores["test"]["score"], scores_f["test"]["score"])
    assert metrics_f["auroc"] == pytest.approx(1 - metrics["auroc"])
    assert metrics["threshold"] == metrics_f["threshold"]
    summed, _ = evaluate_cifar(dataclasses.replace(run, cfg=cfg))
    assert summed["score_rule"]["score_weights"] == cfg.score_weights
    assert metrics["baselines"]["untrained"]["auroc"] != summed["baselines"]["untrained"]["auroc"]


def test_checkpoint_reloads_the_same_model(trained):
    cfg, run, _ = trained
    path = run_dir(cfg) / "checkpoint.pt"
    cfg2, models, history = load_cifar_checkpoint(path)
    assert cfg2 == cfg and len(history) == cfg.epochs
    images = run.split.test_images[:8]
    a, b = score_images(run.scoring_model, images, cfg), score_images(models.model, images, cfg)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6)


def _without_seconds(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def test_resume_equals_uninterrupted_and_refuses_other_settings(learnable_root, tmp_path):
    base = dict(dataset="folder", data_root=str(learnable_root), anomaly_class="flat",
                max_train_images=40, max_test_images=16, **TINY)
    whole = train_cifar(CifarConfig(epochs=2, output_dir=str(tmp_path / "whole"), **base))
    base["output_dir"] = str(tmp_path / "parts")
    first = train_cifar(CifarConfig(epochs=1, **base))
    second = train_cifar(CifarConfig(epochs=2, resume=True, **base))
    assert [r["epoch"] for r in second.history] == [1, 2]
    assert second.history[0]["l1"] == first.history[0]["l1"]
    # exact: the epoch's random draws, optimizer and scaler state, RNG states all come back
    for name, a, b in zip(("model", "d_normal", "d_anomalous"), whole.models, second.models):
        for (key, t), u in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(t, u), f"{name}.{key} differs from the uninterrupted run"
    assert _without_seconds(second.history) == _without_seconds(whole.history)
    # every changed setting outside CifarConfig.RESUME_FREE is named; free ones (epochs, progress) are not
    with pytest.raises(ConfigError, match="w_l1: checkpoint 10.0 vs config 5.0") as err:
        train_cifar(CifarConfig(epochs=3, resume=True, w_l1=5.0, **{**base, "patch_top_k": 2}))
    assert "patch_top_k: checkpoint 4 vs config 2" in str(err.value) and "epochs" not in str(err.value)


def test_rerun_loads_a_finished_run_instead_of_training_again(learnable_root, tmp_path, monkeypatch):
    """As notebook 02: rerunning notebook 05 (train_cifar) with the same settings continues from the
    checkpoint, so a finished run comes back as it was, untrained and unwritten; resume=False starts over."""
    cfg = CifarConfig(dataset="folder", data_root=str(learnable_root), anomaly_class="flat", epochs=1,
                      max_train_images=40, max_test_images=16, output_dir=str(tmp_path), **TINY)
    assert cfg.resume, "resume is the default"
    first = train_cifar(cfg)
    written = run_files(cfg).checkpoint.stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")
    monkeypatch.setattr("transgan_lib.cifar.train.train_step", no_training)
    again = train_cifar(cfg)
    assert again.history == first.history  # the checkpoint's, down to the first run's seconds
    for a, b in zip(first.models, again.models):
        assert all(torch.equal(t, u) for t, u in zip(a.state_dict().values(), b.state_dict().values()))
    assert run_files(cfg).checkpoint.stat().st_mtime_ns == written
    rescored = train_cifar(dataclasses.replace(cfg, score_weights={"l1": 1.0}))  # scoring only: loaded
    assert rescored.cfg.score_weights == {"l1": 1.0} and rescored.history == first.history
    with pytest.raises(AssertionError, match="trained again"):
        train_cifar(dataclasses.replace(cfg, resume=False))


def test_checkpoint_loaders_refuse_corrupt_files_and_other_kinds(trained, trained_run, tmp_path):
    cfg, _, _ = trained
    cifar_ckpt = run_files(cfg).checkpoint
    gan_ckpt = run_paths(trained_run.output_dir, trained_run.category).checkpoint
    with pytest.raises(CheckpointError, match="is a 'gan' checkpoint, but a 'cifar-dual' checkpoint"):
        load_cifar_checkpoint(gan_ckpt)
    with pytest.raises(CheckpointError, match="is a 'cifar-dual' checkpoint, but a 'gan' checkpoint"):
        load_checkpoint(cifar_ckpt)
    with pytest.raises(CheckpointError, match="'cifar-dual'"):
        load_generator(cifar_ckpt)
    truncated = tmp_path / "checkpoint.pt"
    truncated.write_bytes(cifar_ckpt.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="corrupt.*delete it"):
        load_cifar_checkpoint(truncated)
    with pytest.raises(FileNotFoundError, match="train_cifar"):
        load_cifar_checkpoint(tmp_path / "missing.pt")
    ckpt = torch.load(cifar_ckpt, weights_only=True)
    torch.save({**ckpt, "format_version": 99}, truncated)
    with pytest.raises(CheckpointError, match="format_version 99, newer"):
        load_cifar_checkpoint(truncated)
    # a checkpoint written before the shared stack (no kind, RNG or scaler) still loads
    old = {k: v for k, v in ckpt.items() if k not in ("kind", "format_version", "rng", "scaler", "ema")}
    torch.save({**old, "format": "cifar-dual-v1"}, truncated)
    cfg2, models, history = load_cifar_checkpoint(truncated)
    assert cfg2 == cfg and len(history) == cfg.epochs
    assert all(torch.equal(t, ckpt["model"][k]) for k, t in models.model.state_dict().items())


def test_notebook_parameters_build_the_config():
    """Notebook 05 builds its CifarConfig with config_from_parameters(CifarConfig, globals()): every
    parameter but `all_classes` must be a field, and no other name defined before it may be one."""
    cells = [c for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code"]
    index = next(i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", []))
    params = {node.targets[0].id: ast.literal_eval(node.value)
              for node in ast.parse("".join(cells[index]["source"])).body if isinstance(node, ast.Assign)}
    fields = {f.name for f in dataclasses.fields(CifarConfig)}
    assert set(params) - fields == {"all_classes"}
    defined = {alias.asname or alias.name.split(".")[0] for c in cells[:index]
               for node in ast.walk(ast.parse("".join(c["source"])))
               if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names}
    defined |= {node.id for c in cells[:index] for node in ast.walk(ast.parse("".join(c["source"])))
                if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)}
    assert not defined & fields, "a set-up or import name would be taken as a config field"
    cfg = config_from_parameters(CifarConfig, params)
    assert all(getattr(cfg, k) == v for k, v in params.items() if k in fields and v is not None)
    assert cfg.resume, "rerunning notebook 05 resumes from its checkpoint, as notebook 02 does"
    assert any("config_from_parameters(CifarConfig, globals())" in "".join(c["source"]) for c in cells[index + 1:])


def test_run_all_classes_writes_the_summary_table(learnable_root, tmp_path):
    cfg = CifarConfig(dataset="folder", data_root=str(learnable_root), epochs=1, output_dir=str(tmp_path),
                      max_train_images=40, max_test_images=24, **TINY)
    rows = run_all_classes(cfg, classes=["stripes", 1])
    assert [r["anomaly_class"] for r in rows] == ["stripes", 1, "mean"]
    assert rows[-1]["auroc"] == pytest.approx((rows[0]["auroc"] + rows[1]["auroc"]) / 2)
    with open(tmp_path / "cifar" / "summary.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["class_name"] for r in table] == ["stripes", "flat", ""]
    assert float(table[-1]["auroc"]) == pytest.approx(rows[-1]["auroc"])
    for floor in ("auroc_knn", "auroc_logistic", "auroc_untrained"):  # the floors per class and their mean
        values = [json.loads((tmp_path / "cifar" / str(c) / "metrics.json").read_text())
                  ["baselines"][floor[len("auroc_"):]]["auroc"] for c in ("stripes", 1)]
        assert [float(r[floor]) for r in table[:2]] == pytest.approx(values)
        assert float(table[-1][floor]) == pytest.approx(np.mean(values))
    summary = json.loads((tmp_path / "cifar" / "summary.json").read_text())
    assert len(summary["rows"]) == 2 and summary["mean"]["anomaly_class"] == "mean"
    assert (tmp_path / "cifar" / "1" / "metrics.json").is_file()


@pytest.mark.slow
def test_notebook_05_runs_under_papermill(learnable_root, tmp_path, monkeypatch):
    papermill = pytest.importorskip("papermill")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernel inherits it (see conftest `one_thread`)
    out_dir = tmp_path / "runs"
    params = dict(dataset="folder", data_root=str(learnable_root), anomaly_class=3, image_size=16,
                  model_size="tiny", latent_dim=32, epochs=1, batch_size=16, pretrained=False,
                  feature_extractor="resnet18", encoder_input_size=32, output_dir=str(out_dir), device="cpu")
    papermill.execute_notebook(str(NOTEBOOK), str(tmp_path / "out.ipynb"), parameters=params,
                               kernel_name="python3", cwd=str(ROOT), progress_bar=False)
    metrics = json.loads((out_dir / "cifar" / "3" / "metrics.json").read_text())
    for key in ("auroc", "auprc", "anomaly_class", "n_train_normal", "n_train_anomalous", "n_test", "baselines"):
        assert key in metrics
    assert set(metrics["baselines"]) == {"knn", "logistic", "untrained"}
    assert metrics["anomaly_class"] == 3 and metrics["n_test"] == 48 and 0.0 <= metrics["auroc"] <= 1.0
    assert (out_dir / "cifar" / "3" / "checkpoint.pt").is_file()
