"""VGG-style trunks: torchvision's VGG16 feature layers (teacher), the paper's VGG student (Table 1) and the
VGGVox conv stack (the `vggvox` student)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from torchvision.models.vgg import cfgs, make_layers

VGG16_LAYERS = tuple(cfgs["D"])  # 13 3×3 convs in 5 blocks, 64 → 512 channels


@dataclass(frozen=True)
class Vgg16Spec:
    """torchvision's `make_layers` (with batch norm, as `vgg16_bn`, which trains from scratch); ints are 3×3
    convs, "M" a 2×2 max-pool. Module indices match `vgg16_bn().features`, so its weights load by name."""

    layers: tuple[int | str, ...] = VGG16_LAYERS

    @property
    def out_channels(self) -> int:
        return [layer for layer in self.layers if layer != "M"][-1]

    def build(self) -> nn.Sequential:
        return make_layers(list(self.layers), batch_norm=True)


@dataclass(frozen=True)
class ConvStackSpec:
    """Convolutions with their own kernel and stride (VGGVox-style), each conv + BN + ReLU.

    A layer is ("conv", out_channels, kernel, stride) or ("pool", kernel, stride); kernels and strides
    are ints or (frequency, time) pairs.
    """

    layers: tuple[tuple, ...]
    in_channels: int = 1

    @property
    def out_channels(self) -> int:
        return [layer[1] for layer in self.layers if layer[0] == "conv"][-1]

    def build(self) -> nn.Sequential:
        modules, channels = [], self.in_channels
        for kind, *args in self.layers:
            if kind == "conv":
                out, kernel, stride = args
                padding = tuple(k // 2 for k in kernel) if isinstance(kernel, tuple) else kernel // 2
                modules += [nn.Conv2d(channels, out, kernel, stride, padding, bias=False), nn.BatchNorm2d(out),
                            nn.ReLU(inplace=True)]
                channels = out
            elif kind == "pool":
                kernel, stride = args
                modules.append(nn.MaxPool2d(kernel, stride, ceil_mode=True))  # ceil: 1-segment inputs keep a row
            else:
                raise ValueError(f"unknown conv-stack layer {kind!r}")
        return nn.Sequential(*modules)


@dataclass(frozen=True)
class PooledConvSpec:
    """The paper's VGG student (Table 1): blocks of k×k stride-1 convs, each + BN + ReLU, and a 2×2/2 max pool
    after every block; `blocks` holds each block's conv widths. Input (B, in_channels, n_freq, T)."""

    blocks: tuple[tuple[int, ...], ...]
    kernel: int = 3
    in_channels: int = 1

    @property
    def out_channels(self) -> int:
        return self.blocks[-1][-1]

    def out_frequency(self, n_freq: int) -> int:
        """Frequency rows left after the pools."""
        for _ in self.blocks:
            n_freq = -(-n_freq // 2)  # ceil_mode
        return n_freq

    def build(self) -> nn.Sequential:
        modules, channels = [], self.in_channels
        for widths in self.blocks:
            for out in widths:
                modules += [nn.Conv2d(channels, out, self.kernel, 1, self.kernel // 2, bias=False), nn.BatchNorm2d(out),
                            nn.ReLU(inplace=True)]
                channels = out
            modules.append(nn.MaxPool2d(2, 2, ceil_mode=True))  # ceil: a 1-frame input keeps its frame
        return nn.Sequential(*modules)
