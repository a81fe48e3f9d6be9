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


def test_each_objective_trains_with_its_own_defaults():
    """A setting left unset takes its objective's default: the restorer's are the settings the README's
    restorer table measured, the GAN's the study's; a given value wins; "restorer" names the restorer."""
    from transgan_lib.config import OBJECTIVE_DEFAULTS
    resolved = lambda cfg: {k: getattr(cfg, k) for k in OBJECTIVE_DEFAULTS["gan"]}  # noqa: E731
    assert resolved(TrainConfig(objective="restore")) == dict(image_size=64, model_size="tiny", epochs=40,
                                                               batch_size=16, lr=5e-4)
    assert resolved(TrainConfig()) == dict(image_size=64, model_size="base", epochs=350, batch_size=8, lr=1e-4)
    assert TrainConfig(objective="restorer").objective == "restore"
    assert TrainConfig(objective="restore", batch_size=4, lr=1e-3).batch_size == 4
    saved = TrainConfig(objective="restore").to_dict()  # a checkpoint holds the values the run took
    assert TrainConfig.from_dict(saved) == TrainConfig(objective="restore") and saved["batch_size"] == 16


def test_notebook_02_with_only_the_objective_set_trains_the_restorer_with_its_defaults():
    from tests.test_repo import ROOT, _parameters
    from transgan_lib.config import config_from_parameters
    params = {**_parameters(ROOT / "notebooks" / "02_train_mvtec.ipynb"), "objective": "restore"}
    cfg = config_from_parameters(TrainConfig, params)
    assert cfg == TrainConfig(objective="restore")
    assert (cfg.model_size, cfg.epochs, cfg.batch_size, cfg.lr) == ("tiny", 40, 16, 5e-4)

