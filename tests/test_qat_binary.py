"""Binary and ternary quantizers (methods.md §6 BiPer, §7 ReSTE, §9 baseline estimators): values and gradients."""

import math

import pytest
import torch

from edgebin.quant.qat import (
    ApproxSign,
    BinaryActivation,
    BinaryWeight,
    BiPerSign,
    QATConv2d,
    ReSTESign,
    SteSign,
    TernaryWeight,
    approx_sign,
    biper_binarize,
    biper_penalty,
    biper_regularizer,
    reste_power,
    reste_sign,
    set_progress,
    ste_sign,
)


def _grad(fn, values) -> list[float]:
    x = torch.tensor(values, requires_grad=True)
    (grad,) = torch.autograd.grad(fn(x).sum(), x)
    return grad.tolist()


def test_ste_sign_values_and_gradient():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0], requires_grad=True)
    y = ste_sign(x, clip=1.0)
    y.sum().backward()
    assert y.tolist() == [-1, -1, 1, 1, 1]  # sign(0) = +1
    assert x.grad.tolist() == [0, 1, 1, 1, 0]  # identity inside the clip, zero outside


def test_approx_sign_gradient_at_the_bibench_points():
    assert _grad(approx_sign, [0.5, 0.99, 1.01, -0.5, 0.0]) == pytest.approx([1.0, 0.02, 0.0, 1.0, 2.0])


def test_reste_with_power_one_is_a_clipped_ste_at_one_and_a_half():
    assert _grad(lambda x: reste_sign(x, o=1.0), [0.05, -0.1, 1.0, 1.5, -1.6, 2.0]) == [1, 1, 1, 1, 0, 0]


def test_reste_with_power_three_at_the_stated_points():
    grads = _grad(lambda x: reste_sign(x, o=3.0), [0.05, 0.2, 1.0, 1.6])
    # 0.1^(1/3)/0.1 = 4.642 (the secant inside ±ε), (1/3)·0.2^(-2/3) = 0.975, 1/3, and 0 beyond t = 1.5
    assert grads == pytest.approx([0.1 ** (1 / 3) / 0.1, 0.2 ** (-2 / 3) / 3, 1 / 3, 0.0], rel=1e-5)
    assert grads[:2] == pytest.approx([4.642, 0.975], abs=1e-3)
    assert _grad(lambda x: reste_sign(x, o=3.0), [-0.05, -0.2, -1.0, -1.6]) == pytest.approx(grads)  # even in x
    assert reste_sign(torch.tensor([-0.2, 0.0, 0.3]), o=3.0).tolist() == [-1, 1, 1]


def test_reste_power_schedule_and_set_progress():
    assert reste_power(0.0, o_end=3.0) == 1.0
    assert reste_power(1.0, o_end=3.0) == pytest.approx(3.0)
    assert reste_power(0.5, o_end=3.0) == pytest.approx(1 + 2 * (1 - math.cos(math.pi / 4)))
    model = torch.nn.Sequential(BinaryActivation(ReSTESign(o_end=3.0), channels=1))
    set_progress(model, 1.0)
    assert float(model[0].binarizer.o) == pytest.approx(3.0)


def test_reste_tensor_scale_passes_gradient_to_the_weights():
    # W = [0.5, -0.2, 1.0, 2.0], o = 1: m = mean|W| = 0.925 and d(Σ m·sign(W))/dW_i = m·1[|W_i| <= 1.5]
    # + Σ_j sign(W_j) · sign(W_i) / 4, with Σ_j sign(W_j) = 2
    grads = _grad(BinaryWeight(ReSTESign(), scale="tensor"), [[0.5, -0.2, 1.0, 2.0]])
    assert grads[0] == pytest.approx([0.925 + 0.5, 0.925 - 0.5, 0.925 + 0.5, 0.5])


def test_channel_scale_is_mean_abs_per_output_channel_and_detached():
    w = torch.tensor([[0.5, -1.5], [2.0, 0.0]], requires_grad=True)
    w_hat = BinaryWeight(SteSign(), scale="channel")(w)
    assert w_hat.tolist() == [[1.0, -1.0], [1.0, 1.0]]
    (grad,) = torch.autograd.grad(w_hat.sum(), w)
    assert grad.tolist() == [[1.0, 0.0], [0.0, 1.0]]  # α_c · clip-STE(W), α detached: 1·1, 1·0; 1·0, 1·1


def test_biper_stage_two_is_sign_of_sine_with_the_sine_gradient():
    omega = 20.0
    w = torch.tensor([0.01, 0.1, -0.05, 0.2, 0.3], requires_grad=True)
    w_b = biper_binarize(w, omega, stage=2)
    expected = torch.where(torch.sin(omega * w.detach()) >= 0, 1.0, -1.0)
    assert torch.equal(w_b.detach(), expected) and set(w_b.tolist()) <= {-1.0, 1.0}
    (grad,) = torch.autograd.grad(w_b.sum(), w)
    torch.testing.assert_close(grad, omega * torch.cos(omega * w.detach()))


