"""The QAT loop: schedule and distillation against hand-computed values, CGA freezing, exact resume, DDP."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from edgebin.errors import DataError, UsageError
from edgebin.train import (
    TrainConfig,
    TrainHooks,
    distillation_loss,
    learning_rate,
    param_groups,
    random_shift_flip,
    reestimate_batchnorm,
    train,
    warmup_cosine_lr,
)

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class FakeQuantLinear(nn.Linear):
    """2-bit StatsQ-style weights (levels ±¼s, ±¾s, s = 2·mean|W| per row) with an identity STE."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        s = 2 * w.abs().mean(1, keepdim=True).detach()
        q = s * (torch.round((w / s).clamp(-1, 1 - 1e-6) * 2 - 0.5) + 0.5) / 2
        return F.linear(x, w + (q - w).detach(), self.bias)


def frozen_far_from_thresholds(model: nn.Module, boundary: float = 0.2) -> dict[str, torch.Tensor]:
    """A CGA-like mask: weights more than `boundary` steps from a rounding threshold are frozen."""
    masks = {}
    for name, module in model.named_modules():
        if isinstance(module, FakeQuantLinear):
            w = module.weight.detach()
            b = (w / (2 * w.abs().mean(1, keepdim=True))).clamp(-1, 1 - 1e-6) * 2 - 0.5
            masks[f"{name}.weight" if name else "weight"] = (b - b.floor() - 0.5).abs() < 0.5 - boundary
    return masks


class SmallNet(nn.Module):
    """conv-BN-ReLU, dropout (uses the RNG), pooling and a fake-quant head, for 1×8×8 inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.drop = nn.Dropout(0.1)
        self.head = FakeQuantLinear(6 * 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.head(self.drop(torch.flatten(x, 1)))


def quadrant_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """1×8×8 noise images; the label is the quadrant that holds a bright square."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=gen)
    x = 0.3 * torch.randn(n, 1, 8, 8, generator=gen)
    for i, q in enumerate(y.tolist()):
        r, c = divmod(q, 2)
        x[i, 0, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] += 1.0
    return x, y


def small_net(seed: int = 0) -> SmallNet:
    torch.manual_seed(seed)
    return SmallNet()


# --- pieces against hand-computed values --------------------------------------------------------------------


def test_warmup_cosine_lr_matches_hand_values():
    lr = functools.partial(warmup_cosine_lr, total_steps=10, warmup_steps=2, peak_lr=1.0, min_lr=0.1)
    assert [lr(0), lr(1)] == [0.5, 1.0]  # linear warm-up, (step + 1) / warmup
    assert lr(2) == pytest.approx(1.0)  # cosine starts at the peak
    assert lr(6) == pytest.approx(0.55)  # halfway: 0.1 + 0.45 · (1 + cos(π/2))
    assert lr(9) == pytest.approx(0.1 + 0.45 * (1 - 0.9238795325))  # t = 7/8, cos(7π/8) = -0.92388


def test_learning_rate_holds_min_lr_through_cga_or_anneals():
    config = TrainConfig(epochs=2, cga_epochs=2, warmup_epochs=1, lr=1.0, min_lr=0.1)
    steps = [learning_rate(config, s, steps_per_epoch=5) for s in range(20)]
    assert steps[:5] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert steps[5] == pytest.approx(1.0) and steps[9] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.8)))
    assert steps[10:] == [0.1] * 10  # OFQ cga.py: timm's scheduler past its end returns min_lr
    annealed = dataclasses.replace(config, cga_lr=0.2, cga_anneal=True)
    assert learning_rate(annealed, 10, 5) == pytest.approx(0.2)
    assert learning_rate(annealed, 15, 5) == pytest.approx(0.1)  # halfway through the 10 CGA steps


def test_distillation_loss_matches_hand_value():
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0]])  # softmax (3/4, 1/4)
    labels = torch.tensor([0])
    ce = math.log(2)  # student softmax (1/2, 1/2)
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert float(distillation_loss(student, teacher, labels)) == pytest.approx(ce + kl, abs=1e-6)
    p = math.sqrt(3) / (math.sqrt(3) + 1)  # teacher at T = 2: softmax(ln √3, 0)
    kl_t2 = p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5)
    got = distillation_loss(student, teacher, labels, temperature=2.0, weight=0.5)
    assert float(got) == pytest.approx(ce + 0.5 * 4 * kl_t2, abs=1e-6)


