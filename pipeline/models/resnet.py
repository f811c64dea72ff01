"""ResNet trunks with configurable widths, built from torchvision's residual blocks (SE variants included):
torchvision's strided layout (teachers) and the paper's stride-1 layout with max pools (students, Table 2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1
from torchvision.ops import SqueezeExcitation

SE_REDUCTION = 16  # squeeze ratio of the SE-ResNet paper


def _squeeze_excitation(channels: int) -> SqueezeExcitation:
    return SqueezeExcitation(channels, max(channels // SE_REDUCTION, 4))


class SqueezeExcited:
    """Mixin for a torchvision residual block: squeeze-and-excitation on the residual branch, before the addition.

    The branch is the block's own conv1/bn1 … convN/bnN (N = `branch_depth`), ReLU between them."""

    branch_depth: int

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__(inplanes, planes, stride, downsample)
        self.se = _squeeze_excitation(planes * self.expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = x
        for index in range(1, self.branch_depth + 1):
            out = getattr(self, f"bn{index}")(getattr(self, f"conv{index}")(out))
            out = self.se(out) if index == self.branch_depth else self.relu(out)
        return self.relu(out + identity)


class SEBasicBlock(SqueezeExcited, BasicBlock):
    """torchvision's BasicBlock (3×3-3×3) with squeeze-and-excitation."""

    branch_depth = 2


class SEBottleneck(SqueezeExcited, Bottleneck):
    """torchvision's 1×1-3×3-1×1 Bottleneck with squeeze-and-excitation."""

    branch_depth = 3


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck, "se-basic": SEBasicBlock, "se-bottleneck": SEBottleneck}


@dataclass(frozen=True)
class TrunkSpec:
    """Block type, blocks per stage and stage widths; `resnet34` is ("basic", (3, 4, 6, 3), (64, 128, 256, 512))."""

    block: str
    layers: tuple[int, ...]
    widths: tuple[int, ...]
    in_channels: int = 3
    stem_kernel: int = 7

    @property
    def out_channels(self) -> int:
        return self.widths[-1] * BLOCKS[self.block].expansion

    def build(self) -> ResNetTrunk:
        return ResNetTrunk(self)


class ResNetTrunk(nn.Module):
    """Stem (k×k conv stride 2 + max-pool) and residual stages; (B, C, H, W) → (B, out_channels, H/32, W/32)."""

    def __init__(self, spec: TrunkSpec):
        super().__init__()
        block = BLOCKS[spec.block]
        stem_width = spec.widths[0]
        self.stem = nn.Sequential(
            nn.Conv2d(spec.in_channels, stem_width, spec.stem_kernel, stride=2, padding=spec.stem_kernel // 2, bias=False),
            nn.BatchNorm2d(stem_width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        stages = []
        in_planes = stem_width
        for index, (n_blocks, width) in enumerate(zip(spec.layers, spec.widths)):
            stage, in_planes = _residual_blocks(block, in_planes, width, n_blocks, stride=1 if index == 0 else 2)
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        _init_convs(self)

    def forward(self, x):
        return self.stages(self.stem(x))


def _residual_blocks(block, in_planes: int, width: int, n_blocks: int, stride: int) -> tuple[list[nn.Module], int]:
    """One stage's blocks (the first strides and projects the shortcut when the shape changes); returns them and
    the stage's output channels."""
    out_planes = width * block.expansion
    blocks = []
    for index in range(n_blocks):
        downsample = None
        if index == 0 and (stride != 1 or in_planes != out_planes):
            downsample = nn.Sequential(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))
        blocks.append(block(in_planes, width, stride if index == 0 else 1, downsample))
        in_planes = out_planes
    return blocks, out_planes


def _init_convs(trunk: nn.Module) -> None:
    for module in trunk.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")


def _halve(size: int) -> int:
    """The size after a 2×2/2 max pool with ceil_mode (a 1-row input keeps its row)."""
    return -(-size // 2)


@dataclass(frozen=True)
class PooledResNetSpec:
    """The paper's ResNet student (Table 2): a stride-1 k×k stem, then stages of stride-1 residual blocks; a
    2×2/2 max pool after the stem and after every stage. Input (B, in_channels, n_freq, T)."""

    block: str
    layers: tuple[int, ...]
    widths: tuple[int, ...]
    stem_width: int
    in_channels: int = 1
    stem_kernel: int = 7

    @property
    def out_channels(self) -> int:
        return self.widths[-1] * BLOCKS[self.block].expansion

    def out_frequency(self, n_freq: int) -> int:
        """Frequency rows left after the 1 + len(layers) pools."""
        for _ in range(1 + len(self.layers)):
            n_freq = _halve(n_freq)
        return n_freq

    def build(self) -> PooledResNetTrunk:
        return PooledResNetTrunk(self)


class PooledResNetTrunk(nn.Module):
    """`PooledResNetSpec`'s trunk: (B, C, H, W) → (B, out_channels, ⌈H/2^(n+1)⌉, ⌈W/2^(n+1)⌉), n stages."""

    def __init__(self, spec: PooledResNetSpec):
        super().__init__()
        block = BLOCKS[spec.block]
        self.stem = nn.Sequential(
            nn.Conv2d(spec.in_channels, spec.stem_width, spec.stem_kernel, stride=1, padding=spec.stem_kernel // 2,
                      bias=False),
            nn.BatchNorm2d(spec.stem_width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, 2, ceil_mode=True),
        )
        stages = []
        in_planes = spec.stem_width
        for n_blocks, width in zip(spec.layers, spec.widths):
            stage, in_planes = _residual_blocks(block, in_planes, width, n_blocks, stride=1)
            stages.append(nn.Sequential(*stage, nn.MaxPool2d(2, 2, ceil_mode=True)))
        self.stages = nn.Sequential(*stages)
        _init_convs(self)

    def forward(self, x):
        return self.stages(self.stem(x))
