"""EER and minDCF against an independent brute-force computation, and UA/WA/confusion on known cases.

The reference counts false rejects and false accepts by direct comparison at every threshold
(O(n²)), with no sorting or cumulative sums, then intersects the DET polyline with FRR = FAR.
"""

import math

import numpy as np
import pytest

from pipeline.metrics import (
    classification_metrics,
    confusion_matrix,
    equal_error_rate,
    min_dcf,
    unweighted_average_recall,
    verification_metrics,
    weighted_accuracy,
)


def brute_force_points(scores, labels):
    """(FRR, FAR) at 'accept nothing' and at every distinct score, accepting score >= threshold."""
    scores, labels = np.asarray(scores, float), np.asarray(labels).astype(bool)
    targets, nontargets = scores[labels], scores[~labels]
    points = [(1.0, 0.0)]
    for threshold in sorted(set(scores.tolist()), reverse=True):
        false_reject = sum(1 for s in targets if not s >= threshold) / len(targets)
        false_accept = sum(1 for s in nontargets if s >= threshold) / len(nontargets)
        points.append((false_reject, false_accept))
    return points


def brute_force_eer(scores, labels):
    """Where the segment between consecutive operating points crosses FRR = FAR."""
    points = brute_force_points(scores, labels)
    for (frr_a, far_a), (frr_b, far_b) in zip(points, points[1:]):
        gap_a, gap_b = frr_a - far_a, frr_b - far_b
        if gap_a >= 0 >= gap_b and gap_a != gap_b:
            fraction = gap_a / (gap_a - gap_b)
            return frr_a + fraction * (frr_b - frr_a)
        if gap_a == 0:
            return frr_a
    raise AssertionError("no crossing")


def brute_force_min_dcf(scores, labels, p_target=0.01, c_miss=1.0, c_fa=1.0):
    costs = [c_miss * p_target * frr + c_fa * (1 - p_target) * far for frr, far in brute_force_points(scores, labels)]
    return min(costs) / min(c_miss * p_target, c_fa * (1 - p_target))


def _random_sets():
    rng = np.random.default_rng(1234)
    for case in range(40):
        n = int(rng.integers(2, 400))
        labels = rng.integers(0, 2, n)
        labels[0], labels[-1] = 1, 0  # both kinds present
        separation = rng.uniform(0, 3)
        scores = rng.normal(size=n) + separation * labels
        if case % 3 == 0:
            scores = np.round(scores, 1)  # many ties, also across targets and non-targets
        if case % 5 == 0:
            labels = (rng.random(n) < 0.05).astype(int)  # rare targets, as in real trial lists
            labels[0], labels[-1] = 1, 0
        yield pytest.param(scores, labels, id=f"random{case}")


DEGENERATE = {
    "all-equal": (np.zeros(10), np.array([1, 0] * 5)),
    "all-equal-unbalanced": (np.full(7, 0.3), np.array([1, 0, 0, 0, 0, 0, 0])),
    "perfect": (np.array([0.9, 0.8, 0.1, 0.2]), np.array([1, 1, 0, 0])),
    "reversed": (np.array([0.1, 0.2, 0.9, 0.8]), np.array([1, 1, 0, 0])),
    "tie-at-boundary": (np.array([1.0, 0.5, 0.5, 0.0]), np.array([1, 1, 0, 0])),
    "tied-groups": (np.array([3, 3, 3, 2, 2, 2, 1, 1, 1.0]), np.array([1, 1, 0, 1, 0, 0, 0, 0, 1])),
    "one-each": (np.array([0.2, 0.7]), np.array([1, 0])),
    "single-target": (np.array([0.5, 0.1, 0.6, 0.4, 0.3]), np.array([1, 0, 0, 0, 0])),
}


@pytest.mark.parametrize("scores, labels", [*_random_sets(), *(pytest.param(*v, id=k) for k, v in DEGENERATE.items())])
def test_eer_and_min_dcf_match_brute_force(scores, labels):
    assert equal_error_rate(scores, labels) == pytest.approx(brute_force_eer(scores, labels), abs=1e-12)
    assert min_dcf(scores, labels) == pytest.approx(brute_force_min_dcf(scores, labels), abs=1e-12)
    assert min_dcf(scores, labels, p_target=0.05, c_miss=10) == pytest.approx(
        brute_force_min_dcf(scores, labels, 0.05, 10.0, 1.0), abs=1e-12)


def test_degenerate_sets_have_the_known_answers():
    assert equal_error_rate(*DEGENERATE["all-equal"]) == pytest.approx(0.5)
    assert min_dcf(*DEGENERATE["all-equal"]) == pytest.approx(1.0)  # accepting nothing costs p_target: normalised 1
    assert equal_error_rate(*DEGENERATE["perfect"]) == 0.0 and min_dcf(*DEGENERATE["perfect"]) == 0.0
    assert equal_error_rate(*DEGENERATE["reversed"]) == pytest.approx(1.0)
    assert min_dcf(*DEGENERATE["reversed"]) == pytest.approx(1.0)
    # The tied pair (one target, one non-target at 0.5) is accepted or rejected together: the operating
    # point jumps from (FRR 0.5, FAR 0) to (0, 0.5), and the segment between crosses FRR = FAR at 0.25.
    assert equal_error_rate(*DEGENERATE["tie-at-boundary"]) == pytest.approx(0.25)


def test_scores_invariant_to_monotone_transforms():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 300)
    scores = rng.normal(size=300) + labels
    for transformed in (np.exp(scores), 3 * scores - 2, np.tanh(scores / 4)):
        assert equal_error_rate(transformed, labels) == pytest.approx(equal_error_rate(scores, labels), abs=1e-12)
        assert min_dcf(transformed, labels) == pytest.approx(min_dcf(scores, labels), abs=1e-12)


def test_one_class_only_is_an_error_or_undefined():
    with pytest.raises(ValueError, match="both target and non-target"):
        equal_error_rate(np.array([0.1, 0.2]), np.array([1, 1]))
    metrics = verification_metrics(np.array([0.3]), np.array([1]))
    assert metrics["eer"] is None and metrics["min_dcf"] is None and metrics["targets"] == 1


def test_confusion_ua_and_wa_on_an_unbalanced_set():
    # class 0: 8 examples, 6 right; class 1: 2 examples, 1 right; class 2: absent from the labels.
    labels = np.array([0] * 8 + [1] * 2)
    predictions = np.array([0] * 6 + [1, 2] + [1, 0])
    matrix = confusion_matrix(predictions, labels, 3)
    assert matrix.tolist() == [[6, 1, 1], [1, 1, 0], [0, 0, 0]]
    assert weighted_accuracy(matrix) == pytest.approx(7 / 10)
    assert unweighted_average_recall(matrix) == pytest.approx((6 / 8 + 1 / 2) / 2)  # absent class not counted

    logits = np.eye(3)[predictions] + 0.01
    report = classification_metrics(logits, labels, ["a", "b", "c"])
    assert report["wa"] == pytest.approx(report["top1"]) and report["ua"] == pytest.approx(0.625)
    assert report["per_class_recall"] == {"a": 0.75, "b": 0.5, "c": None}
    assert report["confusion"]["rows_true_columns_predicted"] == matrix.tolist()
    assert report["top5"] == 1.0


def test_classification_metrics_of_nothing_are_nan():
    report = classification_metrics(np.zeros((0, 3)), np.zeros(0, dtype=int), ["a", "b", "c"])
    assert math.isnan(report["top1"]) and math.isnan(report["ua"]) and math.isnan(report["wa"])
