"""ResNet-8 as in the MLPerf Tiny image-classification benchmark, for any small square input.

Stem conv3×3 16 + BN + ReLU, then three residual stacks of 16, 32 and 64 filters with strides 1, 2, 2,
global average pooling and a linear head. As in MLPerf Tiny, a stack whose shape changes gets a 1×1 conv
shortcut (with bias, no BN); the others add their input unchanged.
"""

from __future__ import annotations

from torch import Tensor, nn

from edgebin.errors import UsageError
from edgebin.zoo.blocks import check_channels, conv_bn_relu, pair


class ResidualStack(nn.Module):
    """conv3×3-BN-ReLU-conv3×3-BN, plus the shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        changes_shape = stride != 1 or in_channels != out_channels
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride) if changes_shape else nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(y + self.shortcut(x))


class ResNet8(nn.Module):
    """MLPerf Tiny ResNet-8 (about 78k parameters for 1 input channel and 10 classes).

    model = ResNet8(in_channels=1, num_classes=10, input_size=28)
    cifar_shaped = ResNet8(in_channels=3, input_size=32)  # the MLPerf Tiny input
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, input_size: int | tuple[int, int] = 28) -> None:
        super().__init__()
        check_channels("resnet8", in_channels, num_classes)
        h, w = pair(input_size)
        if min(h, w) < 4:
            raise UsageError(f"resnet8: input_size {input_size!r} is too small; it needs at least 4×4")
        self.input_shape = (1, in_channels, h, w)
        self.stem = conv_bn_relu(in_channels, 16, 3, padding=1)
        self.stack1 = ResidualStack(16, 16, 1)
        self.stack2 = ResidualStack(16, 32, 2)
        self.stack3 = ResidualStack(32, 64, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stack3(self.stack2(self.stack1(self.stem(x))))
        return self.head(self.flatten(self.pool(x)))
