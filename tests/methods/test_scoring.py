"""Scoring new images through the evaluated run's files (transgan_lib.methods.scoring)."""
import json
import warnings

import pytest
import torch

from transgan_lib.config import ConfigError, MappingConfig
from transgan_lib.data.mvtec import load_image
from transgan_lib.methods.pipeline import run_mapping
from transgan_lib.methods.scoring import apply_overrides, load_evaluated_run, score_images
from transgan_lib.runs import run_paths

# Scores of the same image mapped in batches of other sizes, on CPU: measured max |difference|
# 0 to 1.2e-7 (mean score 0.3 to 1.0) for 5 and 150 search steps at 32 px, in batches of 1 to 15 and
# in other orders (float rounding of batched matmuls); 1e-5 leaves room.
TOLERANCE = 1e-5


def _run(cfg):
    return run_paths(cfg.output_dir, cfg.category)


def test_score_reproduces_the_evaluated_test_scores(evaluated_run):
    cfg, config = evaluated_run
    metrics = json.loads(_run(cfg).metrics.read_text())
    paths, expected = metrics["test_scores"]["paths"], torch.tensor(metrics["test_scores"]["scores"])
    pick = [13, 8, 5, 1]  # another order and other neighbours than in the evaluation's batches
    images = torch.stack([load_image(paths[i], cfg.image_size) for i in pick])
    scored = score_images(_run(cfg).checkpoint, images, device="cpu", progress=False)
    assert (scored.scores - expected[pick]).abs().max() <= TOLERANCE
    assert scored.threshold == metrics["threshold"]
    assert torch.equal(scored.decisions, scored.scores >= metrics["threshold"])
    assert scored.config == MappingConfig(**{**config.to_dict(), "map_kind": metrics["map_kind"]})
    assert scored.maps.shape == (4, 32, 32) and scored.reconstructions.shape == (4, 3, 32, 32)


def test_score_uses_the_mappings_feature_and_lambda(trained_run, copy_run, tmp_path, demo_root):
    cfg = copy_run(trained_run, tmp_path)
    stains = sorted((demo_root / "demo" / "test" / "stain").glob("*.png"))
    images = torch.stack([load_image(p, cfg.image_size) for p in stains])  # (3, 3, 32, 32)
    for config in (MappingConfig(iterations=1, lambda_=0.6, synthetic_copies=0),
                   MappingConfig(iterations=1, feature="none", synthetic_copies=0)):
        run_mapping(config, data_root=cfg.data_root, category=cfg.category, output_dir=cfg.output_dir, device="cpu",
                    progress=False)
        with pytest.warns(UserWarning, match="no evaluation"):  # mapped, not evaluated: no threshold
            m = score_images(_run(cfg).checkpoint, images, device="cpu", progress=False).mapping
        assert m.lambda_ == config.lambda_ and m.feature == config.feature
        if config.feature == "none":  # no feature term: the score is the residual alone
            assert torch.equal(m.feature_score, torch.zeros(3)) and torch.equal(m.total_score, m.residual_score)
        else:
            assert (m.feature_score > 0).all()
            torch.testing.assert_close(m.total_score, 0.4 * m.residual_score + 0.6 * m.feature_score)


