"""DS-CNN (small) from the MLPerf Tiny keyword-spotting benchmark (Zhang et al., arXiv:1711.07128).

The default input is the KWS one: 49 frames × 10 MFCCs, one channel. Global average pooling makes any
input size work, so `input_size=28` runs it on 28×28 images. The stem pads (4, 1) on each side, a
symmetric stand-in for TensorFlow's "same" padding; the training-time dropout of the reference is left out.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from edgebin.errors import UsageError
from edgebin.zoo.blocks import check_channels, conv_bn_relu, depthwise_separable, pair


class DSCNN(nn.Module):
    """conv 10×4/2 64 → 4 depthwise-separable blocks of 64 → average pool → head.

    model = DSCNN(num_classes=12)                 # 49×10 MFCC input
    image_model = DSCNN(input_size=28)            # same layers on 28×28 images
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        input_size: int | tuple[int, int] = (49, 10),
        filters: int = 64,
        num_blocks: int = 4,
    ) -> None:
        super().__init__()
        check_channels("ds_cnn", in_channels, num_classes)
        h, w = pair(input_size)
        if min(h, w) < 4:
            raise UsageError(f"ds_cnn: input_size {input_size!r} is too small; it needs at least 4×4")
        self.input_shape = (1, in_channels, h, w)
        self.stem = conv_bn_relu(in_channels, filters, (10, 4), stride=2, padding=(4, 1))
        self.blocks = nn.Sequential(
            OrderedDict((f"ds{i + 1}", depthwise_separable(filters, filters)) for i in range(num_blocks))
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(filters, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.flatten(self.pool(self.blocks(self.stem(x)))))
