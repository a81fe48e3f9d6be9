"""Neural network modules (pure nn.Module; training code lives in transgan_lib.train)."""
from .dual import DualReconstructionModel, ResNetFeatures, build_dual_models
from .encoder import LatentEncoder
from .transgan import (TransGANDiscriminator, TransGANGenerator, build_discriminator,
                       build_generator, build_models, count_parameters, math_attention)

__all__ = ["LatentEncoder", "TransGANGenerator", "TransGANDiscriminator", "build_generator", "build_discriminator",
           "build_models", "count_parameters", "math_attention", "ResNetFeatures", "DualReconstructionModel",
           "build_dual_models"]
