"""Latent mapping: find z* with G(z*) close to an image x, then score x by how badly it is matched.

Shape letters: B images, K restarts per image, Z latent size, C channels, H/W image height/width,
N feature tokens on an (h, w) grid, F feature width, R recorded loss steps.

Three methods (`map_images`):

- "iterative" (AnoGAN, Schlegl et al. 2017): Adam on z alone, G and D frozen, minimising per image
  ``loss(z) = (1 - lambda_) * mean|x - G(z)| + lambda_ * mean|f(x) - f(G(z))|`` where f is the
  discriminator's final patch tokens (``feature="discriminator"``), an ImageNet network's feature
  map (``"perceptual"``) or nothing (``"none"``). Many images are searched at once: the optimised
  objective is the SUM of the per-image losses, so each row of z only receives the gradient of its
  own loss, and Adam works element-wise, so a batch gives the same z* as mapping each image alone
  (up to floating-point rounding, which a long search can amplify: docs/experiments.md).
  Initial codes are drawn per (seed, image content, restart) (`image_keys`, `latent_init`), so
  neither batching nor the other images mapped with it change an image's codes, hence its score.
  With `candidates=N` the restarts start from the best of N prior draws per image, screened by
  the same loss with forward passes only: the landscape has poor local minima (docs/experiments.md).
- "encoder" (f-AnoGAN izi_f, Schlegl et al. 2019): one pass z* = E(x) of a trained `LatentEncoder`.
- "hybrid": the iterative search started from E(x), with far fewer iterations.

The image score is `total_score` = the final loss at z*; `reconstructions` are G(z*) for the z*
kept in the result, so residual heatmaps (`transgan_lib.maps`) match the scores.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from ...config import FEATURE_KINDS, MAPPING_METHODS, MappingConfig  # noqa: F401 (FEATURE_KINDS re-exported)
from ...models.perceptual import PerceptualWeightsError, load_perceptual_net  # noqa: F401 (re-exported)
from ...training.stack import grad_scaler, optimizer_step
from ...utils import autocast, autocast_dtype, progress_bar
from .latent import (  # noqa: F401 (re-exported: the search's building blocks)
    FeatureFn,
    frozen,
    image_keys,
    latent_init,
    make_feature_fn,
    per_image_loss,
)

METHODS = MAPPING_METHODS
DEFAULTS = MappingConfig()  # the search's defaults are MappingConfig's, defined there once
DEFAULT_ITERATIONS = DEFAULTS.iterations  # iterative search from the prior
HYBRID_DIVISOR = 10  # hybrid default: DEFAULT_ITERATIONS // HYBRID_DIVISOR from the encoder's code
DEFAULT_LR = DEFAULTS.lr


# ----------------------------------------------------------------------------- results
@dataclass
class MappingResult:
    """Latent mapping of B images (all tensors on CPU).

    z: (B, Z) the optimised codes z*; reconstructions: (B, C, H, W) = G(z*).
    residual_score: (B,) mean |x - G(z*)|; feature_score: (B,) mean |f(x) - f(G(z*))| (0 for
    feature="none"); total_score: (B,) (1 - lambda_) * residual + lambda_ * feature (the final loss).
    loss_history: (R, B) per-image loss at `history_steps` (step 0 = the initial code, the last row
    = after the last update), of the restart kept. best_restart: (B,) index of the restart kept.
    features_x / features_rec: (B, N, F) tokens of x and G(z*) on `feature_grid` (h, w), for
    `maps.feature_residual_map`; None for feature="none" or keep_features=False.
    defect_maps: (B, H, W) the restorer head's defect probabilities (method "restore" only).
    """
    z: torch.Tensor
    reconstructions: torch.Tensor
    residual_score: torch.Tensor
    feature_score: torch.Tensor
    total_score: torch.Tensor
    loss_history: torch.Tensor
    history_steps: List[int]
    best_restart: torch.Tensor
    seconds_per_image: float
    method: str
    iterations: int
    lambda_: float
    feature: str
    restarts: int = 1
    candidates: int = 0
    features_x: Optional[torch.Tensor] = None
    features_rec: Optional[torch.Tensor] = None
    feature_grid: Optional[Tuple[int, int]] = None
    defect_maps: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return self.z.shape[0]


# ----------------------------------------------------------------------------- iterative search
def _search_batch(G, feature_fn, x, z0, *, iterations, lambda_, lr, record_every, amp_dtype, bar):
    """Adam on z0 (M, Z) against targets x (M, C, H, W) (M = K * b rows).

    Returns (z (M, Z), f_x (M, N, F) fp32 target tokens or None, history: list of (M,) losses
    recorded before updates 0, record_every, ..., steps: those update indices).
    """
    device = x.device
    with torch.no_grad():
        f_x = feature_fn(x) if feature_fn is not None else None  # (M, N, F), fixed target
    z = z0.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr) if iterations > 0 else None
    scaler = grad_scaler(device, amp_dtype)
    history, steps = [], []
    for step in range(iterations):
        with autocast(device, amp_dtype):
            x_hat = G(z)
            f_hat = feature_fn(x_hat) if feature_fn is not None else None
        loss, _, _ = per_image_loss(x, x_hat, f_x, f_hat, lambda_)  # (M,)
        if step % record_every == 0:
            history.append(loss.detach().float())
            steps.append(step)
            if not bar.disable:  # .item() syncs the GPU: only when a bar is shown
                bar.set_postfix(loss=f"{loss.mean().item():.4f}", refresh=False)
        # Sum, not mean: each row of z gets exactly the gradient of its own image's loss.
        optimizer_step(loss.sum(), opt, scaler)
        bar.update(1)
    return z.detach(), f_x, history, steps


def _evaluate(G, feature_fn, x, z, f_x, lambda_):
    """fp32 scores of codes z (M, Z) against x (f_x: fp32 target tokens), so that the
    reconstructions returned are exactly G(z*)."""
    with torch.no_grad():
        x_hat = G(z).float()
        f_hat = feature_fn(x_hat) if feature_fn is not None else None
        loss, residual, feat = per_image_loss(x, x_hat, f_x, f_hat, lambda_)
    return dict(total=loss, residual=residual, feature=feat, x_hat=x_hat, f_x=f_x, f_hat=f_hat)


def _screen(G, feature_fn, x, draws, *, keep, lambda_, amp_dtype):
    """The `keep` best of the prior `draws` (list of (b, Z) CPU codes) per image of x (b, C, H, W),
    by the mapping loss (forward passes only); returns `keep` (b, Z) CPU tensors, best first."""
    device = x.device
    with torch.no_grad():
        f_x = feature_fn(x) if feature_fn is not None else None
        losses = []
        for z in draws:  # one forward of b rows per candidate: memory stays that of the search
            with autocast(device, amp_dtype):
                x_hat = G(z.to(device))
                f_hat = feature_fn(x_hat) if feature_fn is not None else None
            losses.append(per_image_loss(x, x_hat, f_x, f_hat, lambda_)[0].float().cpu())
    order = torch.stack(losses).argsort(dim=0, stable=True)  # (candidates, b), best first
    stacked, cols = torch.stack(draws), torch.arange(x.shape[0])  # (candidates, b, Z)
    return [stacked[order[k], cols] for k in range(keep)]


def _map_batch(G, feature_fn, x, *, keys, z_init, restarts, seed, bar, candidates=0, **search):
    """Search and score one batch of images x (b, C, H, W) with keys (b ints) and z_init (b, Z) or None.

    Returns (kept, steps): kept maps names to the kept restart's tensors on CPU, b rows each
    ("history" is (R, b)); steps are the iterations at which the history was recorded.
    """
    b, device = x.shape[0], x.device
    # 1. initial codes, laid out restart-major: row k * b + i is restart k of image i. The prior
    # restarts are draws k = 0.. of each image (`latent_init`, keyed by the image), or with
    # `candidates` the best of that many draws (screened).
    n_prior = restarts - (z_init is not None)
    draws = [latent_init(keys, G.latent_dim, seed=seed, restart=k)
             for k in range(max(n_prior, candidates) if n_prior else 0)]
    prior = draws if len(draws) == n_prior else _screen(
        G, feature_fn, x, draws, keep=n_prior, lambda_=search["lambda_"], amp_dtype=search["amp_dtype"])
    inits = prior if z_init is None else [z_init.detach().float().cpu()] + prior
    z0 = torch.cat(inits).to(device)  # (K*b, Z)
    xk = x.repeat(restarts, 1, 1, 1)  # (K*b, C, H, W)
    # 2. search, 3. fp32 evaluation of the final codes
    z, f_x, history, steps = _search_batch(G, feature_fn, xk, z0, bar=bar, **search)
    ev = _evaluate(G, feature_fn, xk, z, f_x, search["lambda_"])
    # 4. keep the restart with the lowest final loss, per image
    best = ev["total"].view(restarts, b).argmin(0)  # (b,)
    rows = best * b + torch.arange(b, device=device)  # (b,) indices into the K*b rows
    kept = {"z": z, "history": torch.stack(history + [ev["total"]]).T, **ev}  # history: (K*b, R)
    kept = {k: (v[rows].cpu() if v is not None else None) for k, v in kept.items()}
    kept["history"] = kept["history"].T  # (R, b)
    kept["best"] = best.cpu()
    return kept, steps


def _device_of(G: nn.Module) -> torch.device:
    p = next(G.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _feature_grid(feature: str, D: Optional[nn.Module], modules: List[nn.Module],
                  x: torch.Tensor) -> Optional[Tuple[int, int]]:
    """(h, w) grid of the feature tokens: D.feature_grid, or the perceptual map's size."""
    if feature == "discriminator":
        return tuple(D.feature_grid) if hasattr(D, "feature_grid") else None
    if feature == "perceptual":
        with torch.no_grad():
            return tuple(modules[0](x[:1]).shape[-2:])
    return None


