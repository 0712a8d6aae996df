"""Small CPU models covering the coupling structures (random weights, random BN statistics)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)
    )


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)  # reused, stateless: fine
        self.down = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else None

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x if self.down is None else self.down(x)  # in-place residual add
        return self.relu(out)


class ResNetBasic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.layer1 = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 16))
        self.layer2 = BasicBlock(16, 32, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class Bottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, stride: int = 1) -> None:
        super().__init__()
        cout = mid * 4
        self.a, self.b, self.c = conv_bn(cin, mid, 1), conv_bn(mid, mid, 3, stride), conv_bn(mid, cout, 1)
        self.down = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else None

    def forward(self, x):
        out = self.c(F.relu(self.b(F.relu(self.a(x)))))
        return F.relu(out + (x if self.down is None else self.down(x)))


class ResNetBottleneck(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.blocks = nn.Sequential(Bottleneck(16, 8), Bottleneck(32, 8), Bottleneck(32, 16, stride=2))
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.blocks(F.relu(self.stem(x)))
        return self.fc(x.mean((2, 3)))  # global pooling by hand


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hid = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.expand = nn.Sequential(
            nn.Conv2d(cin, hid, 1, bias=False), nn.BatchNorm2d(hid), nn.ReLU6(inplace=True)
        )
        self.dw = nn.Sequential(
            nn.Conv2d(hid, hid, 3, stride, 1, groups=hid, bias=False),
            nn.BatchNorm2d(hid),
            nn.ReLU6(inplace=True),
        )
        self.project = nn.Sequential(nn.Conv2d(hid, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.project(self.dw(self.expand(x)))
        return x + out if self.use_res else out


class MobileNetV2(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.blocks = nn.Sequential(
            InvertedResidual(16, 16, 1, 2), InvertedResidual(16, 24, 2, 4), InvertedResidual(24, 24, 1, 4)
        )
        self.head = nn.Sequential(nn.Conv2d(24, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU6())
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(64, 10))

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.bn, self.conv = nn.BatchNorm2d(cin), nn.Conv2d(cin, growth, 3, 1, 1, bias=False)

    def forward(self, x):
        return torch.cat([x, self.conv(F.relu(self.bn(x)))], 1)


class DenseNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.dense = nn.Sequential(DenseLayer(16, 8), DenseLayer(24, 8), DenseLayer(32, 8))
        self.trans = nn.Sequential(
            nn.BatchNorm2d(40), nn.ReLU(), nn.Conv2d(40, 24, 1, bias=False), nn.AvgPool2d(2)
        )
        self.fc = nn.Linear(24 * 4 * 4, 10)

    def forward(self, x):
        x = self.trans(self.dense(self.stem(x)))
        x = F.adaptive_avg_pool2d(x, 4)
        return self.fc(x.view(x.size(0), -1))  # flatten of a 4x4 map: 16 columns per channel


class ResNeXtBlock(nn.Module):
    def __init__(self, cin: int, width: int, groups: int) -> None:
        super().__init__()
        self.a = conv_bn(cin, width, 1)
        self.b = conv_bn(width, width, 3, groups=groups)
        self.c = conv_bn(width, cin, 1)

    def forward(self, x):
        return F.relu(x + self.c(F.relu(self.b(F.relu(self.a(x))))))


class ResNeXt(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.block = ResNeXtBlock(16, 32, groups=4)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.block(F.relu(self.stem(x))), 1).flatten(1))


class SEBlock(nn.Module):
    def __init__(self, c: int, r: int = 4) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, c // r, 1), nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return x * s


class SELinear(nn.Module):
    """SE with Linear layers and a view back to [N, C, 1, 1]."""

    def __init__(self, c: int, r: int = 4) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(c, c // r), nn.Linear(c // r, c)

    def forward(self, x):
        n, c = x.shape[:2]
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3))))))
        return x * s.view(n, c, 1, 1)


class SENet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, 1, 1), nn.BatchNorm2d(16)
        self.se1 = SEBlock(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32)
        self.se2 = SELinear(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.se1(F.relu(self.bn1(self.conv1(x))))
        x = self.se2(F.relu(self.bn2(self.conv2(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, dim * 3), nn.Linear(dim, dim)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        att = (q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5).softmax(-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, t, c))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4, hidden: int = 64) -> None:
        super().__init__()
        self.embed = nn.Linear(12, dim)
        self.ln1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.head = nn.Linear(dim, 5)

    def forward(self, x):  # x: [B, T, 12]
        x = self.embed(x)
        x = x + self.attn(self.ln1(x))
        x = x + self.ffn(self.ln2(x))
        return self.head(x[:, 0])


class ControlFlow(nn.Module):
    """Data-dependent branches and loops: torch.fx cannot trace this."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, 1, 1), nn.BatchNorm2d(16)
        self.pos = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1), nn.ReLU())
        self.neg = nn.Sequential(nn.Conv2d(16, 16, 1), nn.Sigmoid())
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.pos(h) if x.mean() > 0 else self.neg(h)
        for _ in range(int(x.abs().max() > 10) + 1):
            h = F.max_pool2d(h, 2)
        return self.fc(h.mean((2, 3)))


class SharedWeights(nn.Module):
    """A conv called twice and a linear tied to another linear's weight."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1)
        self.shared = nn.Conv2d(16, 16, 3, 1, 1)  # called twice
        self.conv2 = nn.Conv2d(16, 32, 3, 1, 1)
        self.fc1, self.fc2 = nn.Linear(32, 32), nn.Linear(32, 32)
        self.fc2.weight = self.fc1.weight  # tied
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        x = F.relu(self.shared(F.relu(self.shared(F.relu(self.conv1(x))))))
        x = F.relu(self.conv2(x)).mean((2, 3))
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x)))))


class HardCodedView(nn.Module):
    """Traces fine, but its forward hard-codes the channel count: pruning conv2 breaks it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, 1, 1), nn.Conv2d(8, 8, 3, 2, 1)
        self.fc = nn.Linear(8 * 4 * 4, 4)

    def forward(self, x):
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 4).reshape(-1, 8 * 16))


def init_random(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and non-trivial BN statistics/affine parameters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(
                    torch.randn(m.weight.shape, generator=gen) * (1.0 / m.weight[0].numel()) ** 0.5
                )
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
    return model.eval()


ZOO = {
    "resnet_basic": (ResNetBasic, (2, 3, 16, 16)),
    "resnet_bottleneck": (ResNetBottleneck, (2, 3, 16, 16)),
    "mobilenet_v2": (MobileNetV2, (2, 3, 32, 32)),
    "densenet": (DenseNet, (2, 3, 16, 16)),
    "resnext": (ResNeXt, (2, 3, 16, 16)),
    "senet": (SENet, (2, 3, 16, 16)),
    "transformer": (TransformerBlock, (2, 6, 12)),
    "control_flow": (ControlFlow, (2, 3, 16, 16)),
}


def make(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    cls, shape = ZOO[name]
    torch.manual_seed(seed)
    return init_random(cls(), seed), torch.randn(*shape, generator=torch.Generator().manual_seed(123))
