"""A small residual network for small grayscale or colour images (e.g. the example digits).

Reaches ~99.7% validation accuracy on the example digits (python -m examples.digits) in 10
epochs (99.7-100% over three seeds; about 10 s of CPU training on two cores).
A Python model spec defines model(num_classes, input_shape) and may define optimizer(params),
loss(), scheduler(optimizer) and the constants EPOCHS, BATCH_SIZE and TRANSFORM.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

EPOCHS = 10
BATCH_SIZE = 64
TRANSFORM = {"mean": 0.5, "std": 0.5}  # pixels scaled to 0..1, then (x - 0.5) / 0.5


class Block(nn.Module):
    """Two 3x3 convolutions with a shortcut; stride 2 halves the image and widens it."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def model(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    channels = input_shape[0]
    return nn.Sequential(
        nn.Conv2d(channels, 16, 3, 1, 1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        Block(16, 16),
        Block(16, 32, stride=2),
        Block(32, 64, stride=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, num_classes),
    )


def optimizer(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=0.003, weight_decay=1e-4)
