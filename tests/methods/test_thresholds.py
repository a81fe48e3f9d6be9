import pytest

from transgan_lib.config import ConfigError
from transgan_lib.methods.thresholds import rule_of


def test_a_percentile_given_with_the_conformal_rule_is_refused_not_ignored():
    assert rule_of(None, 90.0) == "percentile"  # threshold_q alone: its old meaning
    assert rule_of("conformal", 99.0) == "conformal"  # notebook 04's defaults
    assert rule_of("percentile", 95.0) == "percentile"
    with pytest.raises(ConfigError, match="threshold_rule 'percentile'"):
        rule_of("conformal", 95.0)  # -p threshold_q 95 alone in notebook 04
