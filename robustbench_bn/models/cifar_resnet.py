"""CIFAR ResNets (He et al. 2016, "Deep Residual Learning", section 4.2): three stages of n
basic blocks (16, 32, 64 channels), depth 6n + 2, in the two shortcut styles that published
checkpoints use.

* ``resnet20``, ``resnet26``: parameter-free "option A" shortcuts (stride-2 subsampling and
  zero channel padding). Parameter names ``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
  ``linear``: those of the widely used akamaster/pytorch_resnet_cifar10 checkpoints.
* ``resnet20_projection``: "option B" projection shortcuts (1x1 conv + BN) where the shape
  changes. Parameter names ``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
  ``layer2.0.downsample.0`` / ``.1``, ``fc``: those of chenyaofo/CIFAR-pretrained-models,
  whose ResNet-20 weights Benz et al. 2021 evaluate (phibenz/batch_norm_adaptation.pytorch,
  networks/resnet_cifar.py and utils/network.py: ``cifar_resnet20(pretrained='cifar10')``).
  :data:`PRETRAINED_URLS` lists those weights' release URLs, as cited there.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

#: chenyaofo/CIFAR-pretrained-models release assets, as used by Benz et al. 2021.
PRETRAINED_URLS = {
    ("resnet20_projection", "cifar10"): (
        "https://github.com/chenyaofo/CIFAR-pretrained-models/releases/download/resnet/"
        "cifar10-resnet20-30abc31d.pth"
    ),
    ("resnet20_projection", "cifar100"): (
        "https://github.com/chenyaofo/CIFAR-pretrained-models/releases/download/resnet/"
        "cifar100-resnet20-8412cc70.pth"
    ),
}


class _ZeroPadShortcut(nn.Module):
    def __init__(self, extra_channels: int) -> None:
        super().__init__()
        self.extra_channels = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.extra_channels // 2
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, half, self.extra_channels - half))


class CifarBasicBlock(nn.Module):
    """Two 3x3 convs with BN; the shortcut is zero padding ("A") or a projection ("B")."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, *, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        reshapes = stride != 1 or in_channels != out_channels
        # Attribute names are the checkpoints' own: akamaster's "shortcut" (parameter-free,
        # so absent from its state dict) and chenyaofo's "downsample".
        self.shortcut: nn.Module = nn.Identity()
        self.downsample: nn.Module | None = None
        if reshapes and shortcut == "zero_pad":
            self.shortcut = _ZeroPadShortcut(out_channels - in_channels)
        elif reshapes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = self.downsample(x) if self.downsample is not None else self.shortcut(x)
        return F.relu(out + identity)


class CifarResNet(nn.Module):
    """A CIFAR ResNet of depth 6n + 2; ``shortcut`` is ``zero_pad`` (A) or ``projection`` (B)."""

    def __init__(
        self, *, depth: int = 20, num_classes: int = 10, shortcut: str = "zero_pad"
    ) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
        if shortcut not in ("zero_pad", "projection"):
            raise ValueError(f"shortcut must be 'zero_pad' or 'projection', got {shortcut!r}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, blocks, 1, shortcut)
        self.layer2 = self._stage(16, 32, blocks, 2, shortcut)
        self.layer3 = self._stage(32, 64, blocks, 2, shortcut)
        classifier = nn.Linear(64, num_classes)
        # The classifier's name is the checkpoints': akamaster "linear", chenyaofo "fc".
        self.classifier_name = "linear" if shortcut == "zero_pad" else "fc"
        self.add_module(self.classifier_name, classifier)

    @staticmethod
    def _stage(
        in_channels: int, out_channels: int, blocks: int, stride: int, shortcut: str
    ) -> nn.Sequential:
        layers = [CifarBasicBlock(in_channels, out_channels, stride, shortcut=shortcut)]
        layers += [
            CifarBasicBlock(out_channels, out_channels, 1, shortcut=shortcut)
            for _ in range(blocks - 1)
        ]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return getattr(self, self.classifier_name)(out)


def resnet20(*, num_classes: int = 10) -> CifarResNet:
    """ResNet-20, option A shortcuts, akamaster parameter names."""
    return CifarResNet(depth=20, num_classes=num_classes, shortcut="zero_pad")


def resnet26(*, num_classes: int = 10) -> CifarResNet:
    """ResNet-26, option A shortcuts, akamaster parameter names."""
    return CifarResNet(depth=26, num_classes=num_classes, shortcut="zero_pad")


def resnet20_projection(*, num_classes: int = 10) -> CifarResNet:
    """ResNet-20, projection shortcuts, chenyaofo parameter names (Benz et al. 2021)."""
    return CifarResNet(depth=20, num_classes=num_classes, shortcut="projection")


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "resnet20": resnet20,
    "resnet26": resnet26,
    "resnet20_projection": resnet20_projection,
}
