"""The restorer's fused map: head map plus raw-pixel patch distance, its weight chosen on probe copies only,
scored and exported exactly as evaluated."""
import pytest
import torch

from transgan_lib.config import ConfigError, MappingConfig
from transgan_lib.data.mvtec import load_image
from transgan_lib.detection.baselines import patch_bank, patch_distance_map, patch_nn_baseline
from transgan_lib.methods.pipeline import evaluate
from transgan_lib.methods.restorer.fusion import FusedMap, fit_fusion, weight_grid
from transgan_lib.methods.scoring import score_images
from transgan_lib.methods.selection import fit_run_fusion
from transgan_lib.methods.transgan.mapping_file import MappedImages
from transgan_lib.runs import run_paths


def _sets(seed=0):
    """Training normals and validation normals: flat grey with noise; probe copies with a bright square."""
    g = torch.Generator().manual_seed(seed)
    normal = lambda n: (0.1 * torch.randn(n, 3, 16, 16, generator=g)).clamp(-1, 1)  # noqa: E731
    train, val, probe = normal(12), normal(6), normal(6)
    probe[:, :, 5:9, 5:9] = 0.9
    return train, val, probe


def test_the_weight_follows_whichever_part_separates_the_probe_copies():
    train, val, probe = _sets()
    misleading = torch.zeros(12, 16, 16)  # a head that lights up on the normals and not on the copies
    misleading[:6, 2:5, 10:13] = 1
    fusion, table = fit_fusion(train, val, misleading[:6], probe, misleading[6:], sigma=1.0)
    assert table["1"] == 0.0 and table["0"] == 1.0  # the head alone inverts; the patch distance finds the square
    assert fusion.head_weight < 1 and table[f"{fusion.head_weight:g}"] == 1.0
    assert fusion.head_weight == max(float(w) for w, a in table.items() if a == 1.0)  # ties to the larger head weight
    perfect = torch.zeros(12, 16, 16)
    perfect[6:, 5:9, 5:9] = 1
    fusion, table = fit_fusion(train, val, perfect[:6], probe, perfect[6:], sigma=1.0)
    assert fusion.head_weight == 1.0  # every weight separates: the tie goes to the head's map alone


def test_the_parts_are_standardised_on_validation_normals_and_the_bank_holds_training_patches_only():
    train, val, probe = _sets()
    heads = torch.rand(12, 16, 16, generator=torch.Generator().manual_seed(2))
    fusion, _ = fit_fusion(train, val, heads[:6], probe, heads[6:], sigma=1.0)
    torch.testing.assert_close(fusion.bank, patch_bank(train, 8, 4, 20000, 0))
    head_part, patch_part = fusion.parts(val, heads[:6], 1.0)
    for part in (head_part, patch_part):  # mean 0, std 1 over the validation normals' pixels
        assert abs(part.mean().item()) < 1e-5 and abs(part.std().item() - 1) < 1e-4


def test_patch_distance_map_is_the_mean_nearest_distance_of_the_covering_patches():
    """Checked against a direct computation (unfold, cdist, fold), at a size the patch grid does not tile."""
    import torch.nn.functional as F
    train, full, _ = _sets()
    val = full[:, :, :15, :15]  # 15 px: reflect-padded to 16 for 8 px patches at stride 4
    bank = patch_bank(train, 8, 4, 20000, 0)
    x = F.pad(val, (0, 1, 0, 1), mode="reflect")
    patches = F.unfold(x, 8, stride=4)  # (B, D, L)
    nearest = torch.cdist(patches.transpose(1, 2), bank[None].expand(len(x), -1, -1)).amin(2)  # (B, L)
    summed = F.fold(nearest[:, None].expand(-1, 64, -1), (16, 16), 8, stride=4)
    counts = F.fold(torch.ones(1, 64, nearest.shape[1]), (16, 16), 8, stride=4)
    torch.testing.assert_close(patch_distance_map(val, bank, 8, 4), (summed / counts)[:, 0, :15, :15],
                               atol=1e-3, rtol=1e-4)
    maps, _ = patch_nn_baseline(train, full, sigma=0.0)  # the floor is this map
    torch.testing.assert_close(maps, patch_distance_map(full, bank, 8, 4))


def test_no_fusion_is_fitted_on_a_family_the_restorer_trained_on():
    """CutPaste is one of the restorer's training sources: copies of it must not choose the weight."""
    train, val, probe = _sets()

    class Result:
        defect_maps = torch.zeros(6, 16, 16)

    copies = lambda family: MappedImages(result=Result(), labels=torch.ones(6).long(), defects=[family] * 6,  # noqa: E731
                                         images=probe, masks=torch.zeros(6, 16, 16), paths=[str(i) for i in range(6)])
    assert fit_run_fusion(train, val, Result(), copies("cutpaste"), 1.0) == (None, {})
    fusion, table = fit_run_fusion(train, val, Result(), copies("line"), 1.0)
    assert isinstance(fusion, FusedMap) and len(table) == 5


