"""The restorer: a conditional TransGAN trained to undo synthetic defects on normal images, with a
segmentation head; its models, step and files, run by the shared loop (`training.loop`).

Shape letters: B batch, C channels, H, W image height and width.

Each step (`restore_step`): a batch of normal images x gets synthetic defects
(`data.synthetic.synthetic_defects`, drawn from the epoch's seeded generator, so a resumed run draws
the same ones), giving x~ and masks M (a fraction `p_defect` of the images gets one, the rest stay
normal); the restorer gives x^ = R(x~) and the head's defect logits. Then:

1. the discriminator update (`stack.critic_update`: WGAN-GP or hinge, DiffAugment) judges the
   restorations x^ against the real normals x;
2. every `n_critic`-th step, one update of the restorer and its head on
   l1_weight * |x^ - x| + ssim_weight * (1 - SSIM(x^, x))          (restoration)
   + adv_weight * (-D(x^))                                        (adversarial)
   + seg_weight * focal(logits, M)                                (segmentation)
   followed by the EMA update of the whole restorer (head included).

Files: `restorer.pt` (kind "restorer") and the `restore_`-prefixed history and samples; the sample
grid shows restorations of fixed defective images; each epoch's history row also gets
`validate_restorer`'s figures on held-apart synthetic defects of the validation normals.
"""
from __future__ import annotations

from typing import Dict, Tuple, Union

import torch
from torch import nn

from ...config import ModelConfig, RestoreConfig, TrainConfig
from ...data.synthetic import synthetic_defects
from ...metrics import image_auroc, pixel_auroc
from ...models.restorer import Restorer, build_restorer
from ...models.transgan import TransGANDiscriminator, build_discriminator
from ...runs import run_paths
from ...training.augment import diff_augment
from ...training.losses import focal_loss, g_loss_hinge, g_loss_wgan, ssim_loss
from ...training.stack import critic_update, optimizer_step
from ...training.state import Objective, TrainState, load_checkpoint
from ...utils import PathLike, autocast, batch_images

KIND = "restorer"
SUM_KEYS = ("d_loss", "gp", "d_real", "d_fake", "g_loss", "rest_loss", "adv_loss", "seg_loss")
G_KEYS = ("g_loss", "rest_loss", "adv_loss", "seg_loss")  # averaged over restorer updates
VAL_DEFECT_SEED = 7919  # the validation copies' defects: fixed, so epochs compare


def build_training_models(cfg: TrainConfig) -> Tuple[nn.Module, nn.Module]:
    """(restorer, discriminator), from the global seeded RNG."""
    mc = cfg.model_config()
    return build_restorer(mc, cfg.restore_config()), build_discriminator(mc)


