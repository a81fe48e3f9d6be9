"""Detection with a trained restorer (method "restore"): one pass per image, the head's map among the
map kinds, metrics.json with every key the GAN's has, scoring new images exactly as evaluated."""
import json
from pathlib import Path

import pytest
import torch

from transgan_lib.config import ConfigError, MappingConfig, TrainConfig
from transgan_lib.data.mvtec import load_image
from transgan_lib.methods.pipeline import select_map_kind
from transgan_lib.data.probe_defects import PROBE_FAMILIES
from transgan_lib.methods.restorer.detect import RESTORE_MAP_KINDS, detection_maps, restore_images
from transgan_lib.methods.scoring import score_images
from transgan_lib.methods.restorer.train import load_restorer
from transgan_lib.methods.transgan.train import train_gan
from transgan_lib.runs import run_paths


def test_restore_images_is_one_pass_with_the_heads_map():
    torch.manual_seed(0)
    from transgan_lib.config import ModelConfig, RestoreConfig
    from transgan_lib.models.restorer import build_restorer
    R = build_restorer(ModelConfig(image_size=32, model_size="tiny"), RestoreConfig(head_dim=8)).eval()
    x = torch.rand(5, 3, 32, 32) * 2 - 1
    result = restore_images(R, x, batch_size=2, progress=False)
    x_hat, probs = R.predict(x)
    torch.testing.assert_close(result.reconstructions, x_hat)  # batches of 2 change only rounding
    torch.testing.assert_close(result.defect_maps, probs)
    assert result.iterations == 0 and result.method == "restore" and result.z.shape == (5, 0)
    torch.testing.assert_close(result.total_score, probs.flatten(1).amax(1))
    maps = detection_maps(x, result, "defect", sigma=0.0)
    assert torch.equal(maps, result.defect_maps)
    with pytest.raises(ValueError, match="restorer head"):
        detection_maps(x, result.__class__(**{**result.__dict__, "defect_maps": None}), "defect", 0.0)


def test_metrics_keep_every_key_and_record_the_restore_method(restored_run, evaluated_run):
    cfg, metrics, arrays = restored_run
    gan_metrics = json.loads(run_paths(evaluated_run[0].output_dir, "demo").metrics.read_text())
    assert set(gan_metrics) <= set(metrics)  # every key the GAN's metrics.json has
    assert metrics["method"] == "restore" and metrics["iterations"] == 0
    assert metrics["map_kind"] in RESTORE_MAP_KINDS + ("fused",)
    # the head's map first, the fused map last (weight chosen on the same probe copies)
    assert list(metrics["map_selection"]["synthetic_auroc"]) == list(RESTORE_MAP_KINDS) + ["fused"]
    assert set(metrics["fusion"]["weight_auroc"]) == {"1", "0.75", "0.5", "0.25", "0"}
    assert metrics["fusion"]["head_weight"] in (1, 0.75, 0.5, 0.25, 0) and "fused_map_max" in metrics["alternatives"]
    assert metrics["fingerprints"]["fusion"] is not None
    assert run_paths(cfg.output_dir, "demo").fusion("restore").is_file()
    # chosen on probe defects, a family the restorer never trained on (CutPaste is one of its sources)
    assert "probe-defect copies" in metrics["map_selection"]["rule"]
    from transgan_lib.methods.transgan.mapping_file import MappingRun
    synthetic = MappingRun.load(run_paths(cfg.output_dir, "demo").mapping("restore"), "restore").val_synthetic
    assert set(synthetic.defects) == set(PROBE_FAMILIES) and "cutpaste" not in synthetic.defects
    assert "defect_map_max" in metrics["alternatives"] and "residual_map_max" in metrics["alternatives"]
    assert "anogan_score" not in metrics["alternatives"] and "anogan_score" in gan_metrics["alternatives"]
    assert set(metrics["baselines"]) == {"mean_image", "patch_nn"}
    assert arrays["maps"].shape == arrays["reconstructions"].shape[:1] + (32, 32)
    assert metrics["fingerprints"]["checkpoint"] is not None
    assert run_paths(cfg.output_dir, "demo").mapping("restore").is_file()
    assert not run_paths(cfg.output_dir, "demo").checkpoint.exists()  # no GAN was needed


