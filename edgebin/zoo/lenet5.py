"""LeNet-5 (LeCun et al., 1998) with ReLU, max pooling and BatchNorm after each conv.

The original takes 32×32 inputs; smaller inputs get the first conv padded by 2, so 28×28 has the same
geometry as the paper (16 maps of 5×5 into the first fully connected layer).
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from edgebin.errors import UsageError
from edgebin.zoo.blocks import check_channels, conv_bn_relu, pair


class LeNet5(nn.Module):
    """conv5×5 6 → pool → conv5×5 16 → pool → fc 120 → fc 84 → head.

    model = LeNet5(in_channels=1, num_classes=10, input_size=28)
    logits = model(torch.zeros(1, 1, 28, 28))  # (1, 10)
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, input_size: int | tuple[int, int] = 28) -> None:
        super().__init__()
        check_channels("lenet5", in_channels, num_classes)
        h, w = pair(input_size)
        self.input_shape = (1, in_channels, h, w)
        pad = 2 if min(h, w) < 32 else 0
        fh, fw = (((h + 2 * pad - 4) // 2 - 4) // 2, ((w + 2 * pad - 4) // 2 - 4) // 2)
        if fh < 1 or fw < 1:
            raise UsageError(f"lenet5: input_size {input_size!r} is too small; it needs at least 12×12")
        self.stem = nn.Sequential(OrderedDict(block=conv_bn_relu(in_channels, 6, 5, padding=pad), pool=nn.MaxPool2d(2)))
        self.features = nn.Sequential(OrderedDict(block=conv_bn_relu(6, 16, 5), pool=nn.MaxPool2d(2)))
        self.classifier = nn.Sequential(
            OrderedDict(
                flatten=nn.Flatten(),
                fc1=nn.Linear(16 * fh * fw, 120),
                relu1=nn.ReLU(),
                fc2=nn.Linear(120, 84),
                relu2=nn.ReLU(),
            )
        )
        self.head = nn.Linear(84, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.classifier(self.features(self.stem(x))))
