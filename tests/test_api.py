"""fit / evaluate / predict: the library in three calls, at tiny size."""
import json
from pathlib import Path

import pytest
import torch

import transgan_lib
from transgan_lib.api import method_name


def test_method_names_and_aliases():
    assert method_name("restore") == method_name("restorer") == "restorer"
    with pytest.raises(ValueError, match="unknown method 'restorers'"):
        method_name("restorers")


def test_fit_evaluate_predict_in_three_calls(demo_root, tmp_path):
    run = transgan_lib.fit("restorer", data_root=demo_root, category="demo", output_dir=tmp_path, image_size=32,
                           model_size="tiny", latent_dim=32, epochs=1, batch_size=8, progress=False)
    assert run == tmp_path / "demo" and (run / "restorer.pt").is_file()
    metrics = transgan_lib.evaluate(run, mapping={"synthetic_copies": 1}, progress=False)
    assert metrics["method"] == "restore" and 0 <= metrics["image_auroc"] <= 1
    assert json.loads((run / "metrics.json").read_text())["image_auroc"] == metrics["image_auroc"]
    paths = sorted((demo_root / "demo" / "test" / "scratch").glob("*.png"))[:2]
    result = transgan_lib.predict(run, paths)
    assert result.scores.shape == (2,) and result.maps.shape == (2, 32, 32)
    assert result.threshold == metrics["threshold"]
    assert torch.equal(result.decisions, result.scores >= metrics["threshold"])
    # a tensor in, the same scores out; the test images score as metrics.json recorded them
    again = transgan_lib.predict(run, _load(paths))
    torch.testing.assert_close(again.scores, result.scores)
    recorded = dict(zip(metrics["test_scores"]["paths"], metrics["test_scores"]["scores"]))
    assert float(result.scores[0]) == pytest.approx(recorded[str(paths[0])], abs=1e-5)


def _load(paths):
    from transgan_lib.data.images import load_image
    return torch.stack([load_image(p, 32) for p in paths])


def test_evaluate_needs_a_method_for_a_folder_fit_did_not_make(tmp_path):
    (tmp_path / "demo").mkdir()
    with pytest.raises(ValueError, match="pass method="):
        transgan_lib.evaluate(Path(tmp_path / "demo"))
