"""OFQ (methods.md §1): StatsQ, CGA and QKR, and the LSQ baseline, against hand-computed values."""

import math

import pytest
import torch

from edgebin.quant.qat import (
    ConfidenceGuidedAnnealing,
    LsqActivation,
    LsqWeight,
    QATLinear,
    QKRAttention,
    StatsQWeight,
    cga_trainable,
    lsq_quantize,
    statsq_quantize,
    statsq_scale,
)
from edgebin.zoo.tiny_vit import Attention


def test_statsq_two_bit_values_by_hand():
    w = torch.tensor([[0.1, -0.3, 0.5, -0.1], [1.0, 2.0, -3.0, 0.0]])
    # row 0: s = 2·0.25 = 0.5, levels ±0.125, ±0.375; 0.5 is clipped to 1 - 1e-6 and lands on the top level
    # row 1: s = 3; W/s·2 - 0.5 = [0.17, 0.83, -2.5, -0.5] rounds (half to even) to [0, 1, -2, 0]
    assert statsq_scale(w).flatten().tolist() == [0.5, 3.0]
    assert statsq_quantize(w, 2).tolist() == [[0.125, -0.375, 0.375, -0.125], [0.75, 2.25, -2.25, 0.75]]


def test_statsq_scale_levels_and_identity_gradient():
    torch.manual_seed(0)
    w = torch.randn(6, 40, requires_grad=True)
    s = statsq_scale(w)
    assert s.grad_fn is None
    torch.testing.assert_close(s.flatten(), 2 * w.detach().abs().mean(1))
    for bits in (2, 3, 4):
        n = 2 ** (bits - 1)
        w_hat = statsq_quantize(w, bits)
        for row, scale in zip(w_hat.detach(), s.flatten(), strict=True):
            odd = row / scale * 2 * n  # (k + 0.5)/n · 2n = 2k + 1
            torch.testing.assert_close(odd, odd.round(), atol=1e-5, rtol=0)
            levels = odd.round().unique()
            assert levels.numel() <= 2**bits
            assert set(levels.tolist()) <= set(range(-2 * n + 1, 2 * n, 2))
        assert (w_hat != 0).all()  # no zero level
        (grad,) = torch.autograd.grad(w_hat.sum(), w)
        assert (grad == 1).all()  # STE-id, also in the clipped region


def test_statsq_three_bit_level_set():
    w = torch.tensor([[-1.0, -0.6, -0.2, 0.2, 0.6, 1.0, 1.4, -1.4]])  # mean|W| = 0.8, s = 1.6
    levels = (StatsQWeight(3)(w) / 1.6).unique().tolist()
    assert levels == pytest.approx([-7 / 8, -5 / 8, -3 / 8, -1 / 8, 1 / 8, 3 / 8, 5 / 8, 7 / 8])


def _cga_layer() -> QATLinear:
    # W/s·n = integer + δ with s = 2 (mean|W| = 1) and n = 2, so W/s·n = W: δ = .001, .004, .006, .3, and two
    # far from any threshold; -1.9 fills the bottom bin so the thresholds at -1, 0, 1 are all considered
    layer = torch.nn.Linear(6, 1, bias=False)
    layer.weight.data = torch.tensor([[1.001, -0.996, 0.006, 1.3, -1.9, 0.797]])
    return QATLinear.from_float(layer, StatsQWeight(2))


def test_cga_mask_keeps_only_weights_near_a_threshold():
    layer = _cga_layer()
    assert float(statsq_scale(layer.weight)) == pytest.approx(2.0)
    trainable = cga_trainable(layer.weight, 2, boundary_range=0.005)
    assert trainable.tolist() == [[True, True, False, False, False, False]]


def test_cga_frozen_weights_survive_adamw_bit_for_bit():
    torch.manual_seed(0)
    layer = _cga_layer()
    cga = ConfidenceGuidedAnnealing(layer, boundary_range=0.005)
    opt = torch.optim.AdamW(layer.parameters(), lr=0.1, weight_decay=0.5)
    before = layer.weight.detach().clone()
    layer(torch.randn(4, 6)).pow(2).sum().backward()
    cga.freeze_gradients()
    assert cga.frozen_fraction() == pytest.approx(4 / 6)
    frozen = ~cga_trainable(before, 2, 0.005)
    assert (layer.weight.grad[frozen] == 0).all()
    opt.step()
    assert (layer.weight[frozen] != before[frozen]).all()  # decoupled weight decay moved them...
    cga.restore_frozen()
    assert torch.equal(layer.weight.detach()[frozen], before[frozen])  # ...and CGA put them back exactly
    assert (layer.weight.detach()[~frozen] != before[~frozen]).all()


def _attention(q_bias: bool) -> Attention:
    torch.manual_seed(0)
    attn = Attention(dim=8, heads=2)
    if not q_bias:
        torch.nn.init.zeros_(attn.q.bias)
        torch.nn.init.zeros_(attn.k.bias)
    return attn