def test_param_groups_decay_only_conv_and_linear_weights():
    class WithTokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn, self.fc = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Linear(2, 2)
            self.pos_embed = nn.Parameter(torch.zeros(1, 3, 2))
            self.step = nn.Parameter(torch.ones(()))  # a scalar quantizer scale

    model = WithTokens()
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model.conv.weight), id(model.fc.weight)}
    assert len(no_decay["params"]) == 6  # conv and fc biases, BN weight and bias, pos_embed, step


def test_random_shift_flip_fills_with_the_given_background():
    x = torch.ones(64, 2, 5, 5)
    out = random_shift_flip(x, torch.Generator().manual_seed(0), shift_px=2, flip=True, fill=(-1.0, -3.0))
    assert out.shape == x.shape
    assert set(out[:, 0].unique().tolist()) == {-1.0, 1.0} and set(out[:, 1].unique().tolist()) == {-3.0, 1.0}
    assert (out == 1).flatten(1).sum(1).min() >= 2 * 3 * 3  # at most 2 px off: a 3×3 core stays per channel


# --- the loop ----------------------------------------------------------------------------------------------


def test_loss_decreases_and_eval_accuracy_is_reported():
    x, y = quadrant_data(256)
    x_eval, y_eval = quadrant_data(128, seed=1)
    config = TrainConfig(epochs=4, batch_size=32, lr=1e-2, min_lr=1e-4, warmup_epochs=0.5)
    result = train(small_net(), (x, y), (x_eval, y_eval), config)
    losses = [r.train_loss for r in result.history]
    assert losses[-1] < 0.5 * losses[0]
    assert result.eval_accuracy > 0.9
    assert result.steps == 4 * 8 and result.world_size == 1


def test_reestimate_batchnorm_is_the_mean_of_the_batch_statistics():
    bn = nn.BatchNorm2d(3, momentum=0.3)
    bn.running_mean.fill_(50.0)  # stale statistics, as after a run of oscillating weights
    bn.running_var.fill_(0.01)
    x = torch.randn(40, 3, 4, 4) * torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1) + 5
    used = reestimate_batchnorm(nn.Sequential(bn).eval(), x, batches=3, batch_size=10)
    batches = x[:30].split(10)  # only the first 3 batches; the last 10 samples are not used
    mean = torch.stack([b.mean((0, 2, 3)) for b in batches]).mean(0)
    var = torch.stack([b.var((0, 2, 3), unbiased=True) for b in batches]).mean(0)
    assert used == 3 and not bn.training and bn.momentum == 0.3
    torch.testing.assert_close(bn.running_mean, mean)
    torch.testing.assert_close(bn.running_var, var)
    assert reestimate_batchnorm(nn.Linear(2, 2), torch.zeros(4, 2), 2, 2) == 0


def test_training_reestimates_batchnorm_without_changing_the_weights():
    x, y = quadrant_data(128)
    config = TrainConfig(epochs=1, batch_size=32, lr=1e-2, warmup_epochs=0)
    on, off = small_net(), small_net()
    train(on, (x, y), None, config)
    train(off, (x, y), None, dataclasses.replace(config, bn_reestimate_batches=0))
    for name, p in on.named_parameters():
        torch.testing.assert_close(p, dict(off.named_parameters())[name], rtol=0, atol=0)
    assert not torch.allclose(on.bn.running_var, off.bn.running_var)
    assert int(on.bn.num_batches_tracked) == 4  # all 128 samples, in 4 batches of 32 (fewer than 32)


def test_frozen_entries_stay_bit_identical_under_adamw_decay():
    torch.manual_seed(0)
    model = nn.Sequential(FakeQuantLinear(6, 3))
    mask = (torch.arange(18).view(3, 6) % 2 == 0)  # half of the weight entries, fixed
    at_cga_start = {}
    hooks = TrainHooks(
        on_phase=lambda m, phase: at_cga_start.update(w=m[0].weight.detach().clone()) if phase == "cga" else None,
        frozen_masks=lambda m: {"0.weight": mask},
    )
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(1))
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    config = TrainConfig(epochs=1, cga_epochs=2, batch_size=16, lr=0.1, cga_lr=0.1, weight_decay=0.5,
                         warmup_epochs=0)  # Adam moments are non-zero when CGA starts
    train(model, (x, y), None, config, hooks=hooks)
    w = model[0].weight.detach()
    assert torch.equal(w[mask], at_cga_start["w"][mask])  # neither decay nor momentum moved them
    assert (w[~mask] != at_cga_start["w"][~mask]).all()


