"""The registry of methods (`transgan_lib/registry.py`): every name once, old spellings still accepted."""
import pytest


def test_the_registry_names_each_method_once_and_old_spellings_still_work():
    from transgan_lib.config import MappingConfig
    from transgan_lib.registry import MAPPING_METHODS, METHODS, RESTORE_METHOD, get_method
    assert tuple(METHODS) == ("restorer", "iterative", "encoder", "hybrid")
    assert MAPPING_METHODS == ("iterative", "encoder", "hybrid") and RESTORE_METHOD == "restore"
    assert get_method("restore") is get_method("restorer") is METHODS["restorer"]
    assert MappingConfig(method="restorer").method == "restore"  # files keep their names: metrics_restore.json
    with pytest.raises(ValueError, match="Did you mean 'hybrid'"):
        get_method("hybird")