def test_settings_and_overrides(evaluated_run):
    cfg, config = evaluated_run
    metrics = json.loads(_run(cfg).metrics.read_text())
    run = load_evaluated_run(_run(cfg).checkpoint)
    assert run.config == config and run.map_kind == metrics["map_kind"] and run.threshold == metrics["threshold"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # batch size changes no score: no warning
        assert apply_overrides(run, {"batch_size": 3, "sigma": None}).batch_size == 3
        assert apply_overrides(run, {"iterations": 2}, warn=False).iterations == 2  # a threshold of one's own
    with pytest.warns(UserWarning, match="lambda_=0.1 .evaluated: 0.3.*map_kind='ssim'.*threshold"):
        changed = apply_overrides(run, {"lambda_": 0.1, "map_kind": "ssim"})
    assert changed.lambda_ == 0.1 and changed.map_kind == "ssim" and changed.iterations == config.iterations
    with pytest.warns(UserWarning, match="no .*mapping_hybrid.pt.*default settings"):
        other = load_evaluated_run(_run(cfg).root, "hybrid")  # metrics.json evaluated "iterative": not used
    assert other.config == MappingConfig(method="hybrid") and other.map_kind == "residual" and other.threshold is None


def test_metrics_of_another_mapping_file_are_refused(evaluated_run, copy_run, tmp_path):
    cfg = copy_run(evaluated_run[0], tmp_path, files=("checkpoint.pt", "mapping_iterative.pt", "metrics.json"))
    load_evaluated_run(_run(cfg).checkpoint)  # a copy of the whole run folder still belongs together
    run_mapping(MappingConfig(iterations=1, synthetic_copies=0), data_root=cfg.data_root, category=cfg.category,
                output_dir=cfg.output_dir, device="cpu", progress=False)  # mapped again, not evaluated
    with pytest.raises(ConfigError, match="metrics.json evaluated another mapping_iterative.pt.*rerun notebook 04"):
        load_evaluated_run(_run(cfg).checkpoint)


def test_hybrid_scoring_uses_the_encoder_the_mapping_was_made_with(trained_run, copy_run, tmp_path):
    from transgan_lib.methods.pipeline import evaluate, get_encoder, load_splits
    from transgan_lib.methods.transgan.checkpoint import load_models
    cfg = copy_run(trained_run, tmp_path)
    where = dict(data_root=cfg.data_root, category=cfg.category, output_dir=cfg.output_dir)
    run_mapping(MappingConfig(method="hybrid", iterations=2, batch_size=8, synthetic_copies=0), device="cpu",
                encoder_epochs=1, progress=False, **where)
    metrics, arrays = evaluate(method="hybrid", baselines=False, **where)
    scored = score_images(_run(cfg).checkpoint, arrays["images"][[9, 2]], method="hybrid", device="cpu", progress=False)
    assert (scored.scores - arrays["scores"][[9, 2]]).abs().max() <= TOLERANCE
    # another encoder.pt (here: trained for 2 epochs) is not the one the mapping was made with
    G, D, _, train_config = load_models(_run(cfg).checkpoint)
    get_encoder(G, D, load_splits(cfg.data_root, cfg.category, train_config), checkpoint=_run(cfg).checkpoint,
                epochs=2, batch_size=8, device="cpu", progress=False, output_dir=cfg.output_dir, category=cfg.category)
    with pytest.raises(ConfigError, match="encoder.pt is not the encoder .*mapping_hybrid.pt was made with"):
        score_images(_run(cfg).checkpoint, arrays["images"][:1], method="hybrid", device="cpu", progress=False)


def test_a_pasted_white_square_scores_above_the_same_image_without_it(evaluated_run, demo_root):
    """Scored as the evaluated run scores (its map kind, search settings and threshold), good test
    images with an 8 x 8 white square pasted in score above the images themselves and are flagged.
    Measured on this fixture (1-epoch tiny GAN, 5 search steps) with its 4 validation and 6 good test
    normals: every pair, score gap 0.20 to 0.47 (mean score 0.26 -> 0.60, threshold 0.32), AUROC 1.0;
    random-colour squares: every pair too, AUROC 0.87; CutPaste copies (a patch of the image itself,
    jittered): 5 of 10 pairs, AUROC 0.50, too subtle for this GAN. 4 images keep the test short."""
    cfg, _ = evaluated_run
    good = sorted((demo_root / "demo" / "test" / "good").glob("*.png"))[:4]
    originals = torch.stack([load_image(p, cfg.image_size) for p in good])  # (4, 3, 32, 32)
    defective = originals.clone()
    g = torch.Generator().manual_seed(0)
    for image in defective:
        y, x = torch.randint(2, cfg.image_size - 10, (2,), generator=g).tolist()
        image[:, y:y + 8, x:x + 8] = 1.0  # white, in [-1, 1]
    scored = score_images(_run(cfg).checkpoint, torch.cat([originals, defective]), device="cpu", progress=False)
    before, after = scored.scores[:4], scored.scores[4:]
    assert (after > before).all() and (after - before).mean() > 0.1, (before, after)
    assert scored.decisions[4:].all()  # above the validation threshold of metrics.json


def test_a_run_folder_that_kept_only_weights_scores_the_same(evaluated_run, trained_run, tmp_path):
    """Delete the 2 GB checkpoint after training: weights.pt (which records the checkpoint it came
    from) with the mapping and metrics files scores exactly as the checkpoint did."""
    import shutil
    cfg, _ = evaluated_run
    metrics = json.loads(_run(cfg).metrics.read_text())
    images = torch.stack([load_image(p, cfg.image_size) for p in metrics["test_scores"]["paths"][:3]])
    slim = run_paths(tmp_path, cfg.category)
    slim.root.mkdir()
    shutil.copy(_run(trained_run).weights, slim.weights)  # exported beside the checkpoint evaluated_run copied
    for name in ("mapping_iterative.pt", "metrics.json"):
        shutil.copy(_run(cfg).root / name, slim.root / name)
    full = score_images(_run(cfg).checkpoint, images, device="cpu", progress=False)
    only_weights = score_images(slim.root, images, device="cpu", progress=False)
    assert torch.equal(only_weights.scores, full.scores) and only_weights.threshold == full.threshold
