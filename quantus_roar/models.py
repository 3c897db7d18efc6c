"""Reference models for the embedded datasets.

Both use ``nn.ReLU`` modules (not functional ReLU), so Guided Backprop can
hook them, and contain no BatchNorm in :class:`SmallCNN`, so many copies can
be trained at once by :class:`quantus_roar.retrain.TorchRetrainer`.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SmallCNN", "SmallResNet"]


class SmallCNN(nn.Sequential):
    """Two 3x3 convolutions with max-pooling between them, and a linear classifier.

    Sized for the 1x8x8 digits (about 11k parameters at ``width=16``) so that
    the ROAR grid of hundreds of retrains runs on a CPU; any ``in_channels``
    and square ``image_size`` divisible by 2 work. With the default recipe of
    :class:`~quantus_roar.retrain.TorchRetrainer` it reaches about 97.5% test
    accuracy on digits (mean of 25 seeds).

    Parameters
    ----------
    in_channels : int, default 1
    n_classes : int, default 10
    image_size : int, default 8
    width : int, default 16
        Channels of the first convolution; the second has twice as many.
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 10, image_size: int = 8,
                 width: int = 16):
        flat = 2 * width * (image_size // 2) ** 2
        super().__init__(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(flat, n_classes),
        )


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(c_out))
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """A small ResNet (three stages of one residual block) for 3x32x32 inputs.

    Parameters
    ----------
    in_channels : int, default 3
    n_classes : int, default 10
    width : int, default 16
        Channels of the first stage; each later stage doubles them.
    """

    def __init__(self, in_channels: int = 3, n_classes: int = 10, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = _Block(width, width, 1)
        self.layer2 = _Block(width, 2 * width, 2)
        self.layer3 = _Block(2 * width, 4 * width, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.pool(x).flatten(1))
