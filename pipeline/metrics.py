"""Classification (top-k accuracy, UA/WA, confusion matrix) and verification (EER, minDCF, cosine scores) metrics."""

from __future__ import annotations

import numpy as np


def accuracy(logits: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Top-k accuracy of (N, C) scores against (N,) integer labels."""
    if len(labels) == 0:
        return float("nan")
    top_k = np.argsort(-logits, axis=1)[:, :k]
    return float((top_k == labels[:, None]).any(axis=1).mean())


def confusion_matrix(predictions: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, C) counts: row = true class, column = predicted class."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)), 1)
    return matrix


def per_class_recall(matrix: np.ndarray) -> np.ndarray:
    """Recall of each class from a confusion matrix; NaN for a class with no examples."""
    support = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(matrix) / support, np.nan)


def unweighted_average_recall(matrix: np.ndarray) -> float:
    """UA: mean recall over the classes that occur (each class counts once, whatever its size)."""
    recall = per_class_recall(matrix)
    return float(np.nanmean(recall)) if np.isfinite(recall).any() else float("nan")


def weighted_accuracy(matrix: np.ndarray) -> float:
    """WA: overall accuracy (recall weighted by class size), as emotion papers report it."""
    total = matrix.sum()
    return float(np.trace(matrix) / total) if total else float("nan")


def classification_metrics(logits: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict:
    """Top-1/top-5 accuracy, UA, WA, per-class recall and the confusion matrix of (N, C) scores."""
    labels = np.asarray(labels, dtype=np.int64)
    matrix = confusion_matrix(np.asarray(logits).argmax(axis=1), labels, len(class_names))
    return {
        "top1": accuracy(logits, labels, 1),
        "top5": accuracy(logits, labels, 5),
        "ua": unweighted_average_recall(matrix),
        "wa": weighted_accuracy(matrix),
        "per_class_recall": dict(zip(class_names, (None if np.isnan(r) else float(r) for r in per_class_recall(matrix)))),
        "confusion": {"classes": list(class_names), "rows_true_columns_predicted": matrix.tolist()},
        "utterances": int(len(labels)),
    }


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


def verification_metrics(scores: np.ndarray, labels: np.ndarray) -> dict:
    """EER and minDCF (p_target 0.01, c_miss = c_fa = 1) with trial counts; None values when one class is absent."""
    labels = np.asarray(labels).astype(bool)
    counts = {"trials": int(len(labels)), "targets": int(labels.sum()), "nontargets": int((~labels).sum())}
    if counts["targets"] == 0 or counts["nontargets"] == 0:
        return {"eer": None, "min_dcf": None, **counts}
    return {"eer": equal_error_rate(scores, labels), "min_dcf": min_dcf(scores, labels), **counts}


def cosine_scores(embeddings: dict[str, np.ndarray], pairs: list[tuple[str, str]]) -> np.ndarray:
    """Cosine similarity of each (enrol, test) pair of embeddings."""
    normalised = {key: value / max(np.linalg.norm(value), 1e-12) for key, value in embeddings.items()}
    return np.array([float(normalised[a] @ normalised[b]) for a, b in pairs])
