"""transgan-anomaly: find and localize image defects with a transformer GAN (TransGAN).

`fit`, `evaluate` and `predict` (`transgan_lib.api`) are imported on first use: the notebooks' set-up cell
imports this package before torch is installed on Colab or Kaggle.
"""
__version__ = "0.1.0"
API = ("fit", "evaluate", "predict")


def __getattr__(name: str):
    if name in API:
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'transgan_lib' has no attribute {name!r}")
