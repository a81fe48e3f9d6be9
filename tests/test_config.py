import pytest

from transgan_lib.config import ConfigError, ModelConfig, TrainConfig


def test_presets_fill_unset_fields_and_overrides_win():
    cfg = ModelConfig(image_size=64, model_size="tiny", g_dim=256)
    assert cfg.g_dim == 256 and cfg.d_dim == 64  # override kept, preset fills the rest
    assert cfg.n_stages == 4 and cfg.stage_dims() == (256, 64, 16, 16)
    assert ModelConfig(image_size=32, model_size="base").stage_dims() == (1024, 256, 64)  # TransGAN CIFAR widths


def test_round_trip_and_unknown_fields():
    cfg = TrainConfig(model_size="tiny", epochs=3, model={"g_dim": 64})
    again = TrainConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.model_config() == cfg.model_config()
    with pytest.raises(ConfigError, match="unknown"):
        TrainConfig.from_dict({**cfg.to_dict(), "epochz": 3})


@pytest.mark.parametrize("kwargs, match", [
    (dict(image_size=48), "power of two"),
    (dict(model_size="huge"), "model_size"),
    (dict(attn_impl="flash"), "attn_impl"),
])
def test_bad_model_config(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ModelConfig(**kwargs)


def test_bad_train_config():
    with pytest.raises(ConfigError, match="n_critic"):
        TrainConfig(n_critic=0)
    with pytest.raises(ConfigError, match="loss"):
        TrainConfig(loss="bce")


def test_configs_saved_before_global_affine_load_without_it():
    from transgan_lib.config import ModelConfig
    cfg = ModelConfig(image_size=32, model_size="tiny", latent_dim=16)
    assert cfg.global_affine and ModelConfig.from_dict(cfg.to_dict()).global_affine  # round trip
    old = {k: v for k, v in cfg.to_dict().items() if k != "global_affine"}  # a checkpoint of an older version
    assert ModelConfig.from_dict(old).global_affine is False
