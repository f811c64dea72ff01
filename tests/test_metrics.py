"""EER and minDCF on score sets whose answers are known."""

import numpy as np
import pytest

from pipeline.metrics import accuracy, equal_error_rate, min_dcf


def test_perfect_separation_has_zero_eer_and_zero_cost():
    scores, labels = np.array([0.9, 0.8, 0.1, 0.2]), np.array([1, 1, 0, 0])
    assert equal_error_rate(scores, labels) == 0.0
    assert min_dcf(scores, labels) == 0.0


def test_reversed_scores_have_eer_one():
    assert equal_error_rate(np.array([0.1, 0.2, 0.9, 0.8]), np.array([1, 1, 0, 0])) == pytest.approx(1.0)


def test_all_equal_scores_give_half():
    assert equal_error_rate(np.zeros(10), np.array([1, 0] * 5)) == pytest.approx(0.5)


def test_random_scores_are_near_half_and_known_overlap_matches():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 20000)
    assert equal_error_rate(rng.normal(size=20000), labels) == pytest.approx(0.5, abs=0.02)
    # Two unit Gaussians 2 apart: EER = Φ(−1) ≈ 0.1587.
    scores = rng.normal(size=20000) + 2.0 * labels
    assert equal_error_rate(scores, labels) == pytest.approx(0.1587, abs=0.01)


def test_top_k_accuracy():
    logits = np.array([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05]])
    assert accuracy(logits, np.array([2, 0]), 1) == 0.5
    assert accuracy(logits, np.array([2, 0]), 2) == 1.0
