"""Sequential pipeline on the tiny corpus: a sequential teacher trained on frame sequences, its per-window cache
(aggregator and window_soft rows over the window's frame embeddings, Eq. 5), and stage 3 at every method and level
with no teacher present; refusals name the cause."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cache.store import StoreError, open_store
from pipeline import config as config_io
from pipeline import runs
from pipeline.face_store import open_faces
from pipeline.features import SEGMENT_VIDEO_FRAMES
from pipeline.targets import window_frames

pytestmark = pytest.mark.slow

WINDOW_SECONDS = 2


@pytest.fixture(scope="module")
def sequential_run(tiny_run, tmp_path_factory) -> Path:
    """A run dir sharing tiny_run's prepared stores, with a tiny sequential teacher and its cache."""
    from stages import export_embeddings, train_teacher

    run_dir = tmp_path_factory.mktemp("sequential") / "run"
    run_dir.mkdir()
    (run_dir / "prepare").symlink_to(tiny_run / "run" / "prepare")
    train_teacher.run(config_io.build(train_teacher.TeacherConfig, {
        "run_dir": run_dir, "arch": "seresnet34", "tiny": True, "sequential": True, "window_seconds": WINDOW_SECONDS,
        "epochs": 1, "batch_size": 4, "num_workers": 0, "device": "cpu"}))
    export_embeddings.run(config_io.build(export_embeddings.ExportConfig, {
        "run_dir": run_dir, "device": "cpu", "num_workers": 0, "batch_frames": 256}))
    return run_dir


def _expected_windows(n_frames: int) -> list[tuple[int, int]]:
    whole = n_frames // SEGMENT_VIDEO_FRAMES
    if whole < WINDOW_SECONDS:
        return [(0, math.ceil(n_frames / SEGMENT_VIDEO_FRAMES))]
    return [(start, start + WINDOW_SECONDS) for start in range(whole - WINDOW_SECONDS + 1)]


def test_cache_holds_one_aggregator_row_per_window(sequential_run):
    from pipeline.checkpoints import load_teacher

    cache = open_store(runs.embeddings_dir(sequential_run) / "voxceleb.zarr")
    assert cache.attrs["window_seconds"] == WINDOW_SECONDS and cache.attrs["teacher_sequential"] is True
    teacher = load_teacher(runs.teacher_checkpoint(sequential_run)).model
    lengths = set()
    for key in cache.keys:
        windows = _expected_windows(cache.length(key, "frames"))
        lengths.add(windows[0][1] - windows[0][0])
        assert cache.length(key, "aggregator") == cache.length(key, "window_soft") == len(windows)
        np.testing.assert_allclose(cache.read(key, "window_soft").sum(axis=1), 1.0, atol=1e-5)
        frames = torch.from_numpy(cache.read(key, "frames").astype(np.float32))
        last = window_frames(len(frames), windows[-1][0], WINDOW_SECONDS)  # Eq. 5: the window's frame embeddings
        assert len(last) == WINDOW_SECONDS * 25
        with torch.inference_mode():
            expected = teacher.aggregate(frames[last][None])[0].numpy()
        np.testing.assert_allclose(cache.read(key, "aggregator")[-1].astype(np.float32), expected, atol=5e-3)
    assert WINDOW_SECONDS in lengths  # (short utterances have one window of their own frames, repeated)


def test_window_frames_are_the_window_in_time_order_or_the_utterance_repeated():
    assert window_frames(130, 1, 2).tolist() == list(range(25, 75))
    assert window_frames(30, 0, 2).tolist() == list(range(30)) + list(range(20))  # as a student crop repeat-pads


@pytest.mark.parametrize("frames_per_segment", [25, 3])
def test_teacher_training_windows_are_frame_sequences(tiny_run, frames_per_segment):
    """Stage 1 reads what export aggregates: a window's frames in time order (all of them, or k per segment)."""
    from pipeline.data import RandomWindows

    store_path = runs.find_store(runs.prepare_dir(tiny_run / "run"), "faces")
    store = open_faces(store_path)
    keys = list(store.keys)
    dataset = RandomWindows(store_path, keys, [0] * len(keys), WINDOW_SECONDS, frames_per_segment)
    torch.manual_seed(0)
    for index, key in enumerate(keys):
        frames, _ = dataset[index]
        assert frames.shape[0] == WINDOW_SECONDS * frames_per_segment
        assert frames.shape[1:] == store.read(key, 0, 1).shape[1:]
        if frames_per_segment == 25:  # one of the windows export aggregates, maybe flipped
            stored, n_frames = store.read(key), store.length(key)
            windows = [stored[window_frames(n_frames, start, WINDOW_SECONDS)]
                       for start in range(max(1, n_frames // 25 - WINDOW_SECONDS + 1))]
            assert any(np.array_equal(window, frames.numpy()) or np.array_equal(window[:, :, ::-1], frames.numpy())
                       for window in windows)
    with pytest.raises(ValueError, match="frames_per_segment"):
        RandomWindows(store_path, keys, [0] * len(keys), WINDOW_SECONDS, 26)


@pytest.mark.parametrize(("method", "level"), [
    ("proposed", "encoder"), ("proposed", "aggregator"), ("soft-label", "aggregator"), ("multitask", "encoder"),
    ("soft-label", "non-sequential"), ("multitask", "non-sequential"),
])
def test_student_trains_at_every_level_from_the_cache_alone(sequential_run, method, level):
    from stages import train_student

    out = train_student.run(config_io.build(train_student.StudentConfig, {
        "run_dir": sequential_run, "arch": "vgg", "tiny": True, "method": method, "level": level, "lam": 0.5,
        "epochs": 1, "batch_size": 4, "crop_seconds": WINDOW_SECONDS, "num_workers": 0, "device": "cpu"}))
    metrics = runs.read_json(out / "metrics.json")
    assert out.name == f"vgg-{level}-{method}-lambda0.5-seed0".replace("-non-sequential", "")
    assert metrics["level"] == level and metrics["history"][0]["distance"] > 0
    assert math.isfinite(metrics["history"][0]["loss"])
    checkpoint = torch.load(out / "student.pt", weights_only=True)
    assert checkpoint["spec"]["sequential"] == (level != "non-sequential")
    assert not any(key.startswith("decoder") for key in checkpoint["state_dict"])  # multitask's decoder is dropped


def test_aggregator_level_refuses_a_non_sequential_cache(tiny_run, tmp_path):
    from stages import export_embeddings, train_student

    cache = export_embeddings.run(config_io.build(export_embeddings.ExportConfig, {
        "run_dir": tiny_run / "run", "out": tmp_path / "frames.zarr", "device": "cpu", "num_workers": 0}))
    cfg = config_io.build(train_student.StudentConfig, {
        "run_dir": tmp_path / "run", "cache": cache, "tiny": True, "level": "aggregator", "epochs": 1,
        "crop_seconds": WINDOW_SECONDS, "num_workers": 0, "device": "cpu"})
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "prepare").symlink_to(tiny_run / "run" / "prepare")
    with pytest.raises(StoreError, match="no 'aggregator' rows.*non-sequential teacher.*--sequential"):
        train_student.run(cfg)


def test_window_length_must_match_the_crop(sequential_run):
    from stages import train_student

    cfg = config_io.build(train_student.StudentConfig, {
        "run_dir": sequential_run, "tiny": True, "level": "aggregator", "epochs": 1, "crop_seconds": 3,
        "num_workers": 0, "device": "cpu", "name": "refused-window"})
    with pytest.raises(StoreError, match="window_seconds=2 s.*crop_seconds=3 s"):
        train_student.run(cfg)
