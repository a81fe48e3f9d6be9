"""The map kind is chosen on a defect family the network did not train on (issue 23)."""
import pytest

from transgan_lib.config import ConfigError, MappingConfig, TrainConfig
from transgan_lib.methods.selection import selection_family


def test_the_transgan_chooses_on_cutpaste_and_the_restorer_on_probe_defects():
    assert selection_family(MappingConfig(), TrainConfig()) == "cutpaste"  # trained on normals alone
    assert selection_family(MappingConfig(method="restore"), TrainConfig(objective="restore")) == "probe"


def test_a_family_the_network_trained_on_is_refused_for_selection():
    restorer = TrainConfig(objective="restore")  # its sources include cutpaste
    with pytest.raises(ConfigError, match="family this network trained on"):
        selection_family(MappingConfig(method="restore", selection_defects="cutpaste"), restorer)
    without = TrainConfig(objective="restore", restore={"sources": "foreign,texture"})
    assert selection_family(MappingConfig(method="restore", selection_defects="cutpaste"), without) == "cutpaste"
    assert selection_family(MappingConfig(selection_defects="probe"), TrainConfig()) == "probe"
