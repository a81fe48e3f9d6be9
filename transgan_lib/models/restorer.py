"""A conditional TransGAN restorer with a segmentation head (DRAEM's two networks, Zavrtanik et al.
ICCV 2021, built from the repository's TransGAN parts).

Shape letters: B batch, N tokens, C channels (token width), h/w token-grid height/width
(`bottom_width`), H/W image height/width, D head width.

Restorer: image (B, 3, H, W) -> patch embedding (a (H/h)-pixel convolution, one token per patch)
-> transformer blocks (the generator's `Block`) -> a (B, h*w, C) token grid. The grid replaces the
TransGAN generator's single z: it is the generator's bottom-stage input (one code per token
instead of one `to_tokens(z)`), and, projected and upsampled, it is added to every later stage's
tokens, so each stage is conditioned on the image where it draws. The generator itself
(`TransGANGenerator.decode`: its stages, pixel-shuffle upsampling, windowed attention, SDPA, tanh
output in [-1, 1]) is imported, not copied. There is no skip connection from the input pixels to the
output: the restoration must come from the codes, so a defect cannot simply be copied through.

Segmentation head: a small convolutional encoder-decoder of its own (two stride-2 levels, one
dilated layer for context, skips at each level) on the input, its restoration and their absolute
difference stacked (9 channels), predicting per-pixel defect logits at full resolution. Why not the
multi-scale ViT discriminator with a per-patch head: its finest tokens are image/16 patches (4x4 px
at 64 px), so its map is a 16x16 grid, too coarse for thin scratches and for pixel AUROC, and a
transformer learns slowly on a CPU; DRAEM's discriminative network is likewise convolutional on
the stacked pair. The difference channel hands the head the residual that reconstruction methods
read directly, so early in training, before the head has learnt texture cues, it can start from
there. `head_input = "input"` (an ablation) gives the head the input alone (segmentation without
restoration).
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig, RestoreConfig
from .transgan import Block, TransGANGenerator, heads_for


def _conv(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=dilation, dilation=dilation),
                         nn.GroupNorm(1, c_out), nn.GELU())


class SegmentationHead(nn.Module):
    """(B, c_in, H, W) -> defect logits (B, H, W); H and W divisible by 4."""

    def __init__(self, *, c_in: int, dim: int):
        super().__init__()
        self.to_full = nn.Sequential(_conv(c_in, dim), _conv(dim, dim))  # (B, D, H, W)
        self.to_half = _conv(dim, 2 * dim, stride=2)  # (B, 2D, H/2, W/2)
        self.to_quarter = nn.Sequential(_conv(2 * dim, 2 * dim, stride=2), _conv(2 * dim, 2 * dim, dilation=2))
        self.up_half = _conv(4 * dim, dim)  # quarter (upsampled) + half
        self.up_full = _conv(2 * dim, dim)  # half (upsampled) + full
        self.to_logits = nn.Conv2d(dim, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        full = self.to_full(x)
        half = self.to_half(full)
        quarter = self.to_quarter(half)
        y = self.up_half(torch.cat([F.interpolate(quarter, scale_factor=2.0, mode="bilinear"), half], 1))
        y = self.up_full(torch.cat([F.interpolate(y, scale_factor=2.0, mode="bilinear"), full], 1))
        return self.to_logits(y)[:, 0]  # (B, H, W)


class Restorer(nn.Module):
    """Conditional TransGAN restorer plus segmentation head (module docstring).

    `forward(x)` -> restoration (B, C, H, W) in [-1, 1]; `forward(x, segment=True)` -> (restoration,
    defect logits (B, H, W)): one pass through every parameter (what training calls, also under DDP).
    """

    def __init__(self, *, image_size: int, channels: int, bottom_width: int, dims: Sequence[int],
                 depths: Sequence[int], heads: int, window_size: int, mlp_ratio: int = 4, enc_depth: int = 2,
                 head_dim: int = 32, head_input: str = "both", attn_impl: str = "sdpa"):
        super().__init__()
        if image_size % bottom_width:
            raise ValueError(f"image_size {image_size} must be a multiple of bottom_width {bottom_width}")
        patch, dim = image_size // bottom_width, dims[0]
        self.grid = (bottom_width, bottom_width)
        self.head_input = head_input
        self.to_patch_embedding = nn.Conv2d(channels, dim, patch, stride=patch)
        self.pos_embed = nn.Parameter(torch.zeros(1, bottom_width ** 2, dim))
        self.encoder = nn.ModuleList(
            Block(dim=dim, heads=heads_for(dim, heads), mlp_ratio=mlp_ratio, attn_impl=attn_impl)
            for _ in range(enc_depth))
        self.norm = nn.LayerNorm(dim)
        self.generator = TransGANGenerator(image_size=image_size, latent_dim=0, bottom_width=bottom_width,
                                           dims=dims, depths=depths, heads=heads, window_size=window_size,
                                           mlp_ratio=mlp_ratio, channels=channels, attn_impl=attn_impl)
        self.to_stage_codes = nn.ModuleList(nn.Linear(dim, d) for d in dims[1:])
        self.head = SegmentationHead(c_in=3 * channels if head_input == "both" else channels, dim=head_dim)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C_img, H, W) -> token grid (B, h*w, C)."""
        tokens = self.to_patch_embedding(x).flatten(2).transpose(1, 2) + self.pos_embed  # (B, N, C)
        for blk in self.encoder:
            tokens = blk(tokens)
        return self.norm(tokens)

    def restore(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> restorations (B, C, H, W) in [-1, 1]."""
        B, (h, w) = x.shape[0], self.grid
        # 1. encode: one code per token of the bottom grid
        codes = self.encode(x)  # (B, h*w, C)
        grid = codes.transpose(1, 2).reshape(B, -1, h, w)  # (B, C, h, w)
        # 2. per-stage codes: the grid upsampled to stage i's resolution, projected to its width
        stage_inputs = [torch.zeros(())]  # stage 0 takes the codes themselves
        for i, to_code in enumerate(self.to_stage_codes, start=1):
            up = F.interpolate(grid, scale_factor=float(2 ** i), mode="nearest")  # (B, C, 2^i h, 2^i w)
            stage_inputs.append(to_code(up.flatten(2).transpose(1, 2)))  # (B, N_i, C_i)
        # 3. the TransGAN generator's stages draw the restoration
        return self.generator.decode(codes, None, stage_inputs)

    def segment(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        """Defect logits (B, H, W) of images x given their restorations x_hat (both (B, C, H, W))."""
        stacked = torch.cat([x, x_hat, (x - x_hat).abs()], 1) if self.head_input == "both" else x
        return self.head(stacked)

    def forward(self, x: torch.Tensor, segment: bool = False, detach: bool = False):
        x_hat = self.restore(x)
        if not segment:
            return x_hat
        return x_hat, self.segment(x, x_hat.detach() if detach else x_hat)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(restorations (B, C, H, W), defect probabilities (B, H, W) in [0, 1]) in one pass."""
        x_hat, logits = self(x, segment=True)
        return x_hat, torch.sigmoid(logits.float())


def build_restorer(cfg: ModelConfig, restore: RestoreConfig) -> Restorer:
    """The restorer of a ModelConfig (the generator's sizes) and a RestoreConfig (encoder, head)."""
    return Restorer(image_size=cfg.image_size, channels=cfg.channels, bottom_width=cfg.bottom_width,
                    dims=cfg.stage_dims(), depths=cfg.stage_depths(), heads=cfg.g_heads,
                    window_size=cfg.window_size, mlp_ratio=cfg.mlp_ratio, enc_depth=restore.enc_depth,
                    head_dim=restore.head_dim, head_input=restore.head_input, attn_impl=cfg.attn_impl)


__all__ = ["Restorer", "SegmentationHead", "build_restorer"]
