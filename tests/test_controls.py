"""Stage 3's controls (pipeline/controls.py): shuffled targets are a fixed permutation of the training utterances'
own, class-mean targets are constant within a class and equal its mean, random prototypes are constant per class
and unrelated to the teacher beyond its scale; stage 3 trains with each and records which it used."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest

from pipeline import config as config_io
from pipeline import runs
from pipeline.controls import CONTROLS, class_means, random_prototypes, shuffled_donors
from pipeline.data import Crops
from pipeline.manifest import Entry

DIM, SECONDS = 6, 2


class FakeStore:
    """What Crops and class_means read: a spectrogram of zeros, and per-utterance teacher rows."""

    def __init__(self, peaks: dict[str, np.ndarray], n_segments: int = SECONDS):
        self.peaks, self.keys = peaks, list(peaks)
        self.n_segments = n_segments

    def read(self, key: str, field: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        if field == "spectrogram":
            return np.zeros((stop - start, 4), dtype=np.float32)
        if field == "peak":
            return self.peaks[key]
        if field == "segments":  # each segment: the peak plus its index, so rows differ
            rows = self.peaks[key][None] + np.arange(self.n_segments)[:, None]
            return rows[start:stop]
        raise KeyError(field)


def _corpus(n: int = 12, classes: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    entries = [Entry(f"u{i:02d}", f"c{i % classes}", "train", SECONDS * 25, float(SECONDS), "") for i in range(n)]
    labels = [i % classes for i in range(n)]
    peaks = {entry.key: rng.normal(label, 1.0, DIM).astype(np.float32) for entry, label in zip(entries, labels)}
    return entries, labels, FakeStore(peaks)


def _targets(dataset: Crops) -> np.ndarray:
    return np.stack([dataset[i][2].numpy() for i in range(len(dataset))])


def test_shuffled_targets_are_a_fixed_seeded_permutation_of_the_utterances_own():
    entries, labels, store = _corpus()
    donors = shuffled_donors(len(entries), seed=3)
    assert sorted(donors.tolist()) == list(range(len(entries)))  # a permutation
    assert np.array_equal(donors, shuffled_donors(len(entries), seed=3))  # fixed for the run
    assert not np.array_equal(donors, shuffled_donors(len(entries), seed=4))  # seeded
    own = _targets(Crops(entries, labels, store, store, SECONDS, "utterance-peak"))
    shuffled = _targets(Crops(entries, labels, store, store, SECONDS, "utterance-peak", donors=donors))
    np.testing.assert_array_equal(shuffled, own[donors])
    np.testing.assert_array_equal(np.sort(shuffled, axis=0), np.sort(own, axis=0))  # the same targets, moved
    again = _targets(Crops(entries, labels, store, store, SECONDS, "utterance-peak", donors=donors))
    np.testing.assert_array_equal(again, shuffled)  # every epoch the same donor


def test_class_mean_targets_are_constant_within_a_class_and_its_mean():
    entries, labels, store = _corpus()
    means = class_means(store, entries, labels, n_classes=4, target_kind="crop-peak")
    assert means.shape == (4, DIM)
    peaks = np.stack([store.peaks[entry.key] for entry in entries])
    for label in range(3):
        np.testing.assert_allclose(means[label], peaks[np.array(labels) == label].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(means[3], peaks.mean(axis=0), rtol=1e-6)  # no training utterance: the overall mean
    targets = _targets(Crops(entries, labels, store, None, SECONDS, "crop-peak", class_targets=means))
    for label in range(3):
        rows = targets[np.array(labels) == label]
        assert np.all(rows == rows[0]) and np.array_equal(rows[0], means[label])
    segments = class_means(store, entries, labels, 3, "segments")  # the mean over each utterance's segments
    np.testing.assert_allclose(segments, means[:3] + (SECONDS - 1) / 2, rtol=1e-5)
    tiled = Crops(entries, labels, store, None, SECONDS, "segments", class_targets=segments)[0][2].numpy()
    assert tiled.shape == (SECONDS, DIM) and np.all(tiled == segments[labels[0]])


def test_random_prototypes_are_constant_per_class_and_unrelated_to_the_teacher_beyond_its_scale():
    entries, labels, store = _corpus()
    means = class_means(store, entries, labels, 3, "crop-peak")
    prototypes = random_prototypes(means, seed=5)
    assert prototypes.shape == means.shape and prototypes.dtype == np.float32
    targets = _targets(Crops(entries, labels, store, None, SECONDS, "crop-peak", class_targets=prototypes))
    for label in range(3):
        assert np.all(targets[np.array(labels) == label] == prototypes[label])
    # another teacher with other class means: the same draws, only moved and scaled to its centre and spread
    other = np.random.default_rng(9).normal(0, 3, means.shape).astype(np.float32)
    standardised = [(p - m.mean(axis=0)) / m.std(axis=0) for p, m in
                    ((prototypes, means), (random_prototypes(other, seed=5), other))]
    np.testing.assert_allclose(standardised[0], standardised[1], rtol=1e-4, atol=1e-4)
    assert not np.allclose(random_prototypes(means, seed=6), prototypes)  # seeded
    many = random_prototypes(np.tile(means, (200, 1)), seed=5)  # the scale: the class means' centre and spread
    np.testing.assert_allclose(many.mean(axis=0), means.mean(axis=0), atol=0.3)


def test_control_is_validated_and_names_the_run(tmp_path):
    from stages import train_student

    cfg = config_io.build(train_student.StudentConfig, {"run_dir": tmp_path, "control": "shuffled", "seed": 2})
    assert cfg.run_name == "proposed-shuffled-lambda0.4-seed2"
    with pytest.raises(config_io.ConfigError, match="control"):
        config_io.build(train_student.StudentConfig, {"run_dir": tmp_path, "control": "shuffle"})
    with pytest.raises(config_io.ConfigError, match="random-prototype"):
        config_io.build(train_student.StudentConfig, {"run_dir": tmp_path, "control": "random-prototype",
                                                      "method": "soft-label"})


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory) -> Path:
    """A copy of the tiny run with its teacher's cache exported."""
    from stages import export_embeddings

    work = tmp_path_factory.mktemp("controls")
    shutil.copytree(tiny_run / "run", work / "run", symlinks=True)
    export_embeddings.run(config_io.build(export_embeddings.ExportConfig, {
        "run_dir": work / "run", "device": "cpu", "num_workers": 0}))
    return work / "run"


@pytest.mark.slow
@pytest.mark.parametrize("control", [name for name in CONTROLS if name != "none"])
def test_stage_3_trains_with_each_control_and_records_it(exported, control):
    from stages import train_student

    out = train_student.run(config_io.build(train_student.StudentConfig, {
        "run_dir": exported, "tiny": True, "lam": 0.5, "epochs": 1, "batch_size": 4, "crop_seconds": 1,
        "num_workers": 0, "device": "cpu", "control": control}))
    assert out.name == f"proposed-{control}-lambda0.5-seed0"
    assert tomllib.loads((out / "config.toml").read_text())["control"] == control
    metrics = runs.read_json(out / "metrics.json")
    assert metrics["control"]["kind"] == control and metrics["control"]["applied"] is True
    assert metrics["history"][-1]["distance"] > 0  # a target entered the loss
    assert np.isfinite(metrics["identification"]["top1"])
