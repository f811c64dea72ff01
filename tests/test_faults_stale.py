"""Stage 3 checks what it trains on: a cache made for another manifest (one utterance re-encoded to another length,
then prepared again) or by another teacher (teacher.pt replaced) is refused, naming the first differing key or
both fingerprints; --accept-foreign-cache trains on it knowingly and the run records that it did."""

from __future__ import annotations

import os
import shutil
import tomllib
from pathlib import Path

import pytest
import torch

from cache.store import StoreError
from pipeline import checkpoints, runs
from pipeline import config as config_io
from pipeline.manifest import read_manifest
from stages import export_embeddings, prepare, train_student

@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory) -> Path:
    """A copy of the tiny run with its teacher's cache exported."""
    work = tmp_path_factory.mktemp("stale")
    shutil.copytree(tiny_run / "run", work / "run", symlinks=True)
    export_embeddings.run(config_io.build(export_embeddings.ExportConfig, {
        "run_dir": work / "run", "device": "cpu", "num_workers": 0}))
    return work / "run"


@pytest.fixture
def run_dir(exported, tmp_path) -> Path:
    shutil.copytree(exported, tmp_path / "run", symlinks=True)
    return tmp_path / "run"


def _train(run_dir: Path, **settings) -> Path:
    return train_student.run(config_io.build(train_student.StudentConfig, {
        "run_dir": run_dir, "tiny": True, "lam": 0.4, "epochs": 1, "batch_size": 4, "crop_seconds": 1,
        "num_workers": 0, "device": "cpu", **settings}))


def _recorded(out: Path) -> tuple[bool, dict]:
    """(accept_foreign_cache in config.toml, metrics.json's foreign_cache)."""
    saved = tomllib.loads((out / "config.toml").read_text())
    return saved.get("accept_foreign_cache"), runs.read_json(out / "metrics.json")["foreign_cache"]


@pytest.mark.slow
def test_this_runs_own_cache_is_accepted_and_nothing_is_recorded(run_dir):
    assert _recorded(_train(run_dir, name="own")) == (False, None)


@pytest.mark.slow
def test_a_cache_of_another_manifest_is_refused_naming_the_first_utterance_whose_length_changed(
        tiny_run, run_dir, tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(tiny_run / "corpus", corpus)
    entries = read_manifest(run_dir / "prepare")
    changed = next(entry for entry in entries if entry.split == "train")
    donor = next(entry for entry in entries if entry.n_video_frames != changed.n_video_frames)
    # "re-encode" the utterance as a clip of another length, then prepare the corpus again
    shutil.copyfile(donor.source, corpus / os.path.relpath(changed.source, tiny_run / "corpus"))
    prepare.run(config_io.build(prepare.PrepareConfig, {"root": corpus, "run_dir": run_dir, "num_workers": 0,
                                                        "overwrite": True}))
    now = {entry.key: entry.n_video_frames for entry in read_manifest(run_dir / "prepare")}
    assert now[changed.key] == donor.n_video_frames != changed.n_video_frames

    with pytest.raises(StoreError) as refused:
        _train(run_dir, name="stale-manifest")
    message = str(refused.value)
    assert f"the first {changed.key!r}: {changed.n_video_frames} frames in the cache, {donor.n_video_frames} in " \
           "the manifest" in message
    assert "--accept-foreign-cache" in message and "\n" not in message
    assert not (run_dir / "students" / "stale-manifest" / "config.toml").exists()  # refused before claiming it

    accepted, record = _recorded(_train(run_dir, name="stale-manifest", accept_foreign_cache=True))
    assert accepted is True and record["left_out"] == [changed.key]
    assert "made for manifest" in record["accepted"][0]


@pytest.mark.slow
def test_a_cache_of_another_teacher_is_refused_naming_both_fingerprints(run_dir):
    teacher = run_dir / "teacher" / "teacher.pt"
    made_by = runs.file_sha256(teacher)
    loaded = checkpoints.load_teacher(teacher)
    with torch.no_grad():
        next(loaded.model.parameters()).mul_(0.5)
    checkpoints.save_teacher(teacher, loaded.model, loaded.class_names, loaded.face_size, loaded.window_seconds)
    replaced = runs.file_sha256(teacher)

    for pinned in (None, made_by):  # --expect-teacher names the cache's teacher: teacher.pt still differs
        with pytest.raises(StoreError) as refused:
            _train(run_dir, name="stale-teacher", expect_teacher=pinned)
        assert f"made by teacher {made_by}" in str(refused.value) and f"is teacher {replaced}" in str(refused.value)

    accepted, record = _recorded(_train(run_dir, name="stale-teacher", accept_foreign_cache=True))
    assert accepted is True and record["left_out"] == []
    assert made_by in record["accepted"][0] and replaced in record["accepted"][0]
    assert runs.read_json(run_dir / "students" / "stale-teacher" / "metrics.json")["teacher_fingerprint"] == made_by


@pytest.mark.parametrize("pin", ["", "a", "62bdb52559", "not-hex-at-all-0000"])
def test_expect_teacher_needs_a_real_fingerprint(pin):
    with pytest.raises(config_io.ConfigError, match="--expect-teacher"):
        config_io.build(train_student.StudentConfig, {"expect_teacher": pin})
    assert config_io.build(train_student.StudentConfig, {"expect_teacher": "0123456789ab"})
