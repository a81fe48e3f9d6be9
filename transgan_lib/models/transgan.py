"""TransGAN generator and discriminator (Jiang, Chang, Wang, NeurIPS 2021), written from the paper.

Shape letters: B batch, N tokens, C channels (token width), h/w token-grid height/width,
H/W image height/width, nh attention heads, hs head size, nW windows, ws window side.

Generator: z -> Linear -> (bottom_width^2 tokens) -> stages of pre-LN transformer blocks, pixel
shuffle x2 between stages (width / 4, as in the paper, then a projection when a preset keeps a
minimum width) -> 1x1 conv to RGB -> (optional, `global_affine`: per-channel scale and shift
computed from z, our addition) -> tanh. Stages larger than 2*window_size per side use windowed
self-attention so a 64x64 (4096-token) stage stays affordable.

Discriminator: multi-scale ViT. Fine patches (image/16) pass the first blocks; they are pooled 2x2
and concatenated with coarse patch embeddings (2x the patch size), then the class token joins,
more blocks, LayerNorm and a linear head. `forward(x, return_features=True)` also returns the
final patch tokens, used by the latent mapping's feature loss (no forward hooks).
"""
from __future__ import annotations

import contextlib
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig


def math_attention() -> contextlib.AbstractContextManager:
    """Force the plain (math) SDPA backend: the fused kernels have no double backward, which the
    WGAN-GP penalty needs."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel([SDPBackend.MATH])


class Attention(nn.Module):
    def __init__(self, *, dim: int, heads: int, attn_impl: str = "sdpa"):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} not divisible by heads {heads}")
        self.heads = heads
        self.attn_impl = attn_impl
        self.to_qkv = nn.Linear(dim, 3 * dim)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.to_qkv(x).reshape(B, N, 3, self.heads, C // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, nh, N, hs)
        if self.attn_impl == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v)
        else:  # plain matmul-softmax, kept for benchmarks and as a reference
            attn = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)  # (B, nh, N, N)
            out = attn.softmax(dim=-1) @ v
        out = out.transpose(1, 2).reshape(B, N, C)  # (B, N, C)
        return self.to_out(out)


def window_partition(x: torch.Tensor, hw: Tuple[int, int], ws: int) -> torch.Tensor:
    """(B, h*w, C) -> (B*nW, ws*ws, C)."""
    B, _, C = x.shape
    h, w = hw
    x = x.view(B, h // ws, ws, w // ws, ws, C).permute(0, 1, 3, 2, 4, 5)  # (B, h/ws, w/ws, ws, ws, C)
    return x.reshape(-1, ws * ws, C)


def window_merge(x: torch.Tensor, hw: Tuple[int, int], ws: int) -> torch.Tensor:
    """(B*nW, ws*ws, C) -> (B, h*w, C)."""
    h, w = hw
    C = x.shape[-1]
    x = x.view(-1, h // ws, w // ws, ws, ws, C).permute(0, 1, 3, 2, 4, 5)  # (B, h/ws, ws, w/ws, ws, C)
    return x.reshape(-1, h * w, C)


class Block(nn.Module):
    """Pre-LN transformer block; windowed attention when `window_size` is set."""

    def __init__(self, *, dim: int, heads: int, mlp_ratio: int = 4, window_size: int = 0,
                 attn_impl: str = "sdpa"):
        super().__init__()
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim=dim, heads=heads, attn_impl=attn_impl)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor, hw: Tuple[int, int] = None) -> torch.Tensor:
        y = self.norm1(x)
        if self.window_size:
            y = window_merge(self.attn(window_partition(y, hw, self.window_size)), hw, self.window_size)
        else:
            y = self.attn(y)
        x = x + y
        return x + self.mlp(self.norm2(x))


def heads_for(dim: int, heads: int) -> int:
    h = max(1, min(heads, dim // 16))
    while dim % h:
        h -= 1
    return h


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, (nn.Linear, nn.Conv2d)):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class TransGANGenerator(nn.Module):
    def __init__(self, *, image_size: int, latent_dim: int, bottom_width: int, dims: Sequence[int],
                 depths: Sequence[int], heads: int, window_size: int, mlp_ratio: int = 4,
                 channels: int = 3, attn_impl: str = "sdpa", global_affine: bool = False):
        super().__init__()
        self.latent_dim = latent_dim
        self.bottom_width = bottom_width
        self.image_size = image_size
        self.dims = tuple(dims)
        # latent_dim 0: no z input; `decode` takes the bottom tokens (the restorer's per-token codes)
        self.to_tokens = nn.Linear(latent_dim, bottom_width ** 2 * dims[0]) if latent_dim else None
        self.pos_embeds = nn.ParameterList()
        self.stages = nn.ModuleList()
        self.to_next = nn.ModuleList()  # after pixel shuffle: width/4 -> next stage width
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            res = bottom_width * 2 ** i
            ws = window_size if res > 2 * window_size else 0
            self.pos_embeds.append(nn.Parameter(torch.zeros(1, res * res, dim)))
            self.stages.append(nn.ModuleList(
                Block(dim=dim, heads=heads_for(dim, heads), mlp_ratio=mlp_ratio, window_size=ws,
                      attn_impl=attn_impl) for _ in range(depth)))
            if i + 1 < len(dims):
                self.to_next.append(nn.Identity() if dim // 4 == dims[i + 1] else nn.Linear(dim // 4, dims[i + 1]))
        self.to_rgb = nn.Conv2d(dims[-1], channels, kernel_size=1)
        self.to_affine = nn.Linear(latent_dim, 2 * channels) if global_affine else None
        self.apply(_init_weights)
        for p in self.pos_embeds:
            nn.init.trunc_normal_(p, std=0.02)
        if self.to_affine is not None:  # identity at the start
            nn.init.zeros_(self.to_affine.weight)
            nn.init.zeros_(self.to_affine.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, latent_dim) -> images (B, channels, H, W) in [-1, 1]."""
        B, res = z.shape[0], self.bottom_width
        return self.decode(self.to_tokens(z).view(B, res * res, self.dims[0]), z)  # tokens (B, N, C)

    def decode(self, x: torch.Tensor, z: torch.Tensor = None, stage_inputs: Sequence[torch.Tensor] = ()
               ) -> torch.Tensor:
        """Bottom tokens x (B, bottom_width^2, dims[0]) -> images (B, channels, H, W) in [-1, 1].
        `z` feeds `global_affine`; `stage_inputs[i]` (B, N_i, dims[i]), when given, is added to
        stage i's tokens with its position embedding (a conditional generator's per-stage codes)."""
        B = x.shape[0]
        res = self.bottom_width
        for i, blocks in enumerate(self.stages):
            x = x + self.pos_embeds[i]
            if i < len(stage_inputs):
                x = x + stage_inputs[i]
            for blk in blocks:
                x = blk(x, (res, res))
            if i + 1 < len(self.stages):
                C = x.shape[-1]
                x = x.transpose(1, 2).reshape(B, C, res, res)  # (B, C, h, w)
                x = F.pixel_shuffle(x, 2)  # (B, C/4, 2h, 2w)
                res *= 2
                x = x.flatten(2).transpose(1, 2)  # (B, N*4, C/4)
                x = self.to_next[i](x)
        x = x.transpose(1, 2).reshape(B, -1, res, res)  # (B, C, H, W)
        rgb = self.to_rgb(x)  # (B, channels, H, W)
        if self.to_affine is not None:  # per-image, per-channel output scale and shift from z
            scale, shift = self.to_affine(z).view(B, 2, -1, 1, 1).unbind(1)  # each (B, channels, 1, 1)
            rgb = rgb * (1 + scale) + shift
        return torch.tanh(rgb)


