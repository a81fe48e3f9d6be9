"""Encoder -> TransGAN generator -> encoder, plus two discriminators (imbalanced CIFAR-10 setting).

Shape letters: B batch, C = 3 channels, H, W image size, S encoder input size, F pooled ResNet
feature size (2048 for ResNet50, 512 for ResNet18, 256 for the small convnet), L latent size.

* `ResNetFeatures`: torchvision's ImageNet ResNet (50 or 18) without its classifier, or the
  `small_convnet` of the `tiny` preset (random weights, always trained). Inputs in
  [-1, 1] are mapped to [0, 1], resized to S x S and normalised with the ImageNet mean/std, as the
  ResNet expects. Frozen when `trainable=False` (eval mode, requires_grad False: BatchNorm
  statistics never move); `trainable=True` trains it (the default for random weights, see
  `CifarConfig.finetune_encoder`). A trainable trunk updates its BatchNorm statistics from real
  images only: E2's pass over reconstructions runs it in eval mode (otherwise the statistics used at
  scoring time would be a mixture of images and reconstructions).
  `with_stages` also gives the trunk's features after each of its stages (the convnet's three downsampling
  blocks and its last layer; a ResNet's layer1-4 and its pooled output), each average-pooled to at
  most `STAGE_GRID` x `STAGE_GRID` and L2-normalised: what `cifar.score`'s ``features`` part
  compares with the training normals'.
* `DualReconstructionModel`: E1 = trunk + `to_latent` head maps x to z; the TransGAN generator
  maps z to x_hat; E2 = the *same* trunk + its own `to_latent_rec` head maps x_hat back to z_rec
  (GANomaly's second encoder). Sharing the frozen trunk costs no parameters; the two heads are
  separate, so z and z_rec are different tensors and the latent loss is not identically zero.
* D_normal and D_anomalous are two independent TransGAN (multi-scale ViT) discriminators.
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from ..config import ModelConfig
from ..models.transgan import (
    TransGANDiscriminator,
    build_discriminator,
    build_generator,
)
from ..utils import IMAGENET_MEAN, IMAGENET_STD

FEATURE_EXTRACTORS: Dict[str, Tuple[str, str, int]] = {
    # name: (torchvision builder, weights enum member, pooled feature size)
    "resnet50": ("resnet50", "ResNet50_Weights.IMAGENET1K_V2", 2048),
    "resnet18": ("resnet18", "ResNet18_Weights.IMAGENET1K_V1", 512),
    "convnet": ("", "", 256),  # `small_convnet`: no pretrained weights; trained with the model
}

STAGE_GRID = 4  # `ResNetFeatures.with_stages` pools every stage to at most this many positions a side


def small_convnet(input_size: int, width: int = 32) -> nn.Sequential:
    """A DCGAN-style encoder trunk for small images, (B, 3, S, S) -> (B, 8 width, 1, 1), S a multiple
    of 8: three stride-2 convolutions down to S/8, then one S/8 x S/8 convolution (every position
    kept, unlike a ResNet whose stem quarters a 32 px image at once). The `tiny` preset's encoder."""
    def down(cin, cout):
        return [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2)]
    return nn.Sequential(nn.Conv2d(3, width, 3, 1, 1), nn.LeakyReLU(0.2), *down(width, 2 * width),
                         *down(2 * width, 4 * width), *down(4 * width, 8 * width),
                         nn.Conv2d(8 * width, 8 * width, input_size // 8), nn.LeakyReLU(0.2))


class EncoderWeightsError(RuntimeError):
    """The pretrained ImageNet weights could not be loaded (e.g. no network)."""


def load_resnet(arch: str, pretrained: bool) -> nn.Module:
    """A torchvision ResNet with ImageNet weights (`pretrained=True`) or random weights.

    Raises EncoderWeightsError, saying to set pretrained=False, when the weights cannot be loaded.
    """
    if arch not in FEATURE_EXTRACTORS:
        raise ValueError(f"feature_extractor must be one of {list(FEATURE_EXTRACTORS)}, got {arch!r}")
    builder_name, weights_name, _ = FEATURE_EXTRACTORS[arch]
    builder = getattr(torchvision.models, builder_name)
    if not pretrained:
        return builder(weights=None)
    weights = torchvision.models.get_weight(weights_name)
    try:
        return builder(weights=weights)
    except Exception as e:  # URLError, HTTPError, hash mismatch, truncated file, ...
        raise EncoderWeightsError(
            f"could not load the ImageNet weights {weights_name} for {arch} ({type(e).__name__}: {e}). "
            "Offline? Set pretrained=False (random weights; detection is then weaker), or copy "
            f"{weights.url.rsplit('/', 1)[-1]} into {torch.hub.get_dir()}/checkpoints/") from e


class ResNetFeatures(nn.Module):
    """Images (B, 3, H, W) in [-1, 1] -> pooled ResNet features (B, F)."""

    def __init__(self, *, arch: str = "resnet50", pretrained: bool = True, input_size: int = 224,
                 trainable: bool = False):
        super().__init__()
        if arch == "convnet":
            self.trunk = small_convnet(input_size)
        else:
            resnet = load_resnet(arch, pretrained)
            self.trunk = nn.Sequential(*list(resnet.children())[:-1])  # drop fc; ends with avgpool
        # indices into `trunk` whose outputs end a stage (see `with_stages`)
        self.stage_ends = (4, 7, 10, 12) if arch == "convnet" else (4, 5, 6, 7, 8)
        self.out_dim = FEATURE_EXTRACTORS[arch][2]
        self.input_size = int(input_size)
        self.trainable = bool(trainable)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.trunk.requires_grad_(self.trainable)
        self.train(self.training)

    def train(self, mode: bool = True) -> "ResNetFeatures":
        super().train(mode)
        if not self.trainable:
            self.trunk.eval()  # frozen: BatchNorm keeps its ImageNet statistics
        return self

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images (B, 3, H, W) -> the trunk's input (B, 3, S, S), ImageNet-normalised."""
        x = (x + 1.0) / 2.0  # [-1, 1] -> [0, 1]
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                              align_corners=False)  # (B, 3, S, S)
        return (x - self.mean) / self.std

    def with_stages(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Images (B, 3, H, W) in [-1, 1] -> (pooled features (B, F), as `forward`; one (B, D_s) tensor
        per stage of the trunk: its output average-pooled to at most STAGE_GRID x STAGE_GRID,
        flattened and L2-normalised), from one pass of the trunk as it is (call it in eval mode to
        score)."""
        x, out = self._prepare(x), []
        for i, layer in enumerate(self.trunk):
            x = layer(x)
            if i in self.stage_ends:
                y = F.adaptive_avg_pool2d(x, STAGE_GRID) if x.shape[-1] > STAGE_GRID else x
                out.append(F.normalize(y.flatten(1), dim=1))
        return x.flatten(1), out

    def forward(self, x: torch.Tensor, *, update_stats: bool = True) -> torch.Tensor:
        """`update_stats=False`: BatchNorm uses (and keeps) its running statistics even in training."""
        x = self._prepare(x)
        if update_stats or not self.trunk.training:
            return self.trunk(x).flatten(1)  # (B, F, 1, 1) -> (B, F)
        self.trunk.eval()
        try:
            return self.trunk(x).flatten(1)
        finally:
            self.trunk.train()


def _latent_head(in_dim: int, hidden: int, latent_dim: int) -> nn.Sequential:
    # The final LayerNorm (no affine) gives every latent zero mean and unit variance, the scale of
    # the N(0, I) codes TransGAN expects; without it z starts tiny and G ignores it.
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, latent_dim),
                         nn.LayerNorm(latent_dim, elementwise_affine=False))


class DualReconstructionModel(nn.Module):
    """x -> z = E1(x) -> x_hat = G(z) -> z_rec = E2(x_hat) (see module doc)."""

    def __init__(self, *, features: ResNetFeatures, generator: nn.Module, latent_dim: int,
                 head_hidden: int = 512):
        super().__init__()
        self.features = features
        self.to_latent = _latent_head(features.out_dim, head_hidden, latent_dim)  # E1 head
        self.generator = generator
        self.to_latent_rec = _latent_head(features.out_dim, head_hidden, latent_dim)  # E2 head

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """E1: images (B, 3, H, W) -> z (B, L). The frozen trunk runs without autograd (x is data)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.features.trainable):
            f = self.features(x)  # (B, F)
        return self.to_latent(f)

    def encode_with_stages(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """E1 and the trunk's stage features (`ResNetFeatures.with_stages`) from one trunk pass:
        images (B, 3, H, W) -> (z (B, L), stages). For scoring (the trunk runs as it is)."""
        f, stages = self.features.with_stages(x)
        return self.to_latent(f), stages

    def encode_reconstruction(self, x_hat: torch.Tensor) -> torch.Tensor:
        """E2: reconstructions (B, 3, H, W) -> z_rec (B, L); gradients reach x_hat through the trunk,
        whose BatchNorm statistics stay those of real images."""
        return self.to_latent_rec(self.features(x_hat, update_stats=False))

    def forward(self, x: torch.Tensor, *, with_stages: bool = False) -> Dict[str, Any]:
        """x (B, 3, H, W) -> {"z": (B, L), "x_hat": (B, 3, H, W), "z_rec": (B, L)}, and "stages" (E1's
        trunk stage features, `encode_with_stages`) with `with_stages`."""
        z, stages = self.encode_with_stages(x) if with_stages else (self.encode(x), None)
        x_hat = self.generator(z)
        out = {"z": z, "x_hat": x_hat, "z_rec": self.encode_reconstruction(x_hat)}
        if with_stages:
            out["stages"] = stages
        return out

    def trainable_parameters(self):
        """Parameters the generator optimizer updates (the trunk only when trainable)."""
        return [p for p in self.parameters() if p.requires_grad]


def build_dual_models(model_cfg: ModelConfig, *, feature_extractor: str = "resnet50",
                      pretrained: bool = True, encoder_input_size: int = 224,
                      finetune_encoder: bool = False, head_hidden: int = 512
                      ) -> Tuple[DualReconstructionModel, TransGANDiscriminator, TransGANDiscriminator]:
    """(model, D_normal, D_anomalous) for `model_cfg` (image_size, latent_dim, TransGAN sizes)."""
    features = ResNetFeatures(arch=feature_extractor, pretrained=pretrained,
                              input_size=encoder_input_size, trainable=finetune_encoder)
    model = DualReconstructionModel(features=features, generator=build_generator(model_cfg),
                                    latent_dim=model_cfg.latent_dim, head_hidden=head_hidden)
    return model, build_discriminator(model_cfg), build_discriminator(model_cfg)


__all__ = ["FEATURE_EXTRACTORS", "STAGE_GRID", "EncoderWeightsError", "load_resnet", "ResNetFeatures",
           "DualReconstructionModel", "build_dual_models"]