def test_score_reproduces_the_evaluated_test_scores(restored_run):
    cfg, metrics, _ = restored_run
    paths, expected = metrics["test_scores"]["paths"], torch.tensor(metrics["test_scores"]["scores"])
    pick = [13, 8, 5, 1]
    images = torch.stack([load_image(paths[i], cfg.image_size) for i in pick])
    run = run_paths(cfg.output_dir, cfg.category)
    scored = score_images(run.root, images, method="restore", device="cpu", progress=False)
    assert (scored.scores - expected[pick]).abs().max() <= 1e-5
    assert scored.threshold == metrics["threshold"] and scored.config.map_kind == metrics["map_kind"]
    R, _, _, _ = load_restorer(run.restorer)
    assert scored.reconstructions.shape == (4, 3, 32, 32)
    torch.testing.assert_close(scored.reconstructions, R.predict(images)[0])


def test_score_command_with_the_restorer(restored_run, demo_root, tmp_path):
    import csv

    from transgan_lib.cli import main
    cfg, metrics, _ = restored_run
    images, out = demo_root / "demo" / "test" / "patch", tmp_path / "scored"
    main(["score", "--checkpoint", f"{cfg.output_dir}/demo/restorer.pt", "--images", str(images), "--out", str(out),
          "--method", "restore", "--device", "cpu"])
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert len(rows) == 3 and all(float(r["threshold"]) == metrics["threshold"] for r in rows)
    expected = dict(zip(metrics["test_scores"]["paths"], metrics["test_scores"]["scores"]))
    for r in rows:  # the evaluated test images score as in metrics.json
        assert abs(float(r["score"]) - expected[r["path"]]) <= 1e-5
    assert all(Path(r["heatmap"]).is_file() for r in rows)


def test_the_heads_map_is_refused_for_a_gan_and_chosen_when_it_separates_best():
    class Result:  # a stand-in MappingResult: perfect head maps, useless reconstructions
        def __init__(self, maps):
            self.defect_maps, self.reconstructions = maps, torch.zeros(len(maps), 3, 16, 16)
    normal, defective = torch.zeros(4, 16, 16), torch.zeros(4, 16, 16)
    defective[:, 4:8, 4:8] = 1
    images = torch.rand(8, 3, 16, 16)
    selection = select_map_kind(images[:4], Result(normal), images[4:], Result(defective), sigma=1.0)
    assert selection["chosen"] == "defect" and selection["synthetic_auroc"]["defect"] == 1.0
    with pytest.raises(ConfigError, match="map_kind"):
        MappingConfig(map_kind="nope")


class Stripes(torch.utils.data.Dataset):
    """A simple texture: diagonal stripes at a random phase, slightly varied lighting."""

    def __init__(self, n, seed=0, size=32):
        g = torch.Generator().manual_seed(seed)
        ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        phase = torch.rand(n, 1, 1, generator=g) * 6.28
        gain = 0.9 + 0.2 * torch.rand(n, 1, 1, 1, generator=g)
        wave = torch.sin((xs + ys)[None] * 0.8 + phase)[:, None]  # (n, 1, H, W)
        tint = torch.tensor([0.5, 0.2, -0.1]).view(1, 3, 1, 1)
        self.images = (gain * (0.5 * wave + tint)).clamp(-1, 1)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": 0}


@pytest.mark.slow
def test_after_short_training_a_pasted_defect_scores_above_normals_and_its_map_peaks_inside(tmp_path):
    cfg = TrainConfig(output_dir=str(tmp_path), category="stripes", image_size=32, model_size="tiny", epochs=8,
                      batch_size=8, lr=5e-4, device="cpu", objective="restore", checkpoint_every=8,
                      restore={"head_dim": 16, "enc_depth": 1})
    train_gan(cfg, Stripes(48), Stripes(8, seed=1), progress=False)
    R, _, _, _ = load_restorer(run_paths(tmp_path, "stripes").restorer)
    normals = Stripes(8, seed=2).images
    defective = normals.clone()
    defective[:, :, 10:18, 12:20] = torch.tensor([-0.6, 0.4, 0.6]).view(1, 3, 1, 1)  # a pasted foreign square
    result = restore_images(R, torch.cat([normals, defective]), progress=False)
    maps = detection_maps(torch.cat([normals, defective]), result, "defect", sigma=1.0)
    scores = maps.flatten(1).amax(1)
    assert scores[8:].min() > scores[:8].max()  # every defective image above every normal
    peaks = maps[8:].flatten(1).argmax(1)
    rows, cols = peaks // 32, peaks % 32
    assert ((rows >= 10) & (rows < 18) & (cols >= 12) & (cols < 20)).all()  # the map peaks inside the square
