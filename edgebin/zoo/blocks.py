"""Building blocks shared by the zoo models: conv + BN + ReLU, and input-size checks."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from edgebin.errors import UsageError


def pair(value: int | tuple[int, int] | list[int], what: str = "input_size") -> tuple[int, int]:
    """(H, W) from an int (square) or a pair; UsageError for anything else."""
    if isinstance(value, int) and not isinstance(value, bool):
        h = w = value
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        h, w = value
    else:
        raise UsageError(f"{what} must be an int or (H, W), got {value!r}")
    if h < 1 or w < 1:
        raise UsageError(f"{what} must be positive, got {value!r}")
    return h, w


def check_channels(model: str, in_channels: int, num_classes: int) -> None:
    """Reject channel and class counts that cannot build a model."""
    if in_channels < 1:
        raise UsageError(f"{model}: in_channels must be >= 1, got {in_channels}")
    if num_classes < 1:
        raise UsageError(f"{model}: num_classes must be >= 1, got {num_classes}")


def conv_bn_relu(
    in_channels: int,
    out_channels: int,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    groups: int = 1,
) -> nn.Sequential:
    """Conv (no bias: the BN after it has one) + BN + ReLU, with names `conv`, `bn`, `relu`."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False)
    return nn.Sequential(OrderedDict(conv=conv, bn=nn.BatchNorm2d(out_channels), relu=nn.ReLU()))


def depthwise_separable(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """Depthwise 3×3 + BN + ReLU, then pointwise 1×1 + BN + ReLU (MobileNetV1, arXiv:1704.04861)."""
    return nn.Sequential(
        OrderedDict(
            depthwise=conv_bn_relu(in_channels, in_channels, 3, stride, 1, groups=in_channels),
            pointwise=conv_bn_relu(in_channels, out_channels, 1),
        )
    )
