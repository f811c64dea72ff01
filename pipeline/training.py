"""What every training stage shares: Adam with a cyclical learning rate, and a readable history."""

from __future__ import annotations

import math

import torch
from torch import nn


def adam_with_cyclic_lr(
    model: nn.Module, lr_min: float, lr_max: float, steps_per_epoch: int, cycle_epochs: float
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.CyclicLR]:
    """Adam and torch's triangular CyclicLR, stepped once per batch (half a cycle up, half down)."""
    optimiser = torch.optim.Adam(model.parameters(), lr=lr_min)
    half_cycle = max(1, math.ceil(steps_per_epoch * cycle_epochs / 2))
    scheduler = torch.optim.lr_scheduler.CyclicLR(
        optimiser, base_lr=lr_min, max_lr=lr_max, step_size_up=half_cycle, mode="triangular", cycle_momentum=False
    )
    return optimiser, scheduler


def plot_history(history: list[dict], keys: tuple[str, ...], path, title: str) -> None:
    """One PNG with a panel per metric against epoch; people look at curves, not columns."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [key for key in keys if any(key in row for row in history)]
    if not present:
        return
    figure, axes = plt.subplots(1, len(present), figsize=(4 * len(present), 3), squeeze=False)
    for axis, key in zip(axes[0], present):
        rows = [row for row in history if key in row]
        axis.plot([row["epoch"] for row in rows], [row[key] for row in rows], marker="o", markersize=3)
        axis.set_xlabel("epoch")
        axis.set_title(key)
        axis.grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
