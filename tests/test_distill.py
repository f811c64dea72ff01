"""Gradient routing of Eq. 8, checked numerically against separately computed gradients."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.distill import embedding_distance, routed_distillation


def _setup(seed=0):
    torch.manual_seed(seed)
    encoder, head = nn.Linear(6, 4), nn.Linear(4, 3)
    inputs, labels, target = torch.randn(5, 6), torch.tensor([0, 1, 2, 1, 0]), torch.randn(5, 4)
    return encoder, head, inputs, labels, target


def _grads(module):
    return [p.grad.clone() for p in module.parameters()]


def _routed_grads(lam, distance="mse"):
    encoder, head, inputs, labels, target = _setup()
    routed_distillation(encoder(inputs), head, labels, target, lam, distance).total.backward()
    return _grads(encoder), _grads(head)


def _separate_grads(loss_name, distance="mse"):
    """Encoder and head gradients of CE alone, or of D alone, in a plain (unrouted) graph."""
    encoder, head, inputs, labels, target = _setup()
    embedding = encoder(inputs)
    if loss_name == "ce":
        loss = F.cross_entropy(head(embedding), labels)
    else:
        loss = embedding_distance(embedding, target, distance)
    loss.backward()
    head_grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in head.parameters()]
    return _grads(encoder), head_grads


@pytest.mark.parametrize("distance", ["mse", "cosine"])
@pytest.mark.parametrize("lam", [0.0, 0.25, 0.4, 0.8, 1.0])
def test_encoder_gradient_is_the_lambda_mix_and_head_sees_ce_only(lam, distance):
    encoder_routed, head_routed = _routed_grads(lam, distance)
    encoder_ce, head_ce = _separate_grads("ce", distance)
    encoder_d, _ = _separate_grads("d", distance)
    for routed, ce, d in zip(encoder_routed, encoder_ce, encoder_d):
        torch.testing.assert_close(routed, (1 - lam) * ce + lam * d, rtol=1e-5, atol=1e-6)
    for routed, ce in zip(head_routed, head_ce):
        torch.testing.assert_close(routed, ce, rtol=1e-5, atol=1e-6)


def test_head_gradient_does_not_depend_on_lambda():
    _, head_low = _routed_grads(0.1)
    _, head_high = _routed_grads(0.9)
    for low, high in zip(head_low, head_high):
        torch.testing.assert_close(low, high)


def test_lambda_zero_is_plain_cross_entropy_and_needs_no_target():
    encoder, head, inputs, labels, _ = _setup()
    losses = routed_distillation(encoder(inputs), head, labels, None, 0.0)
    assert losses.total.item() == pytest.approx(F.cross_entropy(head(encoder(inputs)), labels).item())


def test_lambda_outside_unit_interval_is_refused():
    encoder, head, inputs, labels, target = _setup()
    with pytest.raises(ValueError, match="lambda"):
        routed_distillation(encoder(inputs), head, labels, target, 1.5)
