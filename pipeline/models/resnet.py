"""A ResNet trunk with configurable widths, built from torchvision's residual blocks."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1

BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


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
            stride = 1 if index == 0 else 2
            stage = []
            for block_index in range(n_blocks):
                downsample = None
                if block_index == 0 and (stride != 1 or in_planes != width * block.expansion):
                    downsample = nn.Sequential(
                        conv1x1(in_planes, width * block.expansion, stride), nn.BatchNorm2d(width * block.expansion)
                    )
                stage.append(block(in_planes, width, stride if block_index == 0 else 1, downsample))
                in_planes = width * block.expansion
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.stages(self.stem(x))
