"""One training step's forward for stage 1 and stage 3: the module that the optimiser trains,
DistributedDataParallel wraps, torch.compile compiles and a resumed run restores."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.distill import Losses


class StudentStep(nn.Module):
    """The distillation method's losses for a batch. The student and the method's own trained parts
    (multitask's decoder, discarded at inference) are its children."""

    def __init__(self, student: nn.Module, method: nn.Module, lam: float):
        super().__init__()
        self.student, self.method, self.lam = student, method, lam

    def forward(self, spectrogram: torch.Tensor, labels: torch.Tensor, target: torch.Tensor) -> Losses:
        # a run without a cache (λ = 0) batches empty targets: (B, 0)
        return self.method(self.student, spectrogram, labels, target if target.shape[-1] else None, self.lam)


class TeacherStep(nn.Module):
    """Frame logits (or window logits for a sequential teacher) and the CE loss; `teacher` is what gets saved."""

    def __init__(self, teacher: nn.Module, sequential: bool):
        super().__init__()
        self.teacher, self.sequential = teacher, sequential

    def forward(self, frames: torch.Tensor, labels: torch.Tensor) -> Losses:
        _, logits = self.teacher.forward_window(frames) if self.sequential else self.teacher(frames)
        loss = F.cross_entropy(logits, labels)
        return Losses(loss, loss, loss.new_zeros(()), logits)


class AudioTeacherStep(nn.Module):
    """An audio teacher's CE on every grid frame of its crops (each frame is labelled with its utterance's class)."""

    def __init__(self, teacher: nn.Module):
        super().__init__()
        self.teacher = teacher

    def forward(self, audio: torch.Tensor, labels: torch.Tensor) -> Losses:
        _, logits = self.teacher(audio)  # (B, T, C)
        loss = F.cross_entropy(logits.flatten(0, 1), labels.repeat_interleave(logits.shape[1]))
        return Losses(loss, loss, loss.new_zeros(()), logits.mean(dim=1))