def test_save_and_load_keep_the_map(tmp_path):
    train, val, probe = _sets()
    heads = torch.rand(12, 16, 16, generator=torch.Generator().manual_seed(3))
    fusion, _ = fit_fusion(train, val, heads[:6], probe, heads[6:], sigma=1.0)
    fusion.save(tmp_path / "f.pt")
    again = FusedMap.load(tmp_path / "f.pt")
    assert again.head_weight == fusion.head_weight
    torch.testing.assert_close(again(probe, heads[6:], 1.0), fusion(probe, heads[6:], 1.0))
    # a file written before the coarse part (head weight only) still loads, as two parts
    torch.save({"bank": fusion.bank, "stats": fusion.stats, "head_weight": 0.25, "patch_size": 8, "stride": 4},
               tmp_path / "old.pt")
    assert FusedMap.load(tmp_path / "old.pt").weights == (0.25, 0.75)


def _sets64(seed=0):
    """64 px normals; probe copies with a faint 24 px bright region: each fine patch differs little from the
    normals' noise, the halved image's patches clearly."""
    g = torch.Generator().manual_seed(seed)
    normal = lambda n: (0.3 * torch.randn(n, 1, 64, 64, generator=g)).clamp(-1, 1)  # noqa: E731
    train, val, probe = normal(8), normal(6), normal(6)
    probe[:, :, 20:44, 20:44] += 0.15
    return train, val, probe


def test_at_64_px_a_coarse_patch_part_on_the_halved_images_is_offered_and_kept_when_it_separates_better(tmp_path):
    import torch.nn.functional as F

    from transgan_lib.detection.maps import gaussian_smooth
    train, val, probe = _sets64()
    heads = torch.zeros(12, 64, 64)  # a head that sees nothing
    fusion, table = fit_fusion(train, val, heads[:6], probe, heads[6:], sigma=2.0)
    assert fusion.n_parts == 3 and len(table) == len(weight_grid(3)) == 15
    assert table["0/0/1"] == 1.0 > table["0/1/0"]  # the coarse part finds the faint region, the fine one less
    assert fusion.weights[1] == 0 and fusion.weights[2] > 0
    torch.testing.assert_close(fusion.coarse_bank, patch_bank(F.avg_pool2d(train, 2), 8, 4, 20000, 0))
    coarse = (F.interpolate(patch_distance_map(F.avg_pool2d(val, 2), fusion.coarse_bank, 8, 4)[:, None],
                            size=(64, 64), mode="bilinear", align_corners=False)[:, 0])
    expected = (gaussian_smooth(coarse, 2.0) - fusion.stats[2, 0]) / fusion.stats[2, 1]
    torch.testing.assert_close(fusion.parts(val, heads[:6], 2.0)[2], expected)
    assert fit_fusion(train[..., :32, :32], val[..., :32, :32], heads[:6, :32, :32], probe[..., :32, :32],
                      heads[6:, :32, :32], sigma=2.0)[0].n_parts == 2  # 32 px: the halved image is too small
    fusion.save(tmp_path / "f.pt")
    torch.testing.assert_close(FusedMap.load(tmp_path / "f.pt")(probe, heads[6:], 2.0), fusion(probe, heads[6:], 2.0))


def test_a_coarse_fused_map_exports_to_onnx_and_scores_the_same(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    train, val, probe = _sets64()
    heads = torch.rand(12, 64, 64, generator=torch.Generator().manual_seed(1))
    fusion, _ = fit_fusion(train, val, heads[:6], probe, heads[6:], sigma=2.0, coarse=True)
    fusion.weights = (0.25, 0.25, 0.5)  # every part counts

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fusion = fusion

        def forward(self, images, head):
            return self.fusion(images, head, 2.0)

    torch.onnx.export(Wrapped().eval(), (probe[:2], heads[6:8]), str(tmp_path / "f.onnx"), input_names=["x", "h"],
                      dynamic_axes={"x": {0: "b"}, "h": {0: "b"}}, opset_version=17, dynamo=False)
    session = ort.InferenceSession(str(tmp_path / "f.onnx"))
    out = session.run(None, {"x": probe[:5].numpy(), "h": heads[6:11].numpy()})[0]
    assert abs(out - fusion(probe[:5], heads[6:11], 2.0).numpy()).max() < 1e-4


def test_a_run_evaluated_with_the_fused_map_scores_and_refuses_as_evaluated(evaluate_restored_copy):
    cfg, metrics = evaluate_restored_copy("fused")
    assert metrics["map_kind"] == "fused" and metrics["score_rule"] == "max of Gaussian-smoothed fused map"
    paths, expected = metrics["test_scores"]["paths"], torch.tensor(metrics["test_scores"]["scores"])
    pick = [0, 7, 12]
    images = torch.stack([load_image(paths[i], cfg.image_size) for i in pick])
    run = run_paths(cfg.output_dir, cfg.category)
    scored = score_images(run.root, images, method="restore", device="cpu", progress=False)
    assert (scored.scores - expected[pick]).abs().max() <= 1e-5
    torch.save({"not": "it"}, run.fusion("restore"))  # replaced since the evaluation
    with pytest.raises(ConfigError, match="not the fusion"):
        score_images(run.root, images, method="restore", device="cpu", progress=False)


def test_the_fused_map_is_refused_for_the_gan(evaluated_run):
    cfg = evaluated_run[0]
    with pytest.raises(ConfigError, match="method 'restore'"):
        evaluate(data_root=cfg.data_root, category="demo", output_dir=cfg.output_dir, method="iterative",
                 map_kind="fused", baselines=False)
    assert MappingConfig(map_kind="fused").map_kind == "fused"
