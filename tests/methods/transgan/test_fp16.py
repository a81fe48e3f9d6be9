"""The fp16 path a Colab T4 takes (no bf16, so amp="auto" picks fp16), run on the CPU: fp16 autocast and the
GradScaler in every loop -- the GAN and restorer objectives of the one training loop, the CIFAR loop, the
f-AnoGAN encoder's training, and the AnoGAN search that scores.

The `t4` fixture gives each loop the library's own amp decision for a CUDA device without bf16
(`utils.autocast_dtype` with `torch.cuda.is_bf16_supported` mocked False); on the CPU, autocast_dtype
otherwise always answers fp32. CPU autocast runs the matmuls, convolutions and attention in fp16 as CUDA's
does; its op lists differ in places (GroupNorm, for one, stays in fp16 on the CPU where CUDA promotes it to
fp32). Every op the loops use runs in fp16 on the CPU, so nothing is skipped or worked around.
The encoder and the search autocast only when asked (`amp="auto"`; the pipeline runs them in fp32).

Three properties, each per loop:
1. a few steps train: finite losses, every optimiser's parameters move and stay finite, scalers on;
2. the GradScaler is in the path: at an absurd loss scale the fp16 backward overflows, and the step is
   skipped (weights bit-identical) and the scale lowered, as on a T4's first steps (at 2**16 the critic's
   first step overflows here too);
3. clipping sees unscaled gradients: with a tiny clip norm, the gradients the optimiser used have that norm,
   not the norm divided by the loss scale.
"""
from dataclasses import dataclass
from typing import Callable, Dict, List

import pytest
import torch

from transgan_lib import utils
from transgan_lib.cifar import train as cifar_train
from transgan_lib.cifar.config import CifarConfig
from transgan_lib.config import TrainConfig
from transgan_lib.methods.transgan import encoder as encoder_training
from transgan_lib.methods.transgan import mapping
from transgan_lib.training import stack
from transgan_lib import methods
from transgan_lib.training import state as train_state
from transgan_lib.models.encoder import LatentEncoder
from transgan_lib.models.transgan import build_models