def _check_arguments(G, images, z_init, keys, *, restarts, batch_size, record_every, iterations, candidates):
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if restarts < 1 or batch_size < 1 or record_every < 1 or iterations < 0 or candidates < 0:
        raise ValueError(f"need restarts >= 1, batch_size >= 1, record_every >= 1, iterations >= 0, "
                         f"candidates >= 0; got {restarts}, {batch_size}, {record_every}, {iterations}, "
                         f"{candidates}")
    n = images.shape[0]
    if z_init is not None and tuple(z_init.shape) != (n, G.latent_dim):
        raise ValueError(f"z_init must have shape ({n}, {G.latent_dim}), got {tuple(z_init.shape)}")
    if keys is not None and len(keys) != n:
        raise ValueError(f"keys must hold one key per image ({n}), got {len(keys)}")


def _map_batches(G, feature_fn, images, keys, z_init, *, batch_size, progress, method, **batch_kw):
    """`_map_batch` over consecutive chunks of `batch_size` images (device: G's); returns
    (list of kept dicts, recorded steps)."""
    n, device = images.shape[0], _device_of(G)
    parts, steps = [], []
    total = -(-n // batch_size) * max(batch_kw["iterations"], 1)
    with progress_bar(total=total, desc=f"mapping ({method})", disable=not progress, unit="step") as bar:
        for lo in range(0, n, batch_size):
            x = images[lo:lo + batch_size].to(device=device, dtype=torch.float32)
            kept, steps = _map_batch(G, feature_fn, x, keys=keys[lo:lo + batch_size], bar=bar,
                                     z_init=None if z_init is None else z_init[lo:lo + batch_size], **batch_kw)
            parts.append(kept)
            if batch_kw["iterations"] == 0:
                bar.update(1)
    return parts, steps


def map_to_latent(G: nn.Module, D: Optional[nn.Module], images: torch.Tensor, *,
                  iterations: int = DEFAULT_ITERATIONS, lambda_: float = DEFAULTS.lambda_, lr: float = DEFAULT_LR,
                  restarts: int = DEFAULTS.restarts, candidates: int = DEFAULTS.candidates,
                  z_init: Optional[torch.Tensor] = None, feature: str = DEFAULTS.feature,
                  perceptual_net: Optional[nn.Module] = None, batch_size: int = DEFAULTS.batch_size,
                  seed: int = DEFAULTS.seed,
                  progress: bool = True, record_every: int = 10, amp: str = "off",
                  keep_features: bool = True, method: str = "iterative",
                  keys: Optional[Sequence[int]] = None) -> MappingResult:
    """Iterative latent mapping (AnoGAN) of many images, each with its own code.

    Args:
        G: generator z (M, Z) -> (M, C, H, W) in [-1, 1] with attribute `latent_dim` (pass the
            EMA generator); frozen (eval, no grad) during the call and restored after.
        D: discriminator with `D(x, return_features=True) -> (logits, tokens (M, N, F))` and
            `feature_grid`; frozen likewise, no augmentation. Unused unless feature="discriminator".
        images: (B, C, H, W) in [-1, 1], any device; processed `batch_size` images at a time,
            each with `restarts` codes (so batch_size * restarts rows per step).
        iterations: Adam steps per batch (0 = just evaluate the initial codes).
        lambda_: weight of the feature term (AnoGAN's lambda); lr: Adam step size on z.
        restarts: K initial codes per image; the one with the lowest final loss is kept.
        candidates: screen this many prior draws per image by their loss (forward passes only)
            and start the prior restarts from the best ones; 0 (or <= restarts) = no screening.
            The search's loss landscape has many poor local minima (e.g. the wrong lighting),
            so a good start matters more than more iterations.
        z_init: optional (B, Z) codes for restart 0 (e.g. an encoder's); other restarts and the
            default draw from N(0, I) via `latent_init(keys, seed=seed, restart=k)`.
        feature, perceptual_net: the feature term, see `make_feature_fn`; a perceptual_net is
            moved to G's device.
        seed: base of the per-image initial draws; record_every: loss history stride.
        amp: "off" (fp32), "auto", "bf16", "fp16": autocast of the search on CUDA; final scores and
            reconstructions are always recomputed in fp32.
        keep_features: return the (B, N, F) tokens of x and G(z*).
        method: label stored in the result ("encoder"/"hybrid" when called by `map_images`).
        keys: one int per image for its initial draws; default `image_keys(images)` (its content).
    Returns:
        MappingResult (tensors on CPU).
    """
    _check_arguments(G, images, z_init, keys, restarts=restarts, batch_size=batch_size, record_every=record_every,
                     iterations=iterations, candidates=candidates)
    keys = image_keys(images) if keys is None else [int(k) for k in keys]
    feature_fn, modules = make_feature_fn(D, feature, perceptual_net)
    device = _device_of(G)
    if feature == "perceptual":
        modules[0].to(device)  # in place, like any nn.Module.to
    start = time.perf_counter()
    with frozen(G, *modules):
        parts, steps = _map_batches(G, feature_fn, images, keys, z_init, batch_size=batch_size, progress=progress,
                                    method=method, restarts=restarts, candidates=candidates, seed=seed,
                                    iterations=iterations, lambda_=lambda_, lr=lr, record_every=record_every,
                                    amp_dtype=autocast_dtype(device, amp))
        grid = _feature_grid(feature, D, modules, images[:1].to(device=device, dtype=torch.float32))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / max(images.shape[0], 1)

    def cat(key: str, dim: int = 0) -> Optional[torch.Tensor]:
        return torch.cat([p[key] for p in parts], dim=dim) if parts and parts[0][key] is not None else None

    return MappingResult(
        z=cat("z"), reconstructions=cat("x_hat"), residual_score=cat("residual"), feature_score=cat("feature"),
        total_score=cat("total"), loss_history=cat("history", dim=1), history_steps=steps + [iterations],
        best_restart=cat("best"), seconds_per_image=seconds, method=method, iterations=iterations,
        lambda_=lambda_, feature=feature, restarts=restarts, candidates=candidates,
        features_x=cat("f_x") if keep_features else None, features_rec=cat("f_hat") if keep_features else None,
        feature_grid=grid)


# ----------------------------------------------------------------------------- encoder / hybrid
def encode_images(E: nn.Module, images: torch.Tensor, *, batch_size: int = 64) -> torch.Tensor:
    """z = E(x) in batches, E frozen: images (B, C, H, W) -> codes (B, Z) on CPU."""
    device = _device_of(E)
    with frozen(E), torch.no_grad():
        codes = [E(images[lo:lo + batch_size].to(device=device, dtype=torch.float32)).float().cpu()
                 for lo in range(0, images.shape[0], batch_size)]
    return torch.cat(codes) if codes else torch.zeros(0, E.latent_dim)


def resolve_iterations(method: str, iterations: Optional[int]) -> int:
    """The number of search steps `map_images` runs.

    "encoder": always 0. "iterative": `iterations`, or DEFAULT_ITERATIONS (1000) for None.
    "hybrid": DEFAULT_ITERATIONS // HYBRID_DIVISOR (100) when `iterations` is None or the iterative
    default 1000 (so one `iterations=1000` setting serves every method), else `iterations` as given.
    """
    if method == "encoder":
        return 0
    if method == "hybrid" and iterations in (None, DEFAULT_ITERATIONS):
        return DEFAULT_ITERATIONS // HYBRID_DIVISOR
    return DEFAULT_ITERATIONS if iterations is None else int(iterations)


def map_images(G: nn.Module, D: Optional[nn.Module], images: torch.Tensor, *, method: str = "iterative",
               encoder: Optional[nn.Module] = None, iterations: Optional[int] = None,
               lambda_: float = DEFAULTS.lambda_,
               **kwargs) -> MappingResult:
    """Map images to latent codes with one of `METHODS` and score them.

    - "iterative": `map_to_latent` from prior draws.
    - "encoder": z* = encoder(x), one forward pass, then the same scoring (no search).
    - "hybrid": `map_to_latent` started from encoder(x) (restart 0; extra restarts from the prior).

    Args:
        iterations: see `resolve_iterations`: hybrid turns None or the iterative default 1000 into
            100 (it starts close to the answer); any other number is used as given; "encoder" runs 0.
        kwargs: passed to `map_to_latent` (lr, restarts, feature, batch_size, seed, progress, ...).
    Returns:
        MappingResult; `seconds_per_image` includes the encoder pass for "encoder"/"hybrid".
    """
    if method not in METHODS:
        raise ValueError(f"unknown mapping method {method!r}; choose one of {METHODS}")
    if method == "iterative":
        n_iter = resolve_iterations(method, iterations)
        return map_to_latent(G, D, images, iterations=n_iter, lambda_=lambda_, method=method, **kwargs)
    if encoder is None:
        raise ValueError(f"method={method!r} needs a trained encoder (train_encoder / load_encoder)")
    if kwargs.get("z_init") is not None:
        raise ValueError(f"method={method!r} takes its initial codes from the encoder; do not pass z_init")
    if method == "encoder" and kwargs.get("restarts", 1) != 1:
        raise ValueError("method='encoder' has a single code per image; restarts must be 1")
    n_iter = resolve_iterations(method, iterations)
    start = time.perf_counter()
    z_init = encode_images(encoder, images, batch_size=kwargs.get("batch_size", 32))
    encode_seconds = (time.perf_counter() - start) / max(images.shape[0], 1)
    result = map_to_latent(G, D, images, iterations=n_iter, lambda_=lambda_, z_init=z_init, method=method, **kwargs)
    result.seconds_per_image += encode_seconds
    return result


def map_with_config(G: nn.Module, D: Optional[nn.Module], images: torch.Tensor, config: MappingConfig, *,
                    encoder: Optional[nn.Module] = None, progress: bool = True,
                    perceptual_net: Optional[nn.Module] = None) -> MappingResult:
    """`map_images` with the search settings of `config` (method, iterations, lambda_, feature,
    restarts, candidates, batch_size, seed, lr): how `pipeline.run_mapping` maps the validation and
    test images and `scoring.score_images` new ones. Returns a MappingResult."""
    return map_images(G, D, images, method=config.method, encoder=encoder, iterations=config.iterations,
                      lambda_=config.lambda_, lr=config.lr, restarts=config.restarts, candidates=config.candidates,
                      feature=config.feature, batch_size=config.batch_size, seed=config.seed,
                      perceptual_net=perceptual_net, progress=progress)
