"""Stage 3's controls: teacher targets replaced by ones that keep only part of what the teacher knows.

| control          | each training crop's target                                                                   |
|------------------|-----------------------------------------------------------------------------------------------|
| none             | its own utterance's cached target                                                              |
| shuffled         | another training utterance's target: a fixed permutation of the training keys seeded by the     |
|                  | run's seed (the same for every epoch); the donor's crop is drawn on the donor                   |
| class-mean       | its class's mean cached target over the training split: the label and the teacher's geometry    |
|                  | between classes, nothing about the utterance                                                    |
| random-prototype | a fixed random vector per class (seeded), with the per-dimension centre and spread of the        |
|                  | teacher's class means: constant per class and unrelated to the teacher beyond its scale         |

The null corpus (no information shared by face and voice) is a corpus setting (`avl data synth --preset null`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cache.store import open_store
from pipeline.manifest import Entry

CONTROLS = {
    "none": "the utterance's own teacher target",
    "shuffled": "another training utterance's target (a fixed seeded permutation of the training keys)",
    "class-mean": "the class's mean teacher target over the training split",
    "random-prototype": "a fixed random vector per class with the teacher's scale",
}
# The cache field a target kind's class mean is taken over: one row per utterance (peaks) or its rows' mean.
CLASS_MEAN_FIELDS = {"crop-peak": "peak", "utterance-peak": "peak", "segments": "segments",
                     "aggregator": "aggregator", "soft": "soft", "window-soft": "window_soft"}
PROBABILITY_TARGETS = ("soft", "window-soft")  # random prototypes are embeddings, not class probabilities
_PROTOTYPE_STREAM = 16  # the prototypes' seed is (seed, 16): unrelated to the training run's other draws


def shuffled_donors(n_utterances: int, seed: int) -> np.ndarray:
    """(N,) the training utterance whose target each training utterance gets: a seeded permutation."""
    return np.random.default_rng([seed, _PROTOTYPE_STREAM, 1]).permutation(n_utterances)


def class_means(cache, entries: list[Entry], labels: list[int], n_classes: int, target_kind: str) -> np.ndarray:
    """(C, D) each class's mean target over `entries` (each utterance counts once: the mean of its rows); a class
    without training utterances gets the mean over all classes."""
    field = CLASS_MEAN_FIELDS[target_kind]
    # peak and soft hold one row per utterance (D,), segments and windows several (S, D): their mean
    rows = np.stack([np.atleast_2d(cache.read(entry.key, field).astype(np.float64)).mean(axis=0)
                     for entry in entries])  # (N, D)
    labels_array = np.asarray(labels)
    means = np.tile(rows.mean(axis=0), (n_classes, 1))
    for label in np.unique(labels_array):
        means[label] = rows[labels_array == label].mean(axis=0)
    return means.astype(np.float32)


def random_prototypes(means: np.ndarray, seed: int, present: np.ndarray | None = None) -> np.ndarray:
    """(C, D) standard normal draws (seeded) scaled to the class means' per-dimension centre and spread."""
    reference = means if present is None else means[present]
    centre, spread = reference.mean(axis=0), reference.std(axis=0)
    draws = np.random.default_rng([seed, _PROTOTYPE_STREAM, 2]).standard_normal(means.shape)
    return (centre + spread * draws).astype(np.float32)


def controlled_targets(control: str, cache_path: Path, entries: list[Entry], labels: list[int], n_classes: int,
                       target_kind: str, seed: int) -> tuple[np.ndarray | None, np.ndarray | None, dict]:
    """(donors, class targets, what was done) for `Crops`: donors for shuffled, a (C, D) table for class-mean and
    random-prototype, neither for none."""
    record: dict = {"kind": control, "applied": control != "none", "seed": seed, "target": target_kind}
    if control == "none":
        return None, None, record
    if control == "shuffled":
        donors = shuffled_donors(len(entries), seed)
        record["own_target_kept"] = int((donors == np.arange(len(entries))).sum())
        return donors, None, record
    with open_store(cache_path) as cache:
        means = class_means(cache, entries, labels, n_classes, target_kind)
    if control == "class-mean":
        record["classes_without_training_utterances"] = int(n_classes - len(set(labels)))
        return None, means, record
    present = np.unique(np.asarray(labels))
    prototypes = random_prototypes(means, seed, present)
    record["scale"] = {"centre_norm": float(np.linalg.norm(means[present].mean(axis=0))),
                       "mean_spread": float(means[present].std(axis=0).mean())}
    return None, prototypes, record
