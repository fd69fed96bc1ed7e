"""WGSEF maths against independent numerical solvers (research/methods.md §5 (e)), group sets, and training to an
exact number of groups per layer."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from torch import nn

from edgebin.errors import UsageError
from edgebin.sparsity import (
    ProximalWgsef,
    build_groups,
    envelope_level,
    hard_select,
    keep_count,
    lr_schedule,
    prox_dc,
    prox_sef,
    sef,
    sef_prox_factors,
    steps_per_epoch,
)
from edgebin.train import TrainConfig, TrainHooks, train


def _sef_by_slsqp(x: np.ndarray, k: int) -> float:
    """S_k(x) = max_y ⟨x, y⟩ − ½ Σ_top-k y², with Σ_top-k y² = min_t k·t + Σ max(y² − t, 0) as constraints."""
    n = len(x)

    def negative(z: np.ndarray) -> float:
        y, t, s = z[:n], z[n], z[n + 1 :]
        return -(x @ y - 0.5 * (k * t + s.sum()))

    constraints = [{"type": "ineq", "fun": lambda z: z[n + 1 :] - (z[:n] ** 2 - z[n])},
                   {"type": "ineq", "fun": lambda z: z[n + 1 :]}]
    z0 = np.concatenate([x, [float(np.max(x**2))], np.zeros(n)])
    best = minimize(negative, z0, method="SLSQP", constraints=constraints, options={"maxiter": 2000, "ftol": 1e-15})
    return -best.fun


def _nelder_mead_min(objective, start: np.ndarray, rng: np.random.Generator, starts: int = 6) -> np.ndarray:
    """The best of Nelder–Mead runs from `start` and from random points around it."""
    best = None
    for i in range(starts):
        x0 = start if i == 0 else start + rng.normal(scale=1.0, size=start.shape)
        r = minimize(objective, x0, method="Nelder-Mead",
                     options={"maxiter": 4000, "xatol": 1e-9, "fatol": 1e-12, "adaptive": True})
        if best is None or r.fun < best.fun:
            best = r
    return best.x


def _prox_objective(lam: float, k: int, v: np.ndarray, w: np.ndarray):
    """u -> lam·S_k(w ⊙ |u|) + ½‖u − v‖²."""
    return lambda u: lam * sef(w * np.abs(u), k) + 0.5 * float((u - v) @ (u - v))


def _dc_objective(lam: float, k: int, v: np.ndarray, w: np.ndarray | None = None):
    """u -> lam·(S_k(w ⊙ u) − ½‖w ⊙ u‖²) + ½‖u − v‖²."""
    w = np.ones_like(v) if w is None else w
    return lambda u: lam * (sef(w * u, k) - 0.5 * float((w * u) @ (w * u))) + 0.5 * float((u - v) @ (u - v))


def _conjugate_objective(lam: float, k: int, v: np.ndarray):
    """y -> f_k*(y)/lam + ½‖y − v/lam‖², f_k*(y) = ½ Σ_top-k y²: the conjugate prox's objective at v/lam."""
    return lambda y: 0.5 * float(np.sort(y**2)[::-1][:k].sum()) / lam + 0.5 * float((y - v / lam) @ (y - v / lam))


def _cases(seed: int, count: int, n_max: int = 8):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        n = int(rng.integers(2, n_max + 1))
        yield rng, n, int(rng.integers(1, n)), rng.normal(size=n)


def test_sef_equals_constrained_maximisation():
    for _, n, k, x in _cases(0, 12):
        assert sef(torch.tensor(x), k) == pytest.approx(_sef_by_slsqp(x, k), rel=1e-7, abs=1e-9), (n, k)
    x = np.array([3.0, -1.0, 2.0])
    assert sef(torch.tensor(x), 1) == pytest.approx(0.5 * 6.0**2)  # k = 1: half the squared L1 norm
    assert sef(torch.tensor(x), 3) == pytest.approx(0.5 * 14.0)  # k = n: half the squared L2 norm


def test_sef_is_half_squared_norm_exactly_when_k_sparse():
    rng = np.random.default_rng(1)
    for n, k in itertools.product((4, 7), (1, 2, 3)):
        x = np.zeros(n)
        x[rng.choice(n, k, replace=False)] = rng.normal(size=k)
        assert sef(torch.tensor(x), k) == pytest.approx(0.5 * float(x @ x), rel=1e-12)
        dense = x + 0.1 * (x == 0)
        assert sef(torch.tensor(dense), k) > 0.5 * float(dense @ dense) + 1e-6


