"""Distillation losses and the paper's gradient routing (Eq. 8): head sees CE, encoder sees the λ-mix."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; multiplies the gradient by `scale` on the way back."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


def scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """x in the forward pass; gradient × scale in the backward pass."""
    return _ScaleGrad.apply(x, scale)


def embedding_distance(student: torch.Tensor, teacher: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """D(e_s, e_t) averaged over the batch: mean squared error per dimension, or 1 − cosine."""
    teacher = teacher.to(student.dtype)
    if kind == "mse":
        return F.mse_loss(student, teacher)
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(student, teacher, dim=-1)).mean()
    raise ValueError(f"unknown distance {kind!r}; choose 'mse' or 'cosine'")


@dataclass
class Losses:
    """The objective to backpropagate and its parts for logging."""

    total: torch.Tensor
    cross_entropy: torch.Tensor
    distance: torch.Tensor
    logits: torch.Tensor


def routed_distillation(
    embedding: torch.Tensor,
    head: nn.Module,
    labels: torch.Tensor,
    teacher_embedding: torch.Tensor | None,
    lam: float,
    distance: str = "mse",
) -> Losses:
    """Eq. 8: ∂/∂head = ∇CE (independent of λ); ∂/∂encoder = (1−λ)∇CE + λ∇D(e_s, e_t).

    Gradient routing, not a loss sum: the head reads the embedding through a (1−λ) gradient scale,
    so CE trains the head at full strength while reaching the encoder scaled.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must lie in [0, 1], got {lam}")
    logits = head(scale_grad(embedding, 1.0 - lam))
    cross_entropy = F.cross_entropy(logits, labels)
    if lam == 0.0 or teacher_embedding is None:
        zero = embedding.new_zeros(())
        return Losses(cross_entropy, cross_entropy, zero, logits)
    dist = embedding_distance(embedding, teacher_embedding, distance)
    return Losses(cross_entropy + lam * dist, cross_entropy, dist, logits)