def make_defects(images: torch.Tensor, rc: RestoreConfig, generator: torch.Generator, p_defect: float = None
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Synthetic defects of `images` (B, C, H, W) with the settings of `rc`: (x~, masks (B, H, W))."""
    return synthetic_defects(images, generator=generator, sources=rc.sources.split(","),
                             mask_kinds=rc.mask_kinds.split(","), opacity=(rc.opacity_min, 1.0),
                             p_defect=rc.p_defect if p_defect is None else p_defect)


def restorer_update(st: TrainState, real: torch.Tensor, defective: torch.Tensor, masks: torch.Tensor,
                    generator: torch.Generator, rc: RestoreConfig) -> Dict[str, torch.Tensor]:
    """One update of the restorer and its head (module docstring, 2.), then the EMA update."""
    cfg = st.cfg
    st.D.requires_grad_(False)  # no D gradients needed (and none synced) in this update
    try:
        with autocast(st.device, st.amp_dtype):
            x_hat, logits = st.G_train(defective, segment=True, detach=rc.seg_detach)
            adv = torch.zeros((), device=st.device)
            if rc.adv_weight:
                d_logits = st.D(diff_augment(x_hat, cfg.diffaug, generator)).float()  # (B,)
                adv = g_loss_wgan(d_logits) if cfg.loss == "wgan-gp" else g_loss_hinge(d_logits)
        x_hat, logits = x_hat.float(), logits.float()
        rest = rc.l1_weight * (x_hat - real).abs().mean() + rc.ssim_weight * ssim_loss(x_hat, real)
        seg = focal_loss(logits, masks, rc.focal_gamma)
        loss = rest + rc.adv_weight * adv + rc.seg_weight * seg
        optimizer_step(loss, st.opt_G, st.scaler_G, cfg.grad_clip)
    finally:
        st.D.requires_grad_(True)
    st.ema.update_parameters(st.G)
    return {"g_loss": loss.detach(), "rest_loss": rest.detach(), "adv_loss": adv.detach(),
            "seg_loss": seg.detach()}


def restore_step(st: TrainState, real: torch.Tensor, generator: torch.Generator) -> Dict[str, torch.Tensor]:
    """One step of the restorer objective on normals `real` (B, C, H, W) (module docstring):
    increments `st.step` (and `st.g_step`); returns detached 0-d stats."""
    cfg, rc = st.cfg, st.cfg.restore_config()
    defective, masks = (t.to(st.device) for t in make_defects(real.cpu(), rc, generator))
    with torch.no_grad(), autocast(st.device, st.amp_dtype):
        fake = st.G(defective)  # (B, C, H, W) restorations; plain module: no DDP sync needed
    stats = critic_update(st, diff_augment(real, cfg.diffaug, generator),
                          diff_augment(fake.float(), cfg.diffaug, generator), generator)
    st.step += 1
    if st.step % cfg.n_critic == 0:
        stats.update(restorer_update(st, real, defective, masks, generator, rc))
        st.g_step += 1
    return stats


def fixed_inputs(real_fixed: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """Seeded synthetic defects of the fixed real images (K, C, H, W): the restorer's sample grid
    shows their restorations each epoch (the GAN's shows samples of fixed codes)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    return make_defects(real_fixed, cfg.restore_config(), gen, p_defect=1.0)[0]


@torch.no_grad()
def validate_restorer(restorer: nn.Module, val_images: torch.Tensor, cfg: TrainConfig,
                      batch_size: int = 32) -> Dict[str, float]:
    """What the restorer learnt, on held-apart synthetic defects: the validation normals
    (B, C, H, W) and one defective copy of each (fixed seed). Returns val_l1 (restoration of the
    normals), val_seg_pixel_auroc / val_seg_image_auroc (the head's map, image score its max) and
    val_residual_pixel_auroc / val_residual_image_auroc (the plain residual |x~ - x^|, for
    comparison)."""
    device = next(restorer.parameters()).device
    gen = torch.Generator().manual_seed(VAL_DEFECT_SEED)
    defective, masks = make_defects(val_images, cfg.restore_config(), gen, p_defect=1.0)
    x = torch.cat([val_images, defective])  # (2B, C, H, W)
    outs = [restorer.predict(x[i:i + batch_size].to(device)) for i in range(0, len(x), batch_size)]
    x_hat = torch.cat([o[0] for o in outs]).float().cpu()
    seg = torch.cat([o[1] for o in outs]).cpu()  # (2B, H, W)
    resid = (x - x_hat).abs().mean(1)  # (2B, H, W)
    all_masks = torch.cat([torch.zeros_like(masks), masks])
    labels = torch.cat([torch.zeros(len(val_images)), torch.ones(len(val_images))])
    n = len(val_images)
    return {"val_l1": float((x_hat[:n] - val_images).abs().mean()),
            "val_seg_pixel_auroc": pixel_auroc(all_masks, seg),
            "val_seg_image_auroc": image_auroc(labels, seg.flatten(1).amax(1)),
            "val_residual_pixel_auroc": pixel_auroc(all_masks, resid),
            "val_residual_image_auroc": image_auroc(labels, resid.flatten(1).amax(1))}


def val_images(val_set) -> torch.Tensor:
    """The images (B, C, H, W) of a validation dataset."""
    return torch.stack([batch_images(val_set[i]) for i in range(len(val_set))])


def _validate(restorer: nn.Module, val_set, cfg: TrainConfig) -> Dict[str, float]:
    return validate_restorer(restorer, val_images(val_set), cfg)


OBJECTIVE = Objective(kind=KIND, build_models=build_training_models, step=restore_step, sum_keys=SUM_KEYS,
                      g_keys=G_KEYS, paths=lambda cfg: run_paths(cfg.output_dir, cfg.category, "restore"),
                      checkpoint=lambda paths: paths.training_file("restore"), fixed_inputs=fixed_inputs,
                      validate=_validate)


def load_restorer(path: PathLike, device: Union[str, torch.device] = "cpu"
                  ) -> Tuple[Restorer, TransGANDiscriminator, ModelConfig, TrainConfig]:
    """(EMA restorer, discriminator, ModelConfig, TrainConfig) from a restorer checkpoint
    (`restorer.pt`), both models in eval mode on `device`."""
    ckpt = load_checkpoint(path, kind=KIND)
    mc, tc = ModelConfig.from_dict(ckpt["model_config"]), TrainConfig.from_dict(ckpt["config"])
    R, D = build_restorer(mc, tc.restore_config()), build_discriminator(mc)
    R.load_state_dict(ckpt["G_ema"])
    D.load_state_dict(ckpt["D"])
    return R.to(device).eval(), D.to(device).eval(), mc, tc


__all__ = ["KIND", "SUM_KEYS", "G_KEYS", "OBJECTIVE", "build_training_models", "make_defects",
           "restorer_update", "restore_step", "fixed_inputs", "validate_restorer", "val_images", "load_restorer"]
