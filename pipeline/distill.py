"""Distillation methods and the paper's gradient routing: which parameters see CE only, which the λ-mix.

| method      | level          | head (and aggregator)        | encoder                                  |
|-------------|----------------|------------------------------|------------------------------------------|
| proposed    | non-sequential | CE                           | (1−λ)∇CE + λ∇D(e_s, peak)          Eq. 8 |
| proposed    | encoder (EM)   | CE (aggregator too)          | (1−λ)∇CE + λ∇ mean_i D(e_s,i, seg_i) Eq. 12 |
| proposed    | aggregator     | CE                           | encoder + aggregator: (1−λ)∇CE + λ∇D(a_s, agg) Eq. 13 |
| soft-label  | any            | (1−λ)CE + λ·T²·KL(p_t^T ‖ p_s^T), every parameter  Eq. 1 |
| multitask   | any            | (1−λ)CE + λ·D(decoder(e_s), teacher embedding), every parameter |

Routing is not a loss sum: the part trained by CE alone reads its input through `scale_grad(·, 1−λ)`,
so CE reaches it at full strength and everything below it scaled by (1−λ).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LEVELS = ("non-sequential", "encoder", "aggregator")


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
    """D(e_s, e_t) averaged over the batch (and segments): mean squared error per dimension, or 1 − cosine."""
    teacher = teacher.to(student.dtype)
    if kind == "mse":
        return F.mse_loss(student, teacher)
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(student, teacher, dim=-1)).mean()
    raise ValueError(f"unknown distance {kind!r}; choose 'mse' or 'cosine'")


def soft_label_divergence(logits: torch.Tensor, teacher_probabilities: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eq. 1's KD term T²·KL(p_t^T ‖ softmax(z/T)), batch mean.

    The cache holds teacher probabilities p, not logits; softmax(log p / T) = p^(1/T) renormalised, which
    equals softmax(z_t/T) exactly when p = softmax(z_t) (a mean of probabilities is tempered the same way).
    """
    teacher_log = F.log_softmax(teacher_probabilities.float().clamp_min(1e-8).log() / temperature, dim=1)
    student_log = F.log_softmax(logits / temperature, dim=1)
    return F.kl_div(student_log, teacher_log.to(student_log.dtype), log_target=True, reduction="batchmean") * temperature**2


@dataclass
class Losses:
    """The objective to backpropagate and its parts for logging (`distance`: the distillation term)."""

    total: torch.Tensor
    cross_entropy: torch.Tensor
    distance: torch.Tensor
    logits: torch.Tensor


def _check_lambda(lam: float) -> None:
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must lie in [0, 1], got {lam}")


def routed_distillation(
    embedding: torch.Tensor,
    head: nn.Module,
    labels: torch.Tensor,
    teacher_embedding: torch.Tensor | None,
    lam: float,
    distance: str = "mse",
) -> Losses:
    """Eq. 8 (and Eq. 13 with the aggregator's output): ∂/∂head = ∇CE (independent of λ);
    ∂/∂(everything below) = (1−λ)∇CE + λ∇D(embedding, e_t)."""
    _check_lambda(lam)
    logits = head(scale_grad(embedding, 1.0 - lam))
    cross_entropy = F.cross_entropy(logits, labels)
    if lam == 0.0 or teacher_embedding is None:
        return Losses(cross_entropy, cross_entropy, embedding.new_zeros(()), logits)
    dist = embedding_distance(embedding, teacher_embedding, distance)
    return Losses(cross_entropy + lam * dist, cross_entropy, dist, logits)


def routed_segment_distillation(
    segments: torch.Tensor,
    aggregator: nn.Module,
    head: nn.Module,
    labels: torch.Tensor,
    teacher_segments: torch.Tensor | None,
    lam: float,
    distance: str = "mse",
) -> Losses:
    """Eq. 12 (EM): head and aggregator see ∇CE only; the per-segment encoder (1−λ)∇CE + λ∇ mean_i D(e_s,i, seg_i).

    segments (B, S, D) are the encoder's outputs, teacher_segments the teacher's segment means (B, S, D).
    """
    _check_lambda(lam)
    logits = head(aggregator(scale_grad(segments, 1.0 - lam)))
    cross_entropy = F.cross_entropy(logits, labels)
    if lam == 0.0 or teacher_segments is None:
        return Losses(cross_entropy, cross_entropy, segments.new_zeros(()), logits)
    dist = embedding_distance(segments, teacher_segments, distance)
    return Losses(cross_entropy + lam * dist, cross_entropy, dist, logits)


