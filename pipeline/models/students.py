"""Audio students: spectrogram CNN encoder → embedding e_s → (aggregator →) head H_s (no video code here).

The paper's students (Tables 1 and 2) convolve with stride 1, halve both axes with 2×2/2 max pools, keep the
frequency axis up to the FC layers and pool only time, so a full-length utterance of any length embeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipeline.features import SEGMENT_SPEC_FRAMES, SpectrogramParams
from pipeline.models.aggregator import Aggregator
from pipeline.models.resnet import PooledResNetSpec, TrunkSpec
from pipeline.models.spec import ModelSpec, Trunks, trunk_for
from pipeline.models.vgg import ConvStackSpec, PooledConvSpec

N_FREQ = SpectrogramParams().n_freq  # stage 0's frequency bins (n_fft 512 → 257): the first FC's input depends on it


@dataclass(frozen=True)
class StudentArch(Trunks):
    """A registered student: its trunks, and whether it keeps the frequency axis up to the embedding (the
    paper's students) or averages it away with time (`vggvox`, `*-strided`)."""

    keeps_frequency: bool = True


class AudioStudent(nn.Module):
    """(B, F, n_freq) spectrogram → trunk (B, C, F', T') → mean over T' → FC layers → e_s (B, D); head → (B, C).

    Frequency-keeping students flatten C·F' into FC 512 (no activation) → FC 512 + ReLU = e_s (Tables 1, 2).
    The others average over F' and T' into FC → ReLU → FC, as avl's students did before they followed the paper.
    Sequential: the encoder embeds each 1 s segment (100 frames) → (B, S, D), the aggregator (Table 3) pools them
    → (B, D), the head reads that. A partial last second is dropped; inputs under 1 s are one segment.
    """

    def __init__(self, spec: ModelSpec, trunk, keeps_frequency: bool = True, n_freq: int = N_FREQ):
        super().__init__()
        self.spec, self.n_freq = spec, n_freq
        self.trunk = trunk.build()
        dim = spec.embed_dim
        if keeps_frequency:
            self.frequency_rows = trunk.out_frequency(n_freq)
            self.embedding = nn.Sequential(nn.Linear(trunk.out_channels * self.frequency_rows, dim),
                                           nn.Linear(dim, dim), nn.ReLU())
        else:
            self.frequency_rows = None
            self.embedding = nn.Sequential(nn.Linear(trunk.out_channels, dim), nn.ReLU(inplace=True),
                                           nn.Linear(dim, dim))
        self.aggregator = Aggregator(dim) if spec.sequential else None
        self.head = nn.Linear(dim, spec.num_classes)

    def encode(self, spectrogram: torch.Tensor) -> torch.Tensor:
        """The CNN encoder on whole inputs: (B, F, n_freq) → (B, D)."""
        if spectrogram.shape[-1] != self.n_freq:
            raise ValueError(f"this student reads spectrograms of {self.n_freq} frequency bins, got "
                             f"{spectrogram.shape[-1]}")
        features = self.trunk(spectrogram.transpose(1, 2).unsqueeze(1))  # (B, C, F', T')
        if self.frequency_rows is None:
            return self.embedding(features.mean(dim=(2, 3)))  # (B, C) → (B, D)
        # Only time is averaged. The first FC has no activation, so averaging over T' before it gives exactly the
        # mean of its per-time-step outputs: the FC reads the whole frequency axis of every step, at any length.
        return self.embedding(features.mean(dim=3).flatten(1))  # (B, C·F') → (B, D)

    def encode_segments(self, spectrogram: torch.Tensor) -> torch.Tensor:
        """The encoder on each 1 s segment: (B, F, n_freq) → (B, S, D), S = max(1, F // 100)."""
        batch, n_frames, n_freq = spectrogram.shape
        n_segments = max(1, n_frames // SEGMENT_SPEC_FRAMES)
        if n_frames >= SEGMENT_SPEC_FRAMES:
            spectrogram = spectrogram[:, : n_segments * SEGMENT_SPEC_FRAMES].reshape(
                batch * n_segments, SEGMENT_SPEC_FRAMES, n_freq)
        return self.encode(spectrogram).view(batch, n_segments, -1)

    def embed(self, spectrogram: torch.Tensor) -> torch.Tensor:
        """The embedding the head reads: e_s (non-sequential) or the aggregator's a_s (sequential), (B, D)."""
        if self.aggregator is None:
            return self.encode(spectrogram)
        return self.aggregator(self.encode_segments(spectrogram))

    def forward(self, spectrogram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.embed(spectrogram)
        return embedding, self.head(embedding)


# VGGVox (Nagrani et al. 2017) conv1-conv5, (frequency, time) kernels and strides on (B, 1, n_freq, F).
VGGVOX_LAYERS = (
    ("conv", 96, 7, 2), ("pool", 3, 2), ("conv", 256, 5, 2), ("pool", 3, 2),
    ("conv", 384, 3, 1), ("conv", 256, 3, 1), ("conv", 256, 3, 1), ("pool", (5, 3), (3, 2)),
)
TINY_VGGVOX_LAYERS = (
    ("conv", 16, 7, 2), ("pool", 3, 2), ("conv", 32, 5, 2), ("pool", 3, 2),
    ("conv", 48, 3, 1), ("conv", 32, 3, 1), ("conv", 32, 3, 1), ("pool", (5, 3), (3, 2)),
)
# Widths and repeats the paper leaves out (README "Students"): VGG16's first two block widths, three 3×3 convs
# each as Table 1 lists; ResNet-50's bottleneck repeats at half width (Thin ResNet, Xie et al. 2019), because
# the stride-1 stem keeps 4× the positions of torchvision's strided stem.
RESNET_REPEATS, RESNET_WIDTHS = (3, 4, 6, 3), (32, 64, 128, 256)
# Tiny: the same layers with few channels; stride-1 layers at full resolution make activations, not FLOPs, the
# CPU cost, so the tiny widths are small (README "Students" gives the training step times).
TINY_RESNET_REPEATS, TINY_RESNET_WIDTHS = (1, 1, 1, 1), (4, 8, 12, 16)
STUDENTS = {
    # The paper's students: Table 1, Table 2, and Table 2 with squeeze-and-excitation in every block.
    "vgg": StudentArch(PooledConvSpec(((64, 64, 64), (128, 128, 128))), PooledConvSpec(((4, 4, 4), (8, 8, 8)))),
    "resnet": StudentArch(PooledResNetSpec("bottleneck", RESNET_REPEATS, RESNET_WIDTHS, stem_width=32),
                          PooledResNetSpec("bottleneck", TINY_RESNET_REPEATS, TINY_RESNET_WIDTHS, stem_width=4)),
    "seresnet": StudentArch(PooledResNetSpec("se-bottleneck", RESNET_REPEATS, RESNET_WIDTHS, stem_width=32),
                            PooledResNetSpec("se-bottleneck", TINY_RESNET_REPEATS, TINY_RESNET_WIDTHS, stem_width=4)),
    # avl's students before they followed the paper, kept to compare with: strided trunks, frequency averaged away.
    "vggvox": StudentArch(ConvStackSpec(VGGVOX_LAYERS), ConvStackSpec(TINY_VGGVOX_LAYERS), keeps_frequency=False),
    "resnet-strided": StudentArch(
        TrunkSpec("bottleneck", RESNET_REPEATS, RESNET_WIDTHS, in_channels=1),
        TrunkSpec("bottleneck", (1, 1, 1, 1), (16, 32, 48, 64), in_channels=1), keeps_frequency=False),
    "seresnet-strided": StudentArch(
        TrunkSpec("se-bottleneck", RESNET_REPEATS, RESNET_WIDTHS, in_channels=1),
        TrunkSpec("se-bottleneck", (1, 1, 1, 1), (16, 32, 48, 64), in_channels=1), keeps_frequency=False),
}


def build_student(spec: ModelSpec) -> AudioStudent:
    """A student from its spec; unknown architectures name the registered ones."""
    return AudioStudent(spec, trunk_for(STUDENTS, spec, "student"), STUDENTS[spec.arch].keeps_frequency)
