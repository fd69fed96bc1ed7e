"""Reference edge architectures, built by name.

    from edgebin import zoo
    model = zoo.create("resnet8", in_channels=1, num_classes=10, input_size=28)
    model.input_shape                               # (1, 1, 28, 28): what export and compile should use

Every constructor takes `in_channels`, `num_classes` and `input_size` (an int for square inputs, or (H, W)),
plus model-specific options. Every model names its first layer block `stem` (`patch_embed` in tiny_vit, as
in DeiT) and its last linear layer `head`, so a recipe can keep both at higher precision with one override
each. The CNNs put the default input at 28×28×1; ds_cnn's is the KWS 49×10×1. All are plain nn modules
(Conv2d, BatchNorm2d, ReLU, Linear, pooling, LayerNorm, GELU) with no data-dependent control flow, so
`torch.export` captures them and the quantizer can swap every layer.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from edgebin.errors import UsageError, unknown_name
from edgebin.zoo.ds_cnn import DSCNN
from edgebin.zoo.lenet5 import LeNet5
from edgebin.zoo.mobilenet_v1 import MobileNetV1
from edgebin.zoo.resnet8 import ResNet8
from edgebin.zoo.tiny_vit import TinyViT

MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet5": LeNet5,
    "resnet8": ResNet8,
    "ds_cnn": DSCNN,
    "mobilenet_v1_025": MobileNetV1,
    "tiny_vit": TinyViT,
}


def names() -> tuple[str, ...]:
    """The architecture names `create` accepts."""
    return tuple(MODELS)


def create(name: str, **kwargs: object) -> nn.Module:
    """Build architecture `name` with fresh weights; unknown names and options raise UsageError."""
    if name not in MODELS:
        raise unknown_name("architecture", name, names())
    constructor = MODELS[name]
    signature = inspect.signature(constructor)
    unknown = sorted(set(kwargs) - set(signature.parameters))
    if unknown:
        valid = ", ".join(signature.parameters)
        raise UsageError(f"{name} has no option {', '.join(unknown)}; its options are: {valid}")
    return constructor(**kwargs)


__all__ = ["MODELS", "names", "create", "DSCNN", "LeNet5", "MobileNetV1", "ResNet8", "TinyViT"]
