"""Identification accuracy and verification EER/minDCF from cosine scores."""

from __future__ import annotations

import numpy as np


def accuracy(logits: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Top-k accuracy of (N, C) scores against (N,) integer labels."""
    if len(labels) == 0:
        return float("nan")
    top_k = np.argsort(-logits, axis=1)[:, :k]
    return float((top_k == labels[:, None]).any(axis=1).mean())


def error_rates(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False-reject and false-accept rates at every distinct threshold (accept when score >= threshold)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    n_target, n_nontarget = labels.sum(), (~labels).sum()
    if n_target == 0 or n_nontarget == 0:
        raise ValueError("verification needs both target and non-target trials")
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, sorted_labels = scores[order], labels[order]
    # Thresholds sit at distinct scores only, so tied trials are accepted or rejected together.
    last_of_tie = np.r_[np.diff(sorted_scores) != 0, True]
    accepted_targets = np.cumsum(sorted_labels)[last_of_tie]
    accepted_nontargets = np.cumsum(~sorted_labels)[last_of_tie]
    false_reject = np.r_[1.0, 1.0 - accepted_targets / n_target]
    false_accept = np.r_[0.0, accepted_nontargets / n_nontarget]
    thresholds = np.r_[np.inf, sorted_scores[last_of_tie]]
    return false_reject, false_accept, thresholds


def equal_error_rate(scores: np.ndarray, labels: np.ndarray) -> float:
    """EER: where the false-reject and false-accept curves cross (linear interpolation between points)."""
    false_reject, false_accept, _ = error_rates(scores, labels)
    difference = false_reject - false_accept  # starts at 1, ends at <= 0, non-increasing
    crossing = int(np.argmax(difference <= 0))
    if difference[crossing] == 0:
        return float(false_reject[crossing])
    previous = crossing - 1
    weight = difference[previous] / (difference[previous] - difference[crossing])
    frr = false_reject[previous] + weight * (false_reject[crossing] - false_reject[previous])
    far = false_accept[previous] + weight * (false_accept[crossing] - false_accept[previous])
    return float((frr + far) / 2)


def min_dcf(scores: np.ndarray, labels: np.ndarray, p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """Minimum normalised detection cost over thresholds (NIST SRE definition)."""
    false_reject, false_accept, _ = error_rates(scores, labels)
    cost = c_miss * p_target * false_reject + c_fa * (1 - p_target) * false_accept
    return float(cost.min() / min(c_miss * p_target, c_fa * (1 - p_target)))


def cosine_scores(embeddings: dict[str, np.ndarray], pairs: list[tuple[str, str]]) -> np.ndarray:
    """Cosine similarity of each (enrol, test) pair of embeddings."""
    normalised = {key: value / max(np.linalg.norm(value), 1e-12) for key, value in embeddings.items()}
    return np.array([float(normalised[a] @ normalised[b]) for a, b in pairs])
