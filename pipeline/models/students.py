"""Audio students: spectrogram CNN encoder → embedding e_s → head H_s (no video code here)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipeline.models.resnet import ResNetTrunk, TrunkSpec


@dataclass(frozen=True)
class StudentSpec:
    """Everything needed to rebuild a student from its checkpoint."""

    arch: str
    tiny: bool
    num_classes: int
    embed_dim: int = 512


class AudioStudent(nn.Module):
    """(B, F, n_freq) spectrogram → trunk → pooled → two FC layers → e_s (B, D); head → (B, C)."""

    def __init__(self, spec: StudentSpec, trunk: TrunkSpec):
        super().__init__()
        self.spec = spec
        self.trunk = ResNetTrunk(trunk)
        self.pool = nn.AdaptiveAvgPool2d(1)  # any length: full utterances at evaluation
        self.embedding = nn.Sequential(
            nn.Linear(trunk.out_channels, spec.embed_dim),
            nn.ReLU(inplace=True),
            nn.Linear(spec.embed_dim, spec.embed_dim),
        )
        self.head = nn.Linear(spec.embed_dim, spec.num_classes)

    def embed(self, spectrogram: torch.Tensor) -> torch.Tensor:
        x = spectrogram.transpose(1, 2).unsqueeze(1)  # (B, 1, n_freq, F)
        pooled = self.pool(self.trunk(x)).flatten(1)
        return self.embedding(pooled)  # (B, D)

    def forward(self, spectrogram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.embed(spectrogram)
        return embedding, self.head(embedding)


STUDENT_TRUNKS = {
    # Paper Table 2: 7×7 stem and 1×1-3×3-1×1 bottleneck blocks.
    "resnet": {
        False: TrunkSpec("bottleneck", (3, 4, 6, 3), (32, 64, 128, 256), in_channels=1),
        True: TrunkSpec("basic", (1, 1, 1, 1), (16, 32, 48, 64), in_channels=1),
    },
}
STUDENTS = {name: AudioStudent for name in STUDENT_TRUNKS}


def build_student(spec: StudentSpec) -> AudioStudent:
    """A student from its spec; unknown architectures name the registered ones."""
    if spec.arch not in STUDENTS:
        raise ValueError(f"unknown student architecture {spec.arch!r}; registered: {sorted(STUDENTS)}")
    return STUDENTS[spec.arch](spec, STUDENT_TRUNKS[spec.arch][spec.tiny])