CPU = torch.device("cpu")
LOOPS = ("gan", "restore", "cifar", "encoder", "search")
CLIPPED = ("gan", "restore", "cifar")  # the loops that clip gradients (grad_clip > 0)
# 16 px, narrow: each step takes ~0.1 s on one CPU thread
MODEL = dict(g_dim=64, d_dim=32, g_min_dim=16)
RESTORE = dict(head_dim=8, enc_depth=1)
# a frozen trunk, as with the notebook's ImageNet weights (a trained one's fp16 conv backward is slow on a CPU)
CIFAR = dict(image_size=16, model_size="tiny", latent_dim=16, model=MODEL, pretrained=False,
             feature_extractor="convnet", finetune_encoder=False, encoder_input_size=16, head_hidden=16, patch_size=4,
             patch_top_k=1, device="cpu", progress=False)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def t4(monkeypatch):
    """Every loop decides amp as on a CUDA device without bf16."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)

    def as_t4(device, amp="auto"):
        return utils.autocast_dtype(torch.device("cuda"), amp)

    for module in (train_state, cifar_train, encoder_training, mapping):
        monkeypatch.setattr(module, "autocast_dtype", as_t4)


@dataclass
class Loop:
    """One loop set up as a T4 runs it."""
    step: Callable[[], Dict[str, torch.Tensor]]  # one step (encoder: an epoch of one batch); its losses
    trained: Dict[str, List[torch.Tensor]]  # the tensors each optimiser updates
    scalers: List[torch.amp.GradScaler]  # filled by the first step for the encoder and the search


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _scaler_factory(monkeypatch, module, init_scale):
    """Make `module` build its scalers with the library's `grad_scaler` (at `init_scale` if given) and
    keep them in the returned list."""
    made = []

    def build(device, amp_dtype):
        scaler = stack.grad_scaler(device, amp_dtype)
        if init_scale is not None:
            scaler = torch.amp.GradScaler(device.type, init_scale=init_scale, enabled=scaler.is_enabled())
        made.append(scaler)
        return scaler

    monkeypatch.setattr(module, "grad_scaler", build)
    return made


def make_loop(name: str, monkeypatch, *, init_scale=None, grad_clip=None) -> Loop:
    torch.manual_seed(0)
    clip = {} if grad_clip is None else {"grad_clip": grad_clip}
    if name in ("gan", "restore"):
        cfg = TrainConfig(image_size=16, model_size="tiny", latent_dim=16, batch_size=4, objective=name, device="cpu",
                          model=MODEL, restore=RESTORE, **clip)
        st = methods.create_state(cfg, CPU)
        assert st.amp_dtype is torch.float16
        if init_scale is not None:
            st.scaler_D, st.scaler_G = (torch.amp.GradScaler("cpu", init_scale=init_scale) for _ in range(2))
        real, gen = _images(4), torch.Generator().manual_seed(0)
        return Loop(lambda: methods.objective(cfg.objective).step(st, real, gen),
                    {"D": list(st.D.parameters()), "G": list(st.G.parameters())}, [st.scaler_D, st.scaler_G])
    if name == "cifar":
        cfg = CifarConfig(**CIFAR, **clip)
        models = cifar_train.build_cifar_models(cfg)
        opts = cifar_train.build_optimizers(models, cfg)
        amp_dtype = cifar_train.autocast_dtype(CPU, cfg.amp)  # as `train_cifar` decides
        assert amp_dtype is torch.float16
        scaler = stack.grad_scaler(CPU, amp_dtype)
        if init_scale is not None:
            scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
        x_n, x_a = _images(4), _images(2, seed=1)
        return Loop(lambda: cifar_train.train_step(models, opts, x_n, x_a, cfg, amp_dtype=amp_dtype, scaler=scaler),
                    {k: [p for g in o.param_groups for p in g["params"]] for k, o in opts._asdict().items()},
                    [scaler])
    G, D = build_models(TrainConfig(image_size=16, model_size="tiny", latent_dim=16, model=MODEL).model_config())
    x = _images(4)
    if name == "encoder":
        E = LatentEncoder(image_size=16, latent_dim=16, model_size="tiny")
        scalers = _scaler_factory(monkeypatch, encoder_training, init_scale)

        def step():
            history = encoder_training.train_encoder(G, D, x, epochs=1, batch_size=4, encoder=E, progress=False,
                                                     amp="auto")[1]
            return {"train_loss": torch.tensor(history["train_loss"][-1])}
        return Loop(step, {"E": list(E.parameters())}, scalers)
    # the search: its codes are what it trains; one "step" maps the batch with one more iteration each time
    scalers = _scaler_factory(monkeypatch, mapping, init_scale)
    z = [mapping.latent_init(mapping.image_keys(x), 16, seed=0)]
    calls = []

    def search():
        calls.append(1)
        result = mapping.map_to_latent(G, D, x, iterations=len(calls), amp="auto", progress=False, batch_size=4)
        z[0] = result.z
        assert torch.equal(result.reconstructions, G.eval()(result.z)) and result.reconstructions.dtype == torch.float32
        return {"total_score": result.total_score, "loss_history": result.loss_history}
    return Loop(search, {"z": z}, scalers)


def _snapshot(loop: Loop) -> Dict[str, List[torch.Tensor]]:
    return {k: [t.detach().clone() for t in ts] for k, ts in loop.trained.items()}


@pytest.mark.parametrize("name", LOOPS)
def test_fp16_steps_train(name, t4, monkeypatch):
    """A few steps under the T4's settings: finite losses; every optimiser's parameters move, stay finite."""
    loop = make_loop(name, monkeypatch)
    before = _snapshot(loop)
    for _ in range(3):
        losses = loop.step()
        assert all(torch.isfinite(v).all() for v in losses.values()), losses
    assert loop.scalers and all(s.is_enabled() and 0 < s.get_scale() <= 2.0 ** 16 for s in loop.scalers)
    for key, tensors in loop.trained.items():
        assert all(torch.isfinite(t).all() for t in tensors), key
        moved = [not torch.equal(a, b) for a, b in zip(before[key], tensors)]
        assert sum(moved) >= 0.9 * len(moved), f"{key}: {sum(moved)} of {len(moved)} tensors moved"


@pytest.mark.parametrize("name", LOOPS)
def test_fp16_overflow_skips_the_step_and_lowers_the_scale(name, t4, monkeypatch):
    """At a loss scale of 2**40 the scaled fp16 backward overflows: the GradScaler skips every update
    (weights bit-identical, finite) and halves the scale once per skipped update."""
    loop = make_loop(name, monkeypatch, init_scale=2.0 ** 40)
    before = _snapshot(loop)
    losses = loop.step()
    assert all(torch.isfinite(v).all() for v in losses.values())
    for key, tensors in loop.trained.items():
        assert all(torch.equal(a, b) for a, b in zip(before[key], tensors)), f"{key} was updated"
    assert all(s.get_scale() < 2.0 ** 40 for s in loop.scalers)
    if name == "cifar":  # one scaler for the three updates of a step: each skipped, each halving it
        assert loop.scalers[0].get_scale() == 2.0 ** 37


@pytest.mark.parametrize("name", CLIPPED)
def test_fp16_clips_unscaled_gradients(name, t4, monkeypatch):
    """Loss scale 2**8, clip norm 1e-4 (far below any gradient here): after a step each optimiser's
    gradients -- unscaled, then clipped, then used -- have norm 1e-4, not 1e-4 / 256."""
    clip = 1e-4
    loop = make_loop(name, monkeypatch, init_scale=2.0 ** 8, grad_clip=clip)
    loop.step()
    assert all(s.get_scale() == 2.0 ** 8 for s in loop.scalers)  # no update was skipped
    for key, tensors in loop.trained.items():
        grads = [t.grad for t in tensors if t.grad is not None]
        assert grads, key
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        assert norm.item() == pytest.approx(clip, rel=1e-3), key


def test_auto_amp_picks_fp16_without_bf16(monkeypatch):
    """amp="auto" on CUDA: bf16 where supported, else fp16 (a T4); fp32 on the CPU. The scaler is on for fp16 only."""
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert utils.autocast_dtype(cuda, "auto") is torch.float16
    assert utils.autocast_dtype(cuda, "bf16") is torch.bfloat16  # asked for by name
    assert utils.autocast_dtype(cuda, "off") is None and utils.autocast_dtype(CPU, "auto") is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert utils.autocast_dtype(cuda, "auto") is torch.bfloat16
    assert stack.grad_scaler(CPU, torch.float16).is_enabled()
    assert not stack.grad_scaler(CPU, torch.bfloat16).is_enabled() and not stack.grad_scaler(CPU, None).is_enabled()
