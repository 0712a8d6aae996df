"""Small CPU models for the search tests (random weights, non-trivial BatchNorm statistics)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def init_random(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BN statistics/affine parameters, reproducibly; returns the model in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (1.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
    return model.eval()


class TinyNet(nn.Module):
    """Every coupling structure in a few channels: BN, depthwise, grouped conv, concat, add, flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.dw, self.bn_dw = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False)
        self.side = nn.Conv2d(8, 4, 1)
        self.merge = nn.Conv2d(12, 6, 1)
        self.skip = nn.Conv2d(8, 6, 1, bias=False)
        self.fc1 = nn.Linear(6 * 2 * 2, 10)
        self.fc2 = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = F.relu(self.bn1(self.conv1(x)))
        a = F.relu(self.grouped(F.relu(self.conv2(F.relu(self.bn_dw(self.dw(x1)))))))
        y = F.relu(self.merge(torch.cat([a, self.side(x1)], 1)) + self.skip(x1))
        return self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(y, 2).flatten(1))))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.expand = nn.Sequential(nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6())
        self.dw = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
        )
        self.project = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.dw(self.expand(x)))
        return x + out if self.use_res else out


class MobileNetV2Like(nn.Module):
    """Stem, three inverted residual blocks (one with a residual add), 1x1 head, linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6())
        self.blocks = nn.Sequential(
            InvertedResidual(32, 32, 1, 3), InvertedResidual(32, 48, 2, 4), InvertedResidual(48, 48, 1, 4)
        )
        self.head = nn.Sequential(nn.Conv2d(48, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU6())
        self.classifier = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))


class ResNeXtLike(nn.Module):
    """A bottleneck whose 3x3 conv has groups=4: its input group must lose channels 4 at a time."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32)
        self.a = nn.Conv2d(32, 64, 1, bias=False)
        self.b = nn.Conv2d(64, 64, 3, padding=1, groups=4, bias=False)
        self.c = nn.Conv2d(64, 32, 1, bias=False)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.stem(x)))
        x = F.relu(x + self.c(F.relu(self.b(F.relu(self.a(x))))))
        return self.fc(x.mean((2, 3)))


class DecoderNet(nn.Module):
    """A transposed conv in the middle (its output group cannot be written as a filter_pruner override)."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.up(F.relu(self.enc(x)))))


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))


def resnet_like() -> nn.Module:
    from lightning_prune.demos.models import SmallResNet

    return SmallResNet(in_channels=3, num_classes=10, widths=(32, 64), blocks_per_stage=2)


MODELS = {
    "tiny": (TinyNet, (4, 3, 6, 6)),
    "resnet": (resnet_like, (4, 3, 16, 16)),
    "mobilenet_v2": (MobileNetV2Like, (4, 3, 32, 32)),
    "resnext": (ResNeXtLike, (4, 3, 8, 8)),
    "mlp": (mlp, (8, 32)),
}


def make(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """The model ``name`` with random weights (eval mode) and a fixed random input batch."""
    build, shape = MODELS[name]
    torch.manual_seed(seed)
    return init_random(build(), seed), torch.randn(*shape, generator=torch.Generator().manual_seed(123))