class TransGANDiscriminator(nn.Module):
    def __init__(self, *, image_size: int, channels: int, patch_size: int, dim: int, depth: int,
                 heads: int, mlp_ratio: int = 4, attn_impl: str = "sdpa"):
        super().__init__()
        half = dim // 2
        self.fine_hw = (image_size // patch_size,) * 2
        self.feature_grid = (image_size // (2 * patch_size),) * 2
        self.to_patch_fine = nn.Conv2d(channels, half, patch_size, stride=patch_size)
        self.to_patch_coarse = nn.Conv2d(channels, half, 2 * patch_size, stride=2 * patch_size)
        self.pos_fine = nn.Parameter(torch.zeros(1, self.fine_hw[0] * self.fine_hw[1], half))
        n_coarse = self.feature_grid[0] * self.feature_grid[1]
        self.pos_coarse = nn.Parameter(torch.zeros(1, n_coarse + 1, dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        n_fine = max(1, depth // 2)
        self.fine_blocks = nn.ModuleList(
            Block(dim=half, heads=heads_for(half, heads), mlp_ratio=mlp_ratio, attn_impl=attn_impl)
            for _ in range(n_fine))
        self.coarse_blocks = nn.ModuleList(
            Block(dim=dim, heads=heads_for(dim, heads), mlp_ratio=mlp_ratio, attn_impl=attn_impl)
            for _ in range(max(1, depth - n_fine)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 1)
        self.apply(_init_weights)
        for p in (self.pos_fine, self.pos_coarse, self.cls_token):
            nn.init.trunc_normal_(p, std=0.02)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        """x (B, C, H, W) -> logits (B,); with return_features also tokens (B, h*w, dim) on the
        `feature_grid` (h, w), after the final LayerNorm."""
        B = x.shape[0]
        fine = self.to_patch_fine(x).flatten(2).transpose(1, 2) + self.pos_fine  # (B, Nf, C/2)
        for blk in self.fine_blocks:
            fine = blk(fine)
        h, w = self.fine_hw
        fine = fine.transpose(1, 2).reshape(B, -1, h, w)  # (B, C/2, h, w)
        fine = F.avg_pool2d(fine, 2).flatten(2).transpose(1, 2)  # (B, Nc, C/2)
        coarse = self.to_patch_coarse(x).flatten(2).transpose(1, 2)  # (B, Nc, C/2)
        tokens = torch.cat([fine, coarse], dim=-1)  # (B, Nc, C)
        tokens = torch.cat([self.cls_token.expand(B, -1, -1), tokens], dim=1) + self.pos_coarse  # (B, 1+Nc, C)
        for blk in self.coarse_blocks:
            tokens = blk(tokens)
        tokens = self.norm(tokens)
        logits = self.head(tokens[:, 0]).squeeze(-1)  # (B,)
        if return_features:
            return logits, tokens[:, 1:]
        return logits


def build_generator(cfg: ModelConfig) -> TransGANGenerator:
    return TransGANGenerator(image_size=cfg.image_size, latent_dim=cfg.latent_dim,
                             bottom_width=cfg.bottom_width, dims=cfg.stage_dims(),
                             depths=cfg.stage_depths(), heads=cfg.g_heads, window_size=cfg.window_size,
                             mlp_ratio=cfg.mlp_ratio, channels=cfg.channels, attn_impl=cfg.attn_impl,
                             global_affine=cfg.global_affine)


def build_discriminator(cfg: ModelConfig) -> TransGANDiscriminator:
    return TransGANDiscriminator(image_size=cfg.image_size, channels=cfg.channels,
                                 patch_size=cfg.d_patch_size, dim=cfg.d_dim, depth=cfg.d_depth,
                                 heads=cfg.d_heads, mlp_ratio=cfg.mlp_ratio, attn_impl=cfg.attn_impl)


def build_models(cfg: ModelConfig) -> Tuple[TransGANGenerator, TransGANDiscriminator]:
    return build_generator(cfg), build_discriminator(cfg)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
