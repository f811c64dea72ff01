"""The sequential aggregator of Table 3, shared by teacher and student: 2 BiLSTM layers, two FC+ReLU layers,
attention pooling (Eq. 5)."""

from __future__ import annotations

import torch
from torch import nn


class Aggregator(nn.Module):
    """(B, S, D) sequence → (B, D): BiLSTM states (D/2 per direction) → FC+ReLU → FC+ReLU = h_t, pooled by
    α = softmax_t(wᵀ tanh(W h_t + b)), a = Σ_t α_t h_t.

    The teacher's sequence is the frame embeddings of a window (25 per second), the student's its 1 s
    segment embeddings.
    """

    def __init__(self, dim: int, layers: int = 2):
        super().__init__()
        if dim % 2:
            raise ValueError(f"the aggregator's size must be even (two LSTM directions), got {dim}")
        self.lstm = nn.LSTM(dim, dim // 2, num_layers=layers, batch_first=True, bidirectional=True)
        self.fc = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim), nn.ReLU(inplace=True))
        self.attention = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, 1, bias=False))

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        states, _ = self.lstm(sequence)  # (B, S, D)
        states = self.fc(states)  # (B, S, D)
        weights = self.attention(states).softmax(dim=1)  # (B, S, 1)
        return (weights * states).sum(dim=1)  # (B, D)
