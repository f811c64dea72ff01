"""Video teachers: per-frame face encoders giving an embedding and class logits (stage 1 and 2 only)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipeline.models.resnet import ResNetTrunk, TrunkSpec

# Face crops arrive as uint8 RGB; the teacher normalises them itself so every caller feeds raw frames.
PIXEL_MEAN = (0.5, 0.5, 0.5)
PIXEL_STD = (0.25, 0.25, 0.25)


@dataclass(frozen=True)
class TeacherSpec:
    """Everything needed to rebuild a teacher from its checkpoint."""

    arch: str
    tiny: bool
    num_classes: int
    embed_dim: int = 512


class FrameTeacher(nn.Module):
    """Face crop → trunk → pooled → embedding (Eq. 2) → FC head; (B, H, W, 3) uint8 → (B, D), (B, C)."""

    def __init__(self, spec: TeacherSpec, trunk: TrunkSpec):
        super().__init__()
        self.spec = spec
        self.trunk = ResNetTrunk(trunk)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embedding = nn.Linear(trunk.out_channels, spec.embed_dim)
        self.head = nn.Linear(spec.embed_dim, spec.num_classes)
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, H, W)
        x = (x - self.pixel_mean) / self.pixel_std
        pooled = self.pool(self.trunk(x)).flatten(1)  # (B, C_trunk)
        return self.embedding(pooled)  # (B, D)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.embed(frames)
        return embedding, self.head(embedding)


TEACHER_TRUNKS = {
    "resnet34": {
        False: TrunkSpec("basic", (3, 4, 6, 3), (64, 128, 256, 512)),
        True: TrunkSpec("basic", (1, 1, 1, 1), (16, 32, 64, 128)),
    },
}
TEACHERS = {name: FrameTeacher for name in TEACHER_TRUNKS}


def build_teacher(spec: TeacherSpec) -> FrameTeacher:
    """A teacher from its spec; unknown architectures name the registered ones."""
    if spec.arch not in TEACHERS:
        raise ValueError(f"unknown teacher architecture {spec.arch!r}; registered: {sorted(TEACHERS)}")
    return TEACHERS[spec.arch](spec, TEACHER_TRUNKS[spec.arch][spec.tiny])