def test_param_groups_and_extra_loss_hooks_are_used():
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(1))
    y = (x[:, 0] > 0).long()
    config = TrainConfig(epochs=2, batch_size=16, lr=0.05, weight_decay=0.0, warmup_epochs=0)
    torch.manual_seed(0)
    plain = nn.Linear(6, 2)
    torch.manual_seed(0)
    shrunk = nn.Linear(6, 2)
    asked = []

    def groups(model, weight_decay):
        asked.append(weight_decay)
        return [{"params": list(model.parameters()), "weight_decay": weight_decay}]

    train(plain, (x, y), None, config)
    hooks = TrainHooks(param_groups=groups, extra_loss=lambda m: 10.0 * m.weight.square().sum())
    train(shrunk, (x, y), None, config, hooks=hooks)
    assert asked == [0.0]
    assert shrunk.weight.norm() < 0.5 * plain.weight.norm()  # the penalty pulled the weights in


def _resume_run(tmp_path: Path, state: Path, crash_at: int | None = None, phases: list | None = None,
                inits: list | None = None):
    x, y = quadrant_data(128)
    progress_seen = []

    def after_step(model, step):
        if step == crash_at:
            raise KeyboardInterrupt

    hooks = TrainHooks(set_progress=lambda m, f: progress_seen.append(f), frozen_masks=frozen_far_from_thresholds,
                       on_phase=lambda m, p: phases.append(p) if phases is not None else None, after_step=after_step,
                       init=lambda m, xb: inits.append(xb.shape) if inits is not None else None)
    config = TrainConfig(epochs=2, cga_epochs=1, batch_size=32, lr=5e-3, warmup_epochs=1, checkpoint=state,
                         resume=True, seed=3)
    model, teacher = small_net(), small_net(seed=1).eval()
    augment = functools.partial(random_shift_flip, shift_px=1, flip=True)
    result = train(model, (x, y), quadrant_data(64, seed=2), config, teacher=teacher, hooks=hooks, augment=augment)
    return model, result, progress_seen


def test_resume_continues_bit_for_bit(tmp_path):
    inits = []
    straight, straight_result, straight_progress = _resume_run(tmp_path, tmp_path / "a.pt", inits=inits)
    assert inits == [(32, 1, 8, 8)]  # the first batch, once
    state = tmp_path / "b.pt"
    with pytest.raises(KeyboardInterrupt):
        _resume_run(tmp_path, state, crash_at=10)  # 4 steps per epoch: crashes in the CGA epoch
    phases, inits = [], []
    resumed, resumed_result, resumed_progress = _resume_run(tmp_path, state, phases=phases, inits=inits)
    assert resumed_result.resumed_epochs == 2 and phases == ["cga"] and inits == []  # init state is in the model
    assert resumed_progress == straight_progress[8:] == [1.0] * 4
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    drop_time = [dataclasses.replace(r, seconds=0.0) for r in straight_result.history]
    assert [dataclasses.replace(r, seconds=0.0) for r in resumed_result.history] == drop_time


def test_train_rejects_bad_settings(tmp_path):
    with pytest.raises(UsageError, match="batch_size must be >= 1, got 0; lr must be > 0, got 0$"):
        TrainConfig(lr=0, batch_size=0)  # every problem in one message
    x, y = quadrant_data(32)
    with pytest.raises(UsageError, match="frozen_masks"):
        train(small_net(), (x, y), None, TrainConfig(epochs=1, cga_epochs=1, warmup_epochs=0))
    with pytest.raises(DataError, match="32 inputs and 31 labels"):
        train(small_net(), (x, y[:-1]), None, TrainConfig(epochs=1))
    with pytest.raises(DataError, match="no batch of 64"):
        train(small_net(), (x, y), None, TrainConfig(epochs=1, batch_size=64))
    state = tmp_path / "s.pt"
    train(small_net(), (x, y), None, TrainConfig(epochs=1, batch_size=16, checkpoint=state))
    with pytest.raises(UsageError, match=r"lr=0.0005 \(now 0.001\)"):
        train(small_net(), (x, y), None, TrainConfig(epochs=1, batch_size=16, lr=1e-3, checkpoint=state, resume=True))


# --- DDP under torchrun: one launch (2 processes) runs `train` and then the command-line entry ---------------

