"""Neural networks as pure nn.Modules (no training code): the TransGAN generator and multi-scale
ViT discriminator, the f-AnoGAN latent encoder, and the ImageNet feature network of the perceptual
mapping loss. Training lives in `transgan_lib.gan`; the CIFAR model in `transgan_lib.cifar.model`."""
from .encoder import LatentEncoder
from .transgan import (
                       TransGANDiscriminator,
                       TransGANGenerator,
                       build_discriminator,
                       build_generator,
                       build_models,
                       count_parameters,
                       math_attention,
)

__all__ = ["LatentEncoder", "TransGANGenerator", "TransGANDiscriminator", "build_generator", "build_discriminator",
           "build_models", "count_parameters", "math_attention"]
