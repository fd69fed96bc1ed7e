"""Train the example checkpoints in models/: LeNet-5 and ResNet-8 on Fashion-MNIST, on CPU, seeded.

    python tools/train_examples.py --arch all                  # each architecture's default epochs
    python tools/train_examples.py --arch resnet8 --epochs 15 --seed 0 --threads 2

Training uses the 60,000 training images (random 2-pixel shifts and horizontal flips), AdamW with a
linear warm-up and cosine decay per step, and fixed seeds with deterministic kernels. Results are
bit-for-bit repeatable for the same seed, thread count and torch build. Accuracy is measured on all
10,000 test images once training ends; no epoch is chosen by test accuracy. Each checkpoint is a plain dict
(`torch.load(path, weights_only=True)` reads it) written atomically to <out>/<arch>_fashion.pt.

The pieces (augmentation, parameter groups, schedule, accuracy) are `edgebin.train`'s. The loop stays here, a
single process with one generator for order and augmentation, so that the committed checkpoints can be
reproduced bit for bit; QAT and fine-tuning use `edgebin.train.train` (DDP, checkpoints, distillation).
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgebin import zoo
from edgebin.atomic import atomic_write_bytes
from edgebin.data import Dataset, Normalization, load_dataset
from edgebin.train import evaluate, param_groups, random_shift_flip, warmup_cosine_lr

ARCHS = ("lenet5", "resnet8", "tiny_vit")
DEFAULT_EPOCHS = {"lenet5": 30, "resnet8": 15, "tiny_vit": 12}
DATASET = "fashion-mnist"
BATCH_SIZE = 128
LR = 2e-3
WEIGHT_DECAY = 0.05  # decoupled (AdamW); BN and bias parameters are not decayed
WARMUP_EPOCHS = 1
SHIFT_PX = 2


def seed_everything(seed: int) -> None:
    """Same seed, same run: Python, NumPy and torch RNGs, and deterministic kernels only."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


def train(arch: str, ds: Dataset, epochs: int, seed: int) -> tuple[nn.Module, float, float]:
    """Train `arch` from scratch; returns the model, its test accuracy and the seconds taken."""
    seed_everything(seed)
    generator = torch.Generator().manual_seed(seed)
    c, h, w = ds.x_train.shape[1:]
    model = zoo.create(arch, in_channels=c, num_classes=len(ds.classes), input_size=h)
    model = model.to(memory_format=torch.channels_last)  # several times faster for convs on CPU
    norm = ds.normalization()
    mean = torch.tensor(norm.mean).view(1, -1, 1, 1)
    std = torch.tensor(norm.std).view(1, -1, 1, 1)
    x_train, y_train = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)
    x_test = torch.from_numpy(norm.apply(ds.x_test))
    y_test = torch.from_numpy(ds.y_test)

    optimizer = torch.optim.AdamW(param_groups(model, WEIGHT_DECAY), lr=LR)
    steps_per_epoch = len(x_train) // BATCH_SIZE  # the last partial batch is dropped
    total, warmup = epochs * steps_per_epoch, WARMUP_EPOCHS * steps_per_epoch
    step, start = 0, time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        loss_sum, correct = 0.0, 0
        for b in range(steps_per_epoch):
            idx = order[b * BATCH_SIZE : (b + 1) * BATCH_SIZE]
            xb = (random_shift_flip(x_train[idx], generator, shift_px=SHIFT_PX) - mean) / std
            xb = xb.contiguous(memory_format=torch.channels_last)
            yb = y_train[idx]
            for group in optimizer.param_groups:
                group["lr"] = warmup_cosine_lr(step, total_steps=total, warmup_steps=warmup, peak_lr=LR)
            logits = model(xb)
            loss = nn.functional.cross_entropy(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            loss_sum += float(loss.detach()) * len(yb)
            correct += int((logits.argmax(1) == yb).sum())
        seen = steps_per_epoch * BATCH_SIZE
        test_acc = evaluate(model, x_test, y_test)
        print(
            f"{arch} epoch {epoch + 1:2d}/{epochs}  loss {loss_sum / seen:.4f}  train {correct / seen:.2%}  "
            f"test {test_acc:.2%}  {time.perf_counter() - start:.0f} s",
            flush=True,
        )
    model = model.to(memory_format=torch.contiguous_format).eval()
    return model, evaluate(model, x_test, y_test), time.perf_counter() - start


def checkpoint(arch: str, model: nn.Module, ds: Dataset, acc: float, epochs: int, args) -> dict:
    """The documented checkpoint dict; only tensors, numbers, strings, lists and dicts."""
    c, h, _ = ds.x_train.shape[1:]
    norm: Normalization = ds.normalization()
    return {
        "edgebin_checkpoint": 1,
        "arch": arch,
        "arch_kwargs": {"in_channels": int(c), "num_classes": len(ds.classes), "input_size": int(h)},
        "state_dict": {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()},
        "input_shape": [1, int(c), int(h), int(h)],
        "normalization": norm.to_dict(),
        "dataset": ds.name,
        "classes": list(ds.classes),
        "fp32_test_accuracy": acc,
        "trained_with": (
            f"python tools/train_examples.py --arch {arch} --epochs {epochs} --seed {args.seed} "
            f"--threads {args.threads}"
        ),
        "torch_version": str(torch.__version__),  # TorchVersion is not weights_only-safe
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=(*ARCHS, "all"), default="all")
    parser.add_argument("--epochs", type=int, default=None, help=f"default: {DEFAULT_EPOCHS}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("models"))
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (results depend on it)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    ds = load_dataset(DATASET)
    for arch in ARCHS if args.arch == "all" else (args.arch,):
        epochs = args.epochs or DEFAULT_EPOCHS[arch]
        model, acc, seconds = train(arch, ds, epochs, args.seed)
        path = args.out / f"{arch}_fashion.pt"
        buf = io.BytesIO()
        torch.save(checkpoint(arch, model, ds, acc, epochs, args), buf)
        atomic_write_bytes(path, buf.getvalue())
        params = sum(p.numel() for p in model.parameters())
        print(
            f"{arch}: test accuracy {acc:.4f} on {len(ds.y_test)} images, {params} parameters, "
            f"{seconds / 60:.1f} min, saved {path} ({path.stat().st_size / 1024:.0f} KiB)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