DDP_WORKER = textwrap.dedent(
    """
    import os, sys
    import torch
    out, tests, data = sys.argv[1:4]
    sys.path.insert(0, tests)
    from test_train import frozen_far_from_thresholds, quadrant_data, small_net
    from edgebin.train import TrainConfig, TrainHooks, main, train

    def run(state, crash_at=None):
        def after_step(model, step):
            if step == crash_at:
                raise KeyboardInterrupt
        config = TrainConfig(epochs=2, cga_epochs=1, batch_size=32, lr=5e-3, checkpoint=os.path.join(out, state),
                             resume=True)
        model = small_net()
        result = train(model, quadrant_data(256), quadrant_data(64, seed=1), config, teacher=small_net(seed=1),
                       hooks=TrainHooks(frozen_masks=frozen_far_from_thresholds, after_step=after_step))
        return model, result

    model, result = run("state.pt")
    assert result.world_size == 2 and result.steps == 3 * 8, result  # 128 samples per rank, 16 per batch
    torch.save(model.state_dict(), os.path.join(out, f"rank{os.environ['RANK']}.pt"))
    try:
        run("crashed.pt", crash_at=12)  # both ranks stop halfway through epoch 2
    except KeyboardInterrupt:
        pass
    resumed, result = run("crashed.pt")
    assert result.resumed_epochs == 1
    torch.save(resumed.state_dict(), os.path.join(out, f"resumed{os.environ['RANK']}.pt"))
    code = main(["--arch", "resnet8", "--data", data, "--epochs", "1", "--batch-size", "32", "--lr", "3e-3",
                 "--out", os.path.join(out, "model.pt")])
    torch.distributed.barrier()  # rank 0 has written model.pt
    sys.exit(code or main(["--checkpoint", os.path.join(out, "model.pt"), "--data", data, "--method", "binary",
                           "--estimator", "biper", "--epochs", "2", "--batch-size", "32", "--lr", "3e-3",
                           "--out", os.path.join(out, "qat.pt")]))
    """
)


@pytest.fixture(scope="module")
def torchrun_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    x, y = quadrant_data(256)
    np.savez(out / "quadrants.npz", x=((x - x.min()) / (x.max() - x.min())).numpy(), y=y.numpy())
    (out / "worker.py").write_text(DDP_WORKER)
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", str(out / "worker.py"), str(out),
           str(Path(__file__).parent), str(out / "quadrants.npz")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_ddp_two_processes_end_with_identical_weights_and_resume_exactly(torchrun_out):
    rank0, rank1, resumed0, resumed1 = (torch.load(torchrun_out / f"{run}{r}.pt", weights_only=True)
                                        for run in ("rank", "resumed") for r in (0, 1))
    assert rank0.keys() == rank1.keys() == resumed0.keys() == resumed1.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
        assert torch.equal(rank0[name], resumed0[name]) and torch.equal(rank0[name], resumed1[name]), name
    state = torch.load(torchrun_out / "state.pt", weights_only=True)
    assert state["world_size"] == 2 and state["epoch"] == 3  # written by rank 0
    for name in rank0:
        assert torch.equal(state["model"][name], rank0[name]), name


def test_command_line_entry_trains_a_zoo_model_under_torchrun(torchrun_out):
    from edgebin.loading import load_model

    loaded = load_model(torchrun_out / "model.pt")
    assert loaded.arch == "resnet8" and loaded.input_shape == (1, 1, 8, 8)
    assert 0.0 <= loaded.metadata["eval_accuracy"] <= 1.0
    assert loaded.metadata["trained_with"].startswith("torchrun --nproc_per_node 2 -m edgebin.train --arch resnet8")


def test_qat_under_torchrun_trains_biper_in_two_stages_and_saves_a_reloadable_model(torchrun_out):
    from edgebin.loading import load_model
    from edgebin.quant.qat import BiPerSign

    loaded = load_model(torchrun_out / "qat.pt")
    assert loaded.metadata["qat_method"] == "binary"
    assert loaded.metadata["qat_recipe"]["default"]["estimator"] == "biper"
    assert [r["stage"] for r in loaded.metadata["train_history"]] == ["biper-stage1", "biper-stage2"]
    assert loaded.metadata["trained_with"].startswith("torchrun --nproc_per_node 2 -m edgebin.train --checkpoint")
    signs = [m for m in loaded.module.modules() if isinstance(m, BiPerSign)]
    assert signs and all(int(m.stage) == 2 for m in signs)
