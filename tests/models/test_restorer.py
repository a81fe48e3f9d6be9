"""The restorer: shapes at 32 and 64 px, output range, conditioning on the input, the head's inputs,
every parameter used by one training forward pass (DDP needs that), the generator reused."""
import pytest
import torch

from transgan_lib.config import ModelConfig, RestoreConfig
from transgan_lib.models.restorer import Restorer, build_restorer
from transgan_lib.models.transgan import TransGANGenerator


def _restorer(size, **kw):
    torch.manual_seed(0)
    return build_restorer(ModelConfig(image_size=size, model_size="tiny"), RestoreConfig(head_dim=8, **kw))


@pytest.mark.parametrize("size", [32, 64])
def test_shapes_and_range(size):
    r = _restorer(size)
    x = torch.rand(2, 3, size, size) * 2 - 1
    x_hat = r(x)
    assert x_hat.shape == (2, 3, size, size) and x_hat.abs().max() <= 1
    x_hat2, logits = r(x, segment=True)
    assert torch.equal(x_hat, x_hat2) and logits.shape == (2, size, size)
    restored, probs = r.predict(x)
    assert restored.shape == x.shape and probs.shape == (2, size, size)
    assert probs.min() >= 0 and probs.max() <= 1
    assert r.encode(x).shape == (2, 64, 128)  # one code per token of the 8x8 bottom grid
    with torch.no_grad():
        r.generator.to_rgb.bias.fill_(10.0)  # a saturated output still lies in [-1, 1]
    assert r(x).abs().max() <= 1 and r(x).max() > 0.99


def test_restoration_is_conditioned_on_the_input_and_the_generator_is_reused():
    r = _restorer(32)
    assert isinstance(r.generator, TransGANGenerator) and r.generator.to_tokens is None
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = x.clone()
    y[:, :, :8, :8] = -x[:, :, :8, :8]  # one corner changed
    assert not torch.allclose(r(x), r(y))
    assert not torch.allclose(r(x)[0], r(x)[1])  # two inputs, two restorations


def test_one_training_pass_reaches_every_parameter():
    r = _restorer(32)
    x_hat, logits = r(torch.rand(2, 3, 32, 32), segment=True)
    (x_hat.mean() + logits.mean()).backward()
    missing = [n for n, p in r.named_parameters() if p.grad is None]
    assert not missing


def test_the_head_sees_the_restoration_unless_told_input_only():
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    for head_input, depends in (("both", True), ("input", False)):
        r = _restorer(32, head_input=head_input)
        a, b = r.segment(x, torch.zeros_like(x)), r.segment(x, torch.ones_like(x))
        assert (not torch.allclose(a, b)) == depends
    detached = _restorer(32)
    _, logits = detached(x, segment=True, detach=True)
    logits.sum().backward()
    assert detached.encoder[0].attn.to_qkv.weight.grad is None  # the head's loss stops at the restoration
    assert detached.head.to_logits.weight.grad is not None


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="bottom_width"):
        Restorer(image_size=36, channels=3, bottom_width=8, dims=(32, 8), depths=(1, 1), heads=2, window_size=8)