def test_qkr_without_quantizers_is_the_same_attention():
    attn = _attention(q_bias=False)
    x = torch.randn(3, 5, 8)
    with torch.no_grad():
        # the identity itself, per head: (X W_q^T)(X W_k^T)^T = X (W_q^T W_k) X^T
        d = 4
        wq, wk = attn.q.weight.view(2, d, 8), attn.k.weight.view(2, d, 8)
        direct = torch.softmax((x[:, None] @ wq.transpose(1, 2)) @ (x[:, None] @ wk.transpose(1, 2)).transpose(-2, -1)
                               / math.sqrt(d), dim=-1)
        product = torch.softmax(x[:, None] @ (wq.transpose(1, 2) @ wk) @ x[:, None].transpose(-2, -1) / math.sqrt(d),
                                dim=-1)
        torch.testing.assert_close(product, direct, atol=1e-5, rtol=0)
        torch.testing.assert_close(QKRAttention.from_attention(attn)(x), attn(x), atol=1e-5, rtol=0)


def test_qkr_drops_the_q_bias_unless_asked_to_keep_it():
    attn = _attention(q_bias=True)
    torch.nn.init.normal_(attn.q.bias)
    torch.nn.init.normal_(attn.k.bias)
    x = torch.randn(3, 5, 8)
    with torch.no_grad():
        assert (QKRAttention.from_attention(attn)(x) - attn(x)).abs().max() > 1e-3  # the official code's choice
        kept = QKRAttention.from_attention(attn, keep_q_bias=True)(x)  # the k bias never matters
        torch.testing.assert_close(kept, attn(x), atol=1e-5, rtol=0)


def test_qkr_gradients_reach_the_latent_q_and_k_weights():
    attn = QKRAttention.from_attention(_attention(False), qk_quantizer=StatsQWeight(2),
                                       input_quantizer=LsqActivation(2), attn_quantizer=LsqActivation(2))
    attn(torch.randn(2, 5, 8)).sum().backward()
    assert attn.q_weight.grad.abs().sum() > 0 and attn.k_weight.grad.abs().sum() > 0
    assert attn.qk_weight().shape == (2 * 8, 8)  # H·C rows: H/2 times the entries of W_q and W_k


@pytest.mark.parametrize(
    ("x", "expected_ds", "expected_dx"),
    [
        (0.3, 0.4, 1.0),     # x/s = 0.6 rounds to 1: round(x/s) - x/s
        (-0.2, 0.4, 1.0),    # -0.4 rounds to 0
        (0.25, -0.5, 1.0),   # 0.5 rounds half to even, to 0
        (0.9, 1.0, 0.0),     # 1.8 > Qp = 1: Qp
        (-1.5, -2.0, 0.0),   # -3 < Qn = -2: Qn
    ],
)
def test_lsq_step_gradient_matches_the_paper(x, expected_ds, expected_dx):
    x = torch.tensor([x], requires_grad=True)
    step = torch.tensor([0.5], requires_grad=True)
    g = 0.5
    y = lsq_quantize(x, step, -2, 1, g)  # signed 2 bits
    dx, ds = torch.autograd.grad(y.sum(), (x, step))
    assert float(ds) == pytest.approx(g * expected_ds)
    assert float(dx) == expected_dx


def test_lsq_weight_init_and_activation_shapes():
    w = torch.tensor([[1.0, -3.0], [0.5, 0.5]])
    wq = LsqWeight(2, w)  # Qp = 1: step = 2·mean|W_c|
    assert wq.step.tolist() == [4.0, 1.0]
    assert wq.g == pytest.approx(1 / math.sqrt(1 * 2))
    per_token = LsqActivation(4, per_token=True)
    per_token(torch.randn(2, 5, 3))
    assert per_token.step.shape == (5,)
    signed, unsigned = LsqActivation(4), LsqActivation(4)
    signed(torch.tensor([-1.0, 1.0, 2.0, -2.0]))     # 2·mean|x| / sqrt(7)
    unsigned(torch.tensor([0.0, 1.0, 2.0, 1.0]))     # 4·mean|x| / sqrt(15), range [0, 15]
    assert float(signed.step.detach()) == pytest.approx(3 / math.sqrt(7))
    assert float(unsigned.step.detach()) == pytest.approx(4 / math.sqrt(15))
    assert signed.range == (-8, 7) and unsigned.range == (0, 15)


def test_quantizer_arguments_are_checked():
    with pytest.raises(ValueError, match="bits must be in 2..8"):
        StatsQWeight(1)
    with pytest.raises(ValueError, match="bits must be in 2..8"):
        LsqActivation(9)
    with pytest.raises(ValueError, match="boundary_range"):
        ConfidenceGuidedAnnealing(torch.nn.Linear(2, 2), boundary_range=0.6)


def test_cga_inside_a_qkr_product_detaches_confident_entries():
    w = torch.tensor([[1.001, -0.996, 0.006, 1.3, -1.9, 0.797]], requires_grad=True)  # as _cga_layer
    wq = StatsQWeight(2)
    wq.cga_boundary_range = 0.005
    (grad,) = torch.autograd.grad(wq(w).sum(), w)
    assert grad.tolist() == [[1, 1, 0, 0, 0, 0]]
    (grad,) = torch.autograd.grad(wq.eval()(w).sum(), w)  # only in training
    assert (grad == 1).all()
