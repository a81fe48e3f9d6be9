"""How `cifar.train.train_step` wires the six generator losses (the loss functions themselves are
checked by hand in test_losses.py).

Probe: optimizers with lr 0 (nothing moves) and grad_clip 0 leave the gradient of the step's
weighted generator loss in every parameter's `.grad`, and a forward hook on the generator keeps
the gradient at the reconstructions x_hat (B, 3, H, W). Running the step with the configured
weights and again with one weight set to 0 gives, by difference, the gradient that term alone
contributes to the step (`term_gradients`).
"""
import dataclasses

import pytest
import torch

from transgan_lib.cifar import losses as L
from transgan_lib.cifar.config import LOSS_NAMES, CifarConfig
from transgan_lib.cifar.train import CifarModels, CifarOptimizers, build_cifar_models, train_step

# A tiny model (16 px, TransGAN "tiny", random ResNet18 at 32 px, frozen: a trainable trunk's BatchNorm
# statistics would move between the two steps compared), six distinct non-zero weights, no gradient
# clipping (it would rescale the gradients compared), top-1 of the 16 4x4 patches.
CFG = CifarConfig(image_size=16, model_size="tiny", latent_dim=32, pretrained=False, feature_extractor="resnet18",
                  finetune_encoder=False, encoder_input_size=32, head_hidden=64, patch_size=4, patch_top_k=1,
                  grad_clip=0.0, device="cpu", progress=False, w_l1=2.0, w_patch=3.0, w_latent=0.5,
                  w_adv_normal=1.5, w_adv_anomalous=0.75, w_abc=1.25)
BN, BA = 4, 2  # normals, labelled anomalies


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.rand(BN, 3, 16, 16, generator=g) * 2 - 1, torch.rand(BA, 3, 16, 16, generator=g) * 2 - 1


def tiny_models(seed=0):
    torch.manual_seed(seed)
    models = build_cifar_models(CFG)
    for m in models:
        m.train()
    return models


@pytest.fixture(scope="module")
def models():
    return tiny_models()


def step_gradients(models, cfg, x_n, x_a):
    """Run `train_step` with lr-0 SGD: ({name: grad} of the model's trainable parameters, the
    gradient at x_hat (B, 3, H, W), the step's returned losses)."""
    model = models.model
    opts = CifarOptimizers(torch.optim.SGD(model.trainable_parameters(), lr=0.0),
                           torch.optim.SGD(models.d_normal.parameters(), lr=0.0),
                           torch.optim.SGD(models.d_anomalous.parameters(), lr=0.0))
    seen = {}

    def keep_grad(module, inputs, output):
        if output.requires_grad:
            output.register_hook(lambda grad: seen.__setitem__("x_hat", grad))

    handle = model.generator.register_forward_hook(keep_grad)
    try:
        out = train_step(models, opts, x_n, x_a, cfg)
    finally:
        handle.remove()
    grads = {n: torch.zeros_like(p) if p.grad is None else p.grad.clone()
             for n, p in model.named_parameters() if p.requires_grad}
    return grads, seen.get("x_hat", torch.zeros(x_n.shape[0] + x_a.shape[0], *x_n.shape[1:])), out


def term_gradients(models, name, x_n, x_a, cfg=CFG):
    """What term `name` contributes to the step, per unit weight: (param grads, x_hat grad), from
    the step with cfg's weights minus the step with w_<name> = 0, divided by w_<name>; then the
    step's returned losses and the largest |gradient| of the whole step (a scale for tolerances)."""
    w = getattr(cfg, f"w_{name}")
    full, full_x, out = step_gradients(models, cfg, x_n, x_a)
    without, without_x, _ = step_gradients(models, dataclasses.replace(cfg, **{f"w_{name}": 0.0}), x_n, x_a)
    scale = flat(full).abs().max().item()
    return {k: (full[k] - without[k]) / w for k in full}, (full_x - without_x) / w, out, scale


def reference_losses(models, x_n, x_a, cfg=CFG):
    """The six generator losses as `cifar.losses` defines them, from the hand-checked functions:
    normals' reconstructions for l1, patch, latent (target E1(x) detached) and adv_normal (D_normal),
    the labelled anomalies' for adv_anomalous (D_anomalous), and ABC with only those as anomalies."""
    model, d_n, d_a = models
    x = torch.cat([x_n, x_a])  # (B, 3, H, W)
    z = model.encode(x)  # (B, L)
    x_hat = model.generator(z)  # (B, 3, H, W)
    xh_n, xh_a = x_hat[:BN], x_hat[BN:]
    return {
        "l1": L.l1_loss(x_n, xh_n),
        "patch": L.patch_loss(x_n, xh_n, cfg.patch_size, cfg.patch_top_k),
        "latent": L.latent_loss(z[:BN].detach(), model.encode_reconstruction(xh_n)),
        "adv_normal": L.adversarial_normal_loss(d_n(xh_n), cfg.d_loss),
        "adv_anomalous": L.adversarial_anomalous_loss(d_a(xh_a), cfg.d_loss),
        "abc": L.abc_loss(L.per_image_mse(x, x_hat), torch.arange(BN + BA) >= BN, cfg.abc_eps),
    }


def reconstruct(models, x_n, x_a):
    """(x, x_hat) of the batch, (B, 3, H, W) each, without autograd."""
    x = torch.cat([x_n, x_a])
    with torch.no_grad():
        return x, models.model.generator(models.model.encode(x))


