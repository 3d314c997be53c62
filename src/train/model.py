"""The PyTorch CIFAR-10 tutorial's network (LeNet-style), as the Azure ML tutorial ships it."""

import torch
import torch.nn as nn
import torch.nn.functional as F


class Net(nn.Module):
    """conv(3→6, 5) → pool → conv(6→16, 5) → pool → fc 120 → fc 84 → fc 10, for 3x32x32 images."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)
