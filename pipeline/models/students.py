"""Audio students: spectrogram CNN encoder → embedding e_s → (aggregator →) head H_s (no video code here)."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.features import SEGMENT_SPEC_FRAMES
from pipeline.models.aggregator import Aggregator
from pipeline.models.resnet import TrunkSpec
from pipeline.models.spec import ModelSpec, Trunks, trunk_for
from pipeline.models.vgg import ConvStackSpec


class AudioStudent(nn.Module):
    """(B, F, n_freq) spectrogram → trunk → pooled → two FC layers → e_s (B, D); head → (B, C).

    Sequential: the encoder embeds each 1 s segment (100 frames) → (B, S, D), the aggregator pools them
    → (B, D), the head reads that. A partial last second is dropped; inputs under 1 s are one segment.
    """

    def __init__(self, spec: ModelSpec, trunk):
        super().__init__()
        self.spec = spec
        self.trunk = trunk.build()
        self.pool = nn.AdaptiveAvgPool2d(1)  # any length: full utterances at evaluation
        self.embedding = nn.Sequential(
            nn.Linear(trunk.out_channels, spec.embed_dim),
            nn.ReLU(inplace=True),
            nn.Linear(spec.embed_dim, spec.embed_dim),
        )
        self.aggregator = Aggregator(spec.embed_dim) if spec.sequential else None
        self.head = nn.Linear(spec.embed_dim, spec.num_classes)

    def encode(self, spectrogram: torch.Tensor) -> torch.Tensor:
        """The CNN encoder on whole inputs: (B, F, n_freq) → (B, D)."""
        x = spectrogram.transpose(1, 2).unsqueeze(1)  # (B, 1, n_freq, F)
        pooled = self.pool(self.trunk(x)).flatten(1)
        return self.embedding(pooled)

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


# (frequency, time) kernels and strides; the input is (B, 1, n_freq, F).
VGG_STUDENT_LAYERS = (  # paper Table 1 (VGGVox-style): conv1-conv5 with pools after 1, 2 and 5
    ("conv", 96, 7, 2), ("pool", 3, 2), ("conv", 256, 5, 2), ("pool", 3, 2),
    ("conv", 384, 3, 1), ("conv", 256, 3, 1), ("conv", 256, 3, 1), ("pool", (5, 3), (3, 2)),
)
TINY_VGG_STUDENT_LAYERS = (
    ("conv", 16, 7, 2), ("pool", 3, 2), ("conv", 32, 5, 2), ("pool", 3, 2),
    ("conv", 48, 3, 1), ("conv", 32, 3, 1), ("conv", 32, 3, 1), ("pool", (5, 3), (3, 2)),
)
STUDENTS = {
    "vgg": Trunks(ConvStackSpec(VGG_STUDENT_LAYERS), ConvStackSpec(TINY_VGG_STUDENT_LAYERS)),
    # Paper Table 2: 7×7 stem and 1×1-3×3-1×1 bottleneck blocks.
    "resnet": Trunks(TrunkSpec("bottleneck", (3, 4, 6, 3), (32, 64, 128, 256), in_channels=1),
                     TrunkSpec("bottleneck", (1, 1, 1, 1), (16, 32, 48, 64), in_channels=1)),
    # Paper Table 3: the same with squeeze-and-excitation in every block.
    "seresnet": Trunks(TrunkSpec("se-bottleneck", (3, 4, 6, 3), (32, 64, 128, 256), in_channels=1),
                       TrunkSpec("se-bottleneck", (1, 1, 1, 1), (16, 32, 48, 64), in_channels=1)),
}


def build_student(spec: ModelSpec) -> AudioStudent:
    """A student from its spec; unknown architectures name the registered ones."""
    return AudioStudent(spec, trunk_for(STUDENTS, spec, "student"))
