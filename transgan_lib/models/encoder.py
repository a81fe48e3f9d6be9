"""Image -> latent encoder for f-AnoGAN style mapping (Schlegl et al. 2019, izi_f).

Shape letters: B batch, C channels, H/W image height/width, h/w feature-map height/width,
Z latent size (`latent_dim`).

A plain convolutional encoder: a stem conv, then one stage per 2x downsampling (the first conv of
a stage has stride 2, `depth - 1` more 3x3 convs keep the size) down to a 4x4 map, then a linear
head to z. GroupNorm (not BatchNorm) keeps every image's code independent of its batch. The head
has no tanh: TransGAN's prior is N(0, I), so codes must be free to leave [-1, 1].
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

import torch
from torch import nn

# dim: width of the stem; max_dim: cap on the width as stages double it; depth: convs per stage.
ENCODER_PRESETS: Dict[str, Dict[str, int]] = {
    "tiny": dict(dim=16, max_dim=128, depth=1),
    "small": dict(dim=32, max_dim=256, depth=2),
    "base": dict(dim=64, max_dim=512, depth=2),
}
FINAL_RESOLUTION = 4


def _conv_block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1),
        nn.GroupNorm(math.gcd(8, c_out), c_out),
        nn.LeakyReLU(0.2),
    )


class LatentEncoder(nn.Module):
    """Encoder E: images (B, C, H, W) in [-1, 1] -> latent codes (B, Z).

    Args (keyword-only):
        image_size: side of the square input; a power of two times 4 (16, 32, 64, ...).
        latent_dim: Z, the generator's latent size.
        channels: image channels.
        model_size: preset in `ENCODER_PRESETS` ("tiny", "small", "base") for the None fields.
        dim, max_dim, depth: stem width, width cap, convs per downsampling stage.
    """

    def __init__(self, *, image_size: int, latent_dim: int, channels: int = 3, model_size: str = "tiny",
                 dim: Optional[int] = None, max_dim: Optional[int] = None, depth: Optional[int] = None):
        super().__init__()
        if model_size not in ENCODER_PRESETS:
            raise ValueError(f"model_size must be one of {list(ENCODER_PRESETS)}, got {model_size!r}")
        n_down = image_size // FINAL_RESOLUTION
        if image_size % FINAL_RESOLUTION or n_down < 1 or n_down & (n_down - 1):
            raise ValueError(f"image_size {image_size} must be {FINAL_RESOLUTION} times a power of two "
                             "(e.g. 16, 32, 64, 128)")
        preset = ENCODER_PRESETS[model_size]
        dim = preset["dim"] if dim is None else dim
        max_dim = preset["max_dim"] if max_dim is None else max_dim
        depth = preset["depth"] if depth is None else depth
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.image_size, self.latent_dim, self.channels = image_size, latent_dim, channels
        self._config = dict(image_size=image_size, latent_dim=latent_dim, channels=channels,
                            model_size=model_size, dim=dim, max_dim=max_dim, depth=depth)

        self.to_stem = _conv_block(channels, dim, stride=1)
        stages, c = [], dim
        for i in range(n_down.bit_length() - 1):  # log2(image_size / 4) stages
            c_out = min(dim * 2 ** (i + 1), max_dim)
            layers = [_conv_block(c, c_out, stride=2)]
            layers += [_conv_block(c_out, c_out, stride=1) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*layers))
            c = c_out
        self.downsample = nn.Sequential(*stages)
        self.to_latent = nn.Linear(c * FINAL_RESOLUTION ** 2, latent_dim)

    def config(self) -> Dict[str, Any]:
        """Constructor kwargs, saved in checkpoints (`LatentEncoder(**config)` rebuilds it)."""
        return dict(self._config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> z (B, Z)."""
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"LatentEncoder built for {self.image_size}x{self.image_size} images, "
                             f"got shape {tuple(x.shape)}")
        h = self.downsample(self.to_stem(x))  # (B, C', 4, 4)
        return self.to_latent(h.flatten(1))  # (B, C'*16) -> (B, Z)