def test_prox_beats_nelder_mead_from_many_starts():
    for rng, n, k, v in _cases(2, 6, n_max=6):
        lam = float(rng.uniform(0.1, 3.0))
        w = rng.uniform(0.5, 2.0, size=n)
        objective = _prox_objective(lam, k, v, w)
        u = prox_sef(torch.tensor(v), lam, k, torch.tensor(w)).numpy()
        found = _nelder_mead_min(objective, v, rng)
        # 1-strongly convex: F(z) − F(u) >= ½‖z − u‖² for every z when u is the minimiser
        assert objective(found) - objective(u) >= 0.5 * float((found - u) @ (found - u)) - 1e-10


def test_moreau_identity():
    """prox_λS(v) + λ·prox_{S*/λ}(v/λ) = v with S* = f_k* = ½ Σ_top-k y²: (v − prox)/λ solves the conjugate prox."""
    for rng, _, k, v in _cases(3, 6, n_max=6):
        lam = float(rng.uniform(0.2, 2.0))
        u = prox_sef(torch.tensor(v), lam, k).numpy()
        y = (v - u) / lam
        conjugate = _conjugate_objective(lam, k, v)
        found = _nelder_mead_min(conjugate, v / lam, rng)
        assert conjugate(found) - conjugate(y) >= 0.5 * float((found - y) @ (found - y)) - 1e-10


def test_prox_keeps_at_least_k_and_fewer_as_lambda_grows():
    rng = np.random.default_rng(4)
    for _ in range(50):
        n = int(rng.integers(3, 40))
        k = int(rng.integers(1, n))
        v = torch.tensor(rng.normal(size=n) * rng.uniform(0.1, 10, size=n))
        counts = [int((prox_sef(v, lam, k) != 0).sum()) for lam in np.geomspace(1e-3, 1e3, 40)]
        assert min(counts) >= k
        assert all(a >= b for a, b in itertools.pairwise(counts)), counts
    v = torch.tensor([1.0, 0.0, 2.0])  # already k-sparse: a plain ridge shrink
    assert prox_sef(v, 1.0, 2).tolist() == [0.5, 0.0, 1.0]


def test_dc_prox_is_hard_selection_for_lambda_at_least_one():
    rng = np.random.default_rng(5)
    for lam in (1.0, 2.0):
        for _, n, k, v in _cases(int(lam), 2, n_max=5):
            u = prox_dc(torch.tensor(v), lam, k).numpy()
            top = np.argsort(-np.abs(v), kind="stable")[:k]
            expected = np.zeros(n)
            expected[top] = v[top]
            np.testing.assert_array_equal(u, expected)
            assert int((u != 0).sum()) == k
            objective = _dc_objective(lam, k, v)
            assert objective(u) <= objective(_nelder_mead_min(objective, v, rng, starts=4)) + 1e-10
    v = torch.tensor([0.3, -1.0, 0.5])  # lam < 1: the convex prox at v/(1 − lam)
    assert torch.allclose(prox_dc(v, 0.5, 1), prox_sef(v / 0.5, 1.0, 1))
    for rng, n, k, v in _cases(6, 2, n_max=5):  # lam·w² < 1 with unequal weights: the weighted-metric solution
        w = rng.uniform(0.5, 1.5, size=n)
        objective = _dc_objective(0.3, k, v, w)
        u = prox_dc(torch.tensor(v), 0.3, k, torch.tensor(w)).numpy()
        assert objective(u) <= objective(_nelder_mead_min(objective, v, rng, starts=4)) + 1e-10


def test_hard_select_breaks_ties_towards_the_lower_index():
    a = torch.tensor([1.0, 3.0, 2.0, 2.0, 2.0, 0.5])
    assert hard_select(a, 3).tolist() == [False, True, True, True, False, False]
    assert hard_select(a, 6).all()


def test_group_prox_rescales_each_group_along_its_direction():
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    (s,) = build_groups(conv, torch.zeros(1, 3, 6, 6), "filters", keep=3)
    params = dict(conv.named_parameters())
    params["1.weight"].data.uniform_(0.5, 1.5)
    before = {k: v.detach().clone() for k, v in params.items()}
    norms = s.norms(params)
    factors = sef_prox_factors(norms, 0.7, s.keep, s.weights)
    s.scale_(params, factors)
    for g in range(8):
        old = torch.cat([before["0.weight"][g].reshape(-1), before["0.bias"][g:g + 1], before["1.weight"][g:g + 1],
                         before["1.bias"][g:g + 1]])
        new = torch.cat([params["0.weight"][g].reshape(-1), params["0.bias"][g:g + 1], params["1.weight"][g:g + 1],
                         params["1.bias"][g:g + 1]]).detach()
        assert torch.allclose(new, old * float(factors[g]), atol=1e-6)
        assert 0 <= float(factors[g]) <= 1
    # the group norms moved exactly as the prox of the vector of norms
    assert torch.allclose(s.norms(params), prox_sef(norms, 0.7, s.keep), atol=1e-6)
    assert int((factors > 0).sum()) >= 3


