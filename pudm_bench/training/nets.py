"""The image classifiers the referee (``referee.py``) and the class-prior estimator (``prior.py``) both train: a
small CNN up to 32 px and a torchvision ResNet-18 (random init) at 64 px. They live below both, so that neither
imports the other."""

from __future__ import annotations

import torch
from torch import nn

FLIP_DATASETS = ("cifar10", "stl10", "celeba")  # natural images: a horizontal flip keeps the class


class SmallCNN(nn.Module):
    """Three conv blocks and a linear head; ``features`` is the 64-d penultimate layer, pre-activation (used for FD)."""

    def __init__(self, channels: int, num_classes: int, width: int = 32, feature_dim: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.BatchNorm2d(4 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(4 * width, feature_dim),
        )
        # Features are taken before the ReLU: after it, dead units make the feature covariance singular.
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(0.2), nn.Linear(feature_dim, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


class ResNetReferee(nn.Module):
    """torchvision ResNet-18 (random init) with ``features`` = the 512-d pooled output before ``fc``."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        from torchvision.models import resnet18

        self.net = resnet18(weights=None, num_classes=num_classes)
        if channels != 3:
            self.net.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        x = n.layer4(n.layer3(n.layer2(n.layer1(x))))
        return torch.flatten(n.avgpool(x), 1)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.net.fc(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))