def flat(grads):
    return torch.cat([g.flatten() for g in grads.values()])


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_each_weight_scales_exactly_its_own_term(models, batch, name):
    """Setting w_<name> to 0 removes exactly w_<name> x that term's gradient, no more, no less
    (fails if the weights are ignored, or if a term is wired to other tensors than it should be)."""
    x_n, x_a = batch
    per_unit, _, out, scale = term_gradients(models, name, x_n, x_a)
    reference = reference_losses(models, x_n, x_a)
    assert out[name].item() == pytest.approx(reference[name].item(), rel=1e-5)
    weights = CFG.loss_weights()
    assert out["g_total"].item() == pytest.approx(sum(weights[k] * out[k].item() for k in LOSS_NAMES), rel=1e-5)
    params = dict(models.model.named_parameters())
    expected = dict(zip(per_unit, torch.autograd.grad(reference[name], [params[k] for k in per_unit],
                                                      allow_unused=True)))
    expected = flat({k: torch.zeros_like(params[k]) if g is None else g for k, g in expected.items()})
    assert expected.abs().max() > 1e-3 * scale, f"{name} should reach the trainable parameters"
    torch.testing.assert_close(flat(per_unit), expected, rtol=1e-3, atol=1e-5 * scale)


def test_abc_treats_only_the_labelled_anomalies_as_anomalies(models, batch):
    """ABC's gradient at x_hat: normals' reconstructions are pulled towards x (d e / d x_hat =
    2 (x_hat - x) / (C H W), over the batch of B), the labelled anomalies' pushed away from theirs."""
    x_n, x_a = batch
    _, g, _, _ = term_gradients(models, "abc", x_n, x_a)
    x, x_hat = reconstruct(models, x_n, x_a)
    away = (x_hat - x).flatten(1)  # (B, 3 H W): the direction that raises an image's error
    along = (g.flatten(1) * away).sum(dim=1)  # (B,): the loss grows as the error grows where > 0
    assert (along[:BN] > 0).all(), "ABC must shrink the normals' reconstruction error"
    assert (along[BN:] < 0).all(), "ABC must grow the labelled anomalies' reconstruction error"
    torch.testing.assert_close(g[:BN].flatten(1), 2 * away[:BN] / (away.shape[1] * (BN + BA)),
                               rtol=1e-3, atol=1e-9)


def test_patch_term_is_the_top_k_patch_error_not_l1(models, batch):
    """With top_k = 1 the patch term's gradient at x_hat covers exactly the worst 4x4 patch of each
    normal (sign(x_hat - x) / (Bn C p^2) there), where L1's would cover every pixel."""
    x_n, x_a = batch
    _, g, _, _ = term_gradients(models, "patch", x_n, x_a)
    x, x_hat = reconstruct(models, x_n, x_a)
    p = CFG.patch_size
    worst = L.patch_errors(x[:BN], x_hat[:BN], p).argmax(dim=1)  # (Bn,) index of the worst patch
    reached = torch.nn.functional.avg_pool2d(g[:BN].abs().sum(dim=1, keepdim=True), p).flatten(1) > 0  # (Bn, P)
    assert torch.equal(reached, torch.nn.functional.one_hot(worst, reached.shape[1]).bool())
    assert not g[BN:].any(), "the patch term is on normals only"
    mask = torch.nn.functional.interpolate(reached.view(BN, 1, 16 // p, 16 // p).float(), scale_factor=p)
    expected = torch.sign(x_hat[:BN] - x[:BN]) * mask / (BN * 3 * p * p)  # (Bn, 3, H, W)
    torch.testing.assert_close(g[:BN], expected, rtol=1e-3, atol=1e-9)


def test_anomalous_adversarial_term_goes_through_d_anomalous(models, batch):
    """adv_anomalous changes with D_anomalous' weights and not with D_normal's, and only the
    labelled anomalies' reconstructions receive its gradient."""
    x_n, x_a = batch
    base, g, _, scale = term_gradients(models, "adv_anomalous", x_n, x_a)
    assert g[BN:].abs().sum() > 0 and not g[:BN].any()
    other = tiny_models(seed=1)  # other discriminator weights
    new_normal, _, _, _ = term_gradients(CifarModels(models.model, other.d_normal, models.d_anomalous),
                                      "adv_anomalous", x_n, x_a)
    new_anomalous, _, _, _ = term_gradients(CifarModels(models.model, models.d_normal, other.d_anomalous),
                                         "adv_anomalous", x_n, x_a)
    torch.testing.assert_close(flat(new_normal), flat(base), rtol=1e-3, atol=1e-5 * scale)
    assert (flat(new_anomalous) - flat(base)).abs().max() > 0.1 * scale, "D_anomalous must judge it"


def test_latent_target_is_e1_of_x_detached(models, batch):
    """With G's output cut from autograd the latent term can reach E1's head (`to_latent`) only
    through its target, which must be detached: no gradient there, while E2's head still learns.
    And its value is the mean squared distance of E2(G(E1(x))) from E1(x) over the normals."""
    x_n, x_a = batch
    cut = models.model.generator.register_forward_hook(lambda module, inputs, output: output.detach())
    try:
        per_unit, _, out, _ = term_gradients(models, "latent", x_n, x_a)
    finally:
        cut.remove()
    e1 = [k for k in per_unit if k.startswith("to_latent.")]
    e2 = [k for k in per_unit if k.startswith("to_latent_rec.")]
    assert e1 and e2
    assert all(not per_unit[k].any() for k in e1), "the latent target E1(x) must be detached"
    assert any(per_unit[k].abs().sum() > 0 for k in e2)
    model = models.model
    with torch.no_grad():
        z = model.encode(x_n)  # (Bn, L)
        expected = (z - model.encode_reconstruction(model.generator(z))).pow(2).mean()
    assert out["latent"].item() == pytest.approx(expected.item(), rel=1e-5)