def test_biper_stage_one_is_the_sine():
    w = torch.tensor([0.01, 0.1, -0.05], requires_grad=True)
    w_b = biper_binarize(w, 20.0, stage=1)
    torch.testing.assert_close(w_b, torch.sin(20 * w))
    (grad,) = torch.autograd.grad(w_b.sum(), w)
    torch.testing.assert_close(grad, 20 * torch.cos(20 * w.detach()))


def test_biper_is_periodic_in_the_latent_weight():
    omega = 20.0
    w = torch.tensor([0.01, 0.1, -0.05, 0.2, 0.3, -0.12])
    outs, grads = [], []
    for latent in (w, w + 2 * math.pi / omega):
        latent = latent.clone().requires_grad_()
        out = biper_binarize(latent, omega, stage=2)
        outs.append(out.detach())
        grads.append(torch.autograd.grad(out.sum(), latent)[0])
    assert torch.equal(outs[0], outs[1])
    torch.testing.assert_close(grads[0], grads[1], atol=1e-4, rtol=0)


def test_biper_regulariser_is_the_mean_squared_sine():
    w = torch.tensor([0.0, math.pi / 40, math.pi / 80])  # sin(20W) = 0, 1, 1/sqrt(2)
    assert float(biper_penalty(w, 20.0)) == pytest.approx(0.5)
    conv = torch.nn.Conv2d(1, 1, (1, 3), bias=False)
    conv.weight.data = w.view(1, 1, 1, 3)
    model = torch.nn.Sequential(QATConv2d.from_float(conv, BinaryWeight(BiPerSign(20.0), "learned", channels=1)))
    assert float(biper_regularizer(model).detach()) == pytest.approx(0.5)


def _reference_approx_sign(a: torch.Tensor) -> torch.Tensor:
    """sign(a) whose gradient is the derivative of Bi-Real's polynomial 2a - a|a| (|a| < 1), else 0."""
    poly = torch.where(a.abs() < 1, 2 * a - a * a.abs(), torch.sign(a))
    return poly + (torch.where(a >= 0, 1.0, -1.0) - poly).detach()


def test_biper_activation_normalises_only_in_training():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 4) * 0.4
    q = BinaryActivation(ApproxSign(), channels=3, channel_dim=1, normalize=True, signed=True)
    g = torch.randn_like(x)
    q.eval()
    xe = x.clone().requires_grad_()
    q(xe).backward(g)
    torch.testing.assert_close(xe.grad, g * (2 - 2 * x.abs()).clamp(min=0))
    q.train()
    xt = x.clone().requires_grad_()
    out = q(xt)
    out.backward(g)
    xr = x.clone().requires_grad_()
    a0 = xr / torch.sqrt(xr.var(dim=(1, 2, 3), keepdim=True) + 1e-5)  # per-sample std over C, H, W
    _reference_approx_sign(a0).backward(g)
    assert torch.equal(out.detach(), torch.where(x >= 0, 1.0, -1.0))
    torch.testing.assert_close(xt.grad, xr.grad)
    assert not torch.allclose(xt.grad, xe.grad)


def test_binary_activation_splits_non_negative_inputs_at_the_channel_mean():
    x = torch.tensor([[0.0, 1.0], [2.0, 1.0], [4.0, 1.0]])  # post-ReLU: channel means 2 and 1
    q = BinaryActivation(SteSign(), channels=2)
    y = q(x)
    assert not q.is_signed
    assert q.shift.tolist() == [-2.0, -1.0]
    assert y.tolist() == [[-1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]


def test_twn_ternary_weights_by_hand():
    # mean|W| = 0.475: Δ = 0.3325 keeps 0.9 and -0.6, α = 0.75
    w = torch.tensor([[0.9, -0.3, 0.1, -0.6]], requires_grad=True)
    w_hat = TernaryWeight()(w)
    assert w_hat[0].tolist() == pytest.approx([0.75, 0.0, 0.0, -0.75])
    (grad,) = torch.autograd.grad(w_hat.sum(), w)
    assert (grad == 1).all()


def test_binary_quantizer_arguments_are_checked():
    with pytest.raises(ValueError, match="scale must be one of"):
        BinaryWeight(SteSign(), scale="row")
    with pytest.raises(ValueError, match="stage must be 1"):
        BiPerSign(stage=3)
    with pytest.raises(ValueError, match="o_end"):
        ReSTESign(o_end=0.5)
