"""MobileNetV1 with a width multiplier (Howard et al., arXiv:1704.04861), 0.25 by default.

The ImageNet network halves the resolution five times (32×). For inputs under 64 pixels the stem keeps
stride 1, so 28×28 ends at 2×2 rather than vanishing; 96×96 (visual wake words) keeps all five.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from edgebin.errors import UsageError
from edgebin.zoo.blocks import check_channels, conv_bn_relu, depthwise_separable, pair

# (output channels at width 1.0, stride) of the 13 depthwise-separable blocks.
BLOCKS = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)  # fmt: skip


class MobileNetV1(nn.Module):
    """Stem conv3×3 32·width → 13 depthwise-separable blocks → average pool → head.

    model = MobileNetV1(input_size=28)            # width 0.25, about 0.2 M parameters
    vww = MobileNetV1(in_channels=3, num_classes=2, input_size=96)
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        input_size: int | tuple[int, int] = 28,
        width: float = 0.25,
    ) -> None:
        super().__init__()
        check_channels("mobilenet_v1_025", in_channels, num_classes)
        h, w = pair(input_size)
        if min(h, w) < 8:
            raise UsageError(f"mobilenet_v1_025: input_size {input_size!r} is too small; it needs at least 8×8")
        if not 0 < width <= 4:
            raise UsageError(f"mobilenet_v1_025: width must be in (0, 4], got {width}")
        self.input_shape = (1, in_channels, h, w)

        def scaled(channels: int) -> int:
            return max(8, int(channels * width))

        stem_stride = 2 if min(h, w) >= 64 else 1
        self.stem = conv_bn_relu(in_channels, scaled(32), 3, stride=stem_stride, padding=1)
        layers, channels = [], scaled(32)
        for i, (out, stride) in enumerate(BLOCKS):
            layers.append((f"ds{i + 1}", depthwise_separable(channels, scaled(out), stride)))
            channels = scaled(out)
        self.blocks = nn.Sequential(OrderedDict(layers))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.flatten(self.pool(self.blocks(self.stem(x)))))
