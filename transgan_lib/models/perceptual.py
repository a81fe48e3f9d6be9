"""Perceptual features for the latent mapping's feature term (``feature="perceptual"``).

Shape letters: B batch, H/W image height/width, F feature channels, h/w feature-map height/width.

The first blocks of an ImageNet network (torchvision), behind an ImageNet normalisation of the
[-1, 1] images. Weights come from the torch hub cache; nothing is downloaded silently in tests,
and an offline machine gets `PerceptualWeightsError` naming the alternatives.
"""
from __future__ import annotations

import torch
from torch import nn

from ..utils import IMAGENET_MEAN, IMAGENET_STD

PERCEPTUAL_NETS = {"resnet18": "layer2", "vgg16": 9}  # backbone -> where its features are cut


class PerceptualWeightsError(RuntimeError):
    """Pretrained weights for the perceptual feature network could not be loaded."""


class PerceptualFeatures(nn.Module):
    """ImageNet normalisation + the first blocks of a torchvision backbone.

    forward: images (B, 3, H, W) in [-1, 1] -> feature maps (B, F, h, w).
    """

    def __init__(self, *, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = ((x + 1.0) / 2.0 - self.mean) / self.std  # [-1, 1] -> ImageNet statistics
        return self.backbone(x)


def _load_torchvision_model(name: str, pretrained: bool) -> nn.Module:
    """torchvision model with its DEFAULT ImageNet weights (downloaded to the torch hub cache
    on first use) or random weights. Separate so tests can replace it."""
    import torchvision
    return torchvision.models.get_model(name, weights="DEFAULT" if pretrained else None)


def load_perceptual_net(name: str = "resnet18", *, pretrained: bool = True) -> PerceptualFeatures:
    """A frozen-ready feature network for ``feature="perceptual"``.

    Args:
        name: "resnet18" (features after layer2: 128 channels at 1/8 resolution) or "vgg16"
            (after relu2_2: 128 channels at 1/2 resolution).
        pretrained: load ImageNet weights (from the torch hub cache, else downloaded). Random
            weights with False (tests only: random features are not perceptual).
    Raises:
        PerceptualWeightsError: the weights cannot be loaded (e.g. offline), naming the fix.
    """
    if name not in PERCEPTUAL_NETS:
        raise ValueError(f"unknown perceptual net {name!r}; choose one of {list(PERCEPTUAL_NETS)}")
    try:
        model = _load_torchvision_model(name, pretrained)
    except Exception as err:  # URLError, hash mismatch, no disk, ...: all mean "no weights"
        hub = torch.hub.get_dir()
        raise PerceptualWeightsError(
            f"could not load ImageNet weights for {name!r} ({type(err).__name__}: {err}). Either use "
            f"feature='discriminator' (no download needed), or pre-download the weights on a machine "
            f"with internet access (`python -c \"import torchvision; torchvision.models.get_model("
            f"'{name}', weights='DEFAULT')\"`) and copy {hub}/checkpoints/ here, or pass your own "
            f"`perceptual_net`.") from err
    if name == "resnet18":
        backbone = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool, model.layer1, model.layer2)
    else:
        backbone = model.features[:PERCEPTUAL_NETS[name]]
    return PerceptualFeatures(backbone=backbone).eval()
