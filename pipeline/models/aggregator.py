"""The sequential aggregator shared by teacher and student: 2-layer BiLSTM + attention pooling (Eq. 5)."""

from __future__ import annotations

import torch
from torch import nn


class Aggregator(nn.Module):
    """(B, S, D) segment embeddings → (B, D): BiLSTM states h_t (D/2 per direction), pooled by
    α = softmax_t(wᵀ tanh(W h_t + b)), a = Σ_t α_t h_t."""

    def __init__(self, dim: int, layers: int = 2):
        super().__init__()
        if dim % 2:
            raise ValueError(f"the aggregator's size must be even (two LSTM directions), got {dim}")
        self.lstm = nn.LSTM(dim, dim // 2, num_layers=layers, batch_first=True, bidirectional=True)
        self.attention = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, 1, bias=False))

    def forward(self, segments: torch.Tensor) -> torch.Tensor:
        states, _ = self.lstm(segments)  # (B, S, D)
        weights = self.attention(states).softmax(dim=1)  # (B, S, 1)
        return (weights * states).sum(dim=1)  # (B, D)
