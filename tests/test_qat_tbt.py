"""TBT / BiT (methods.md §2): statistics-based ternary and binary weights, elastic activations."""

import math

import pytest
import torch

from edgebin import zoo
from edgebin.quant import Recipe
from edgebin.quant.qat import ElasticActivation, TbtWeight, elastic_quantize, init_quantizers, prepare


def test_ternary_weights_by_hand():
    w = torch.tensor([[0.9, -0.3, 0.1, -0.6]], requires_grad=True)
    alpha = 4 / 3 * 0.475  # mean|W| = 0.475; zero iff |W| <= alpha/2 = 0.3167
    w_hat = TbtWeight(2)(w)
    assert w_hat[0].tolist() == pytest.approx([alpha, 0.0, 0.0, -alpha])
    (grad,) = torch.autograd.grad(w_hat.sum(), w)
    assert (grad == 1).all()


def test_ternary_tie_at_half_alpha_rounds_to_zero():
    # mean|W| = 1.5, alpha = 2: W/alpha = 0.5 exactly, and round half to even gives 0
    assert TbtWeight(2)(torch.tensor([[2.0, 1.0]])).tolist() == [[2.0, 0.0]]


def test_ternary_levels_and_zero_rule_on_random_rows():
    torch.manual_seed(0)
    w = torch.randn(5, 32)
    w_hat = TbtWeight(2)(w)
    alpha = 4 / 3 * w.abs().mean(1, keepdim=True)
    assert torch.isclose(w_hat.abs(), alpha).logical_or(w_hat == 0).all()
    assert torch.equal(w_hat == 0, w.abs() <= alpha / 2)


def test_binary_weights_by_hand_with_the_sign_of_zero():
    w = torch.tensor([[0.5, -1.5, 0.0, 1.0]], requires_grad=True)
    w_hat = TbtWeight(1)(w)  # alpha = mean|W| = 0.75; sign(0) = +1 here (TBT's torch.sign gives 0)
    assert w_hat.tolist() == [[0.75, -0.75, 0.75, 0.75]]
    (grad,) = torch.autograd.grad(w_hat.sum(), w)
    assert (grad == 1).all()
    centered = TbtWeight(1, center=True)(torch.tensor([[0.5, 3.0, 2.0, -1.5]]))  # sign(W - 1), alpha = 1.75
    assert centered.tolist() == [[-1.75, 1.75, 1.75, -1.75]]


def test_elastic_first_call_sets_alpha_and_levels():
    x = torch.tensor([-1.0, 0.5, 2.0, -0.5])  # mean|x| = 1
    for bits in (1, 2):
        q = ElasticActivation(bits)
        y = q(x)
        assert float(q.alpha.detach()) == 2.0
        assert set(y.tolist()) <= ({-2.0, 2.0} if bits == 1 else {-2.0, 0.0, 2.0})
    assert ElasticActivation(1)(x).tolist() == [-2.0, 2.0, 2.0, -2.0]
    assert ElasticActivation(2)(x).tolist() == [0.0, 0.0, 2.0, 0.0]  # x/alpha = -0.5, .25, 1, -.25


def test_elastic_unsigned_two_bits_uses_the_minimum_as_offset():
    x = torch.tensor([0.5, 1.0, 2.0, 4.5])  # unsigned: alpha = 4·2/sqrt(3), beta = min = 0.5
    q = ElasticActivation(2)
    y = q(x)
    alpha = 8 / math.sqrt(3)
    assert not q.is_signed
    assert float(q.alpha.detach()) == pytest.approx(alpha)
    assert y.tolist() == pytest.approx([0.5, 0.5, 0.5, 0.5 + alpha])
    assert ElasticActivation(1)(x).tolist() == [0.0, 0.0, 0.0, 8.0]  # alpha = 4·mean|x| = 8: {0, alpha}


def test_elastic_backward_matches_the_tbt_formulas():
    # signed 2 bits, alpha = 1: x/alpha below Qn=-1, inside, above Qp=1; upstream gradient g = 1..5
    x = torch.tensor([-1.7, -0.3, 0.4, 0.6, 1.2], requires_grad=True)
    alpha = torch.ones(1, requires_grad=True)
    g = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    dx, da = torch.autograd.grad(elastic_quantize(x, alpha, bits=2, signed=True), (x, alpha), g)
    gamma = 1 / math.sqrt(5 * 1)
    assert dx.tolist() == [0.0, 2.0, 3.0, 4.0, 0.0]
    # Qn·1 + (0 + .3)·2 + (0 - .4)·3 + (1 - .6)·4 + Qp·5
    assert float(da) == pytest.approx(gamma * (-1 + 0.6 - 1.2 + 1.6 + 5))
    # signed 1 bit: d/dalpha = gamma·sum g·sign(x), d/dx = g on |x/alpha| <= 1
    dx, da = torch.autograd.grad(elastic_quantize(x, alpha, bits=1, signed=True), (x, alpha), g)
    assert dx.tolist() == [0.0, 2.0, 3.0, 4.0, 0.0]
    assert float(da) == pytest.approx(gamma * (-1 - 2 + 3 + 4 + 5))
    # unsigned 2 bits: x' = x - min(x) = [0, 1.4, 2.1, 2.3, 2.9]; Qn = 0, Qp = 2; gamma = 1/sqrt(5·2)
    dx, da = torch.autograd.grad(elastic_quantize(x, alpha, bits=2, signed=False), (x, alpha), g)
    assert dx.tolist() == [1.0, 2.0, 0.0, 0.0, 0.0]
    expected = (0 - 0) * 1 + (1 - 1.4) * 2 + 2 * 3 + 2 * 4 + 2 * 5
    assert float(da) == pytest.approx(expected / math.sqrt(10))


def test_bit_shift_is_per_channel_and_learnable():
    q = ElasticActivation(1, channels=3, channel_dim=-1, shift=True)
    x = torch.tensor([[0.2, -0.2, 0.1]])
    q(x)
    q.shift.data = torch.tensor([-0.3, 0.3, 0.0])  # sign(x + shift), not added back
    y = q(x)
    alpha = float(q.alpha.detach())
    assert y[0].tolist() == pytest.approx([-alpha, alpha, alpha])
    y.sum().backward()
    assert q.shift.grad is not None


@pytest.mark.parametrize("bits", [1, 2])
def test_tiny_transformer_with_tbt_quantizers_trains_a_step(bits):
    torch.manual_seed(0)
    model = zoo.create("tiny_vit", depth=2, dim=16, heads=2)
    prepare(model, Recipe.for_method("tbt", weight_bits=bits, activation_bits=bits))
    x = torch.randn(4, 1, 28, 28)
    init_quantizers(model, x)
    model.train()
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert torch.isfinite(loss) and all(g is not None and torch.isfinite(g).all() for g in grads)
