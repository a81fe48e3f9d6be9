import numpy as np
import pytest

from transgan_lib.config import ConfigError, MappingConfig
from transgan_lib.methods.thresholds import fpr_quantile, rule_of, threshold_record
from transgan_lib.metrics import conformal_threshold


def test_a_percentile_given_with_the_conformal_rule_is_refused_not_ignored():
    assert rule_of(None, 90.0) == "percentile"  # threshold_q alone: its old meaning
    assert rule_of("conformal", 99.0) == "conformal"  # notebook 04's defaults
    assert rule_of("percentile", 95.0) == "percentile"
    with pytest.raises(ConfigError, match="threshold_rule 'percentile'"):
        rule_of("conformal", 95.0)  # -p threshold_q 95 alone in notebook 04


def test_only_held_apart_normals_are_promised_the_bound(capsys, tmp_path):
    # Validation normals also choose the map: their bound is not claimed, and the user is told what holds.
    on_val = threshold_record(MappingConfig(), 20)
    assert "at most" not in on_val["threshold_rule"] and "exchangeable" in on_val["threshold_rule"]
    assert "calibration_dir" in capsys.readouterr().out
    held = threshold_record(MappingConfig(calibration_dir=str(tmp_path)), 200)
    assert held["threshold_rule"].startswith("conformal: flags at most 5.0% of new good images in expectation, "
                                             "and at most 7.0% with 90% probability")
    assert held["threshold_calibration"]["held_apart"] and capsys.readouterr().out == ""


def test_the_rate_stays_under_its_90_percent_quantile_in_9_of_10_calibration_draws():
    # Uniform scores: a threshold t flags 1 - t of new normals, so each draw's rate is known exactly.
    rng = np.random.default_rng(0)
    for n, target in ((200, 0.05), (20, 0.05), (150, 0.01)):
        rates = np.array([1 - conformal_threshold(rng.uniform(size=n), target)[0] for _ in range(4000)])
        assert np.mean(rates <= fpr_quantile(n, target)) == pytest.approx(0.9, abs=0.015)
        assert np.mean(rates <= fpr_quantile(n, target, 0.5)) == pytest.approx(0.5, abs=0.025)
