"""transgan-anomaly: find and localize image defects with a transformer GAN (TransGAN)."""
__version__ = "0.1.0"
