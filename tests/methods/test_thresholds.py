import pytest

from transgan_lib.config import ConfigError, MappingConfig
from transgan_lib.methods.thresholds import rule_of, threshold_record


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
    assert held["threshold_rule"].startswith("conformal: flags at most 5.0% of new good images")
    assert held["threshold_calibration"]["held_apart"] and capsys.readouterr().out == ""