class Method(nn.Module):
    """A distillation method at one level; a module because some carry trained parts (multitask's decoder)."""

    def __init__(self, level: str, distance: str = "mse", temperature: float = 1.0, embed_dim: int = 512):
        super().__init__()
        if level not in LEVELS:
            raise ValueError(f"unknown level {level!r}; choose one of {LEVELS}")
        self.level, self.distance, self.temperature = level, distance, temperature

    @staticmethod
    def target_for(level: str, peak: str = "crop-peak") -> str:
        """The cached target read per crop at `level`: the peak frame, segment means or the window's aggregator."""
        return {"non-sequential": peak, "encoder": "segments", "aggregator": "aggregator"}[level]

    def target_kind(self, peak: str = "crop-peak") -> str:
        return self.target_for(self.level, peak)

    def forward(self, model, spectrogram: torch.Tensor, labels: torch.Tensor, target: torch.Tensor | None,
                lam: float) -> Losses:
        raise NotImplementedError


class Proposed(Method):
    """The paper's method: embedding targets with gradient routing (Eq. 8, 12, 13)."""

    def forward(self, model, spectrogram, labels, target, lam):
        if self.level == "encoder":
            return routed_segment_distillation(model.encode_segments(spectrogram), model.aggregator, model.head,
                                               labels, target, lam, self.distance)
        return routed_distillation(model.embed(spectrogram), model.head, labels, target, lam, self.distance)


class SoftLabel(Method):
    """LUPI baseline (Eq. 1): (1−λ)CE + λ·T²·KL on the teacher's class probabilities, whole network."""

    @staticmethod
    def target_for(level: str, peak: str = "crop-peak") -> str:
        return "soft" if level == "non-sequential" else "window-soft"

    def forward(self, model, spectrogram, labels, target, lam):
        _check_lambda(lam)
        _, logits = model(spectrogram)
        cross_entropy = F.cross_entropy(logits, labels)
        if lam == 0.0 or target is None:
            return Losses(cross_entropy, cross_entropy, logits.new_zeros(()), logits)
        divergence = soft_label_divergence(logits, target, self.temperature)
        return Losses((1.0 - lam) * cross_entropy + lam * divergence, cross_entropy, divergence, logits)


class Multitask(Method):
    """LUPI baseline: a decoder (trained with the student, discarded at inference) maps the student's
    embedding into the teacher's space; (1−λ)CE + λ·D(decoder(e_s), e_t), whole network."""

    def __init__(self, level: str, distance: str = "mse", temperature: float = 1.0, embed_dim: int = 512):
        super().__init__(level, distance, temperature, embed_dim)
        self.decoder = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.ReLU(inplace=True),
                                     nn.Linear(embed_dim, embed_dim))

    def forward(self, model, spectrogram, labels, target, lam):
        _check_lambda(lam)
        if self.level == "encoder":  # the decoder reads every segment embedding; targets are segment means
            student = model.encode_segments(spectrogram)
            logits = model.head(model.aggregator(student))
        else:
            student, logits = model(spectrogram)
        cross_entropy = F.cross_entropy(logits, labels)
        if lam == 0.0 or target is None:
            return Losses(cross_entropy, cross_entropy, logits.new_zeros(()), logits)
        dist = embedding_distance(self.decoder(student), target, self.distance)
        return Losses((1.0 - lam) * cross_entropy + lam * dist, cross_entropy, dist, logits)


METHODS = {"proposed": Proposed, "soft-label": SoftLabel, "multitask": Multitask}


def build_method(name: str, level: str, distance: str = "mse", temperature: float = 1.0,
                 embed_dim: int = 512) -> Method:
    """A method from its name; unknown names list the registered ones."""
    if name not in METHODS:
        raise ValueError(f"unknown distillation method {name!r}; registered: {sorted(METHODS)}")
    return METHODS[name](level, distance, temperature, embed_dim)