def test_keep_count_rounds_half_up_and_keeps_one():
    assert [keep_count(16, 0.5), keep_count(16, 0.75), keep_count(32, 0.25), keep_count(10, 0.25)] == [8, 4, 24, 7]
    assert keep_count(3, 0.99) == 1
    assert keep_count(16, keep=20) == 16


def test_errors_name_the_bad_value():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
    x = torch.zeros(1, 1, 5, 5)
    with pytest.raises(UsageError, match="'filter'.*did you mean 'filters'"):
        build_groups(model, x, "filter", sparsity=0.5)
    with pytest.raises(UsageError, match="not both"):
        build_groups(model, x, sparsity=0.5, keep=2)
    with pytest.raises(UsageError, match=r"sparsity must be in \[0, 1\), got 1.5"):
        build_groups(model, x, sparsity=1.5)
    with pytest.raises(UsageError, match="no filters that can be pruned.*model output"):
        build_groups(nn.Sequential(nn.Conv2d(1, 4, 3)), x, sparsity=0.5)
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        sef(torch.ones(3), 0)
    with pytest.raises(ValueError, match="more than k=2 positive entries"):
        envelope_level(np.array([1.0, 0.0, 2.0]), 0.0, 2)


def test_training_ends_with_exactly_k_groups_per_set(tiny_resnet):
    torch.manual_seed(0)
    x = torch.randn(256, 1, 8, 8)
    y = (x.mean((1, 2, 3)) > 0).long() + 2 * (x[:, :, :4].mean((1, 2, 3)) > 0).long()
    model = tiny_resnet.train()
    sets = build_groups(model, x[:1], "filters", sparsity=0.5)
    assert [(s.name, s.size, s.keep) for s in sets] == [("stem+c2", 8, 4), ("c1", 8, 4)]
    config = TrainConfig(epochs=4, batch_size=32, lr=3e-3, warmup_epochs=0.5, bn_reestimate_batches=2,
                         channels_last=False)
    spe = steps_per_epoch(config, len(y), world=1)
    nonzero = []

    def after_step(m: nn.Module, step: int) -> None:
        hook(m, step)
        params = dict(m.named_parameters())
        nonzero.append([int((s.norms(params) > 0).sum()) for s in sets])

    hook = ProximalWgsef(sets, lam=100.0, lr_at=lr_schedule(config, len(y)), exact_step=3 * spe)
    train(model, (x, y), None, config, hooks=TrainHooks(after_step=after_step))
    params = dict(model.named_parameters())
    assert [int((s.norms(params) > 0).sum()) for s in sets] == [4, 4]
    assert all(n >= 4 for row in nonzero[: 3 * spe - 1] for n in row)  # the proximal steps keep at least k
    assert all(row == [4, 4] for row in nonzero[3 * spe - 1 :])  # exact from the exact step on
    assert min(r["nonzero_before"] for r in hook.report.values()) < 8  # the proximal steps zeroed some groups
    for s in sets:  # the pruned groups are the ones the exact step chose
        assert torch.equal(s.norms(params) > 0, hook.kept[s.name])


@pytest.mark.parametrize(("kind", "keep"), [("channels", [4, 4]), ("shapes", [4, 36, 36]), ("weights", [36, 288, 288]),
                                            ("layers", [1])])
def test_every_group_kind_reaches_exactly_k(tiny_resnet, kind, keep):
    sets = build_groups(tiny_resnet, torch.zeros(1, 1, 8, 8), kind, sparsity=0.5)
    assert [s.keep for s in sets] == keep
    ProximalWgsef(sets, lam=0.0, lr_at=lambda step: 0.0, exact_step=0).exact(tiny_resnet)
    params = dict(tiny_resnet.named_parameters())
    assert [int((s.norms(params) > 0).sum()) for s in sets] == keep


def test_prox_hook_runs_inside_qat(tiny_resnet):
    from edgebin.quant import Recipe
    from edgebin.train_qat import train_qat

    torch.manual_seed(0)
    x, y = torch.randn(128, 1, 8, 8), torch.randint(0, 10, (128,))
    sets = build_groups(tiny_resnet, x[:1], "filters", keep=3)  # on the float model, before QAT layers go in
    config = TrainConfig(epochs=2, batch_size=32, lr=2e-3, warmup_epochs=0.5, bn_reestimate_batches=1,
                         channels_last=False)
    hook = ProximalWgsef(sets, lam=50.0, lr_at=lr_schedule(config, len(y)),
                         exact_step=steps_per_epoch(config, len(y), world=1))
    train_qat(tiny_resnet.train(), Recipe.for_method("lsq", weight_bits=4, activation_bits=4), (x, y), None,
              config, example_input=x[:1], after_step=hook)
    params = dict(tiny_resnet.named_parameters())
    assert type(tiny_resnet.c1).__name__ == "QATConv2d"
    assert [int((s.norms(params) > 0).sum()) for s in sets] == [3, 3]
