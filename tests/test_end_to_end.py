"""Stages 0–3 on a tiny synthetic corpus of real mp4 files, through the same code `avl demo` runs."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cache.store import open_store
from pipeline import runs
from pipeline.face_store import open_faces
from stages import demo

pytestmark = pytest.mark.slow

VIDEO_OR_TEACHER_MODULES = ("av", "pipeline.media", "pipeline.models.teachers", "stages.prepare",
                            "stages.train_teacher", "stages.export_embeddings", "pipeline.datasets.synthetic")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("demo")
    demo.run(demo.DemoConfig(work=work, size="tiny", lambdas=(0.0, 0.5), seeds=(0,), device="cpu"))
    return work


def test_every_stage_wrote_its_outputs(demo_run):
    run_dir = demo_run / "run"
    for path in ("prepare/manifest.tsv", "prepare/classes.txt", "prepare/trials.tsv", "prepare/config.toml",
                 "prepare/spectrograms.zarr", "prepare/faces.zarr", "teacher/teacher.pt", "teacher/metrics.json",
                 "teacher/history.png", "embeddings/voxceleb.zarr", "students/proposed-lambda0-seed0/student.pt",
                 "students/proposed-lambda0.5-seed0/metrics.json", "students/proposed-lambda0.5-seed0/config.toml"):
        assert (run_dir / path).exists(), path
    assert (demo_run / "demo.md").read_text().count("audio student") == 2


def test_cache_holds_every_target_for_every_train_and_val_utterance_and_no_test_one(demo_run):
    from pipeline.manifest import read_manifest

    run_dir = demo_run / "run"
    cache = open_store(run_dir / "embeddings" / "voxceleb.zarr")
    faces = open_faces(run_dir / "prepare" / "faces.zarr")
    teacher = runs.read_json(run_dir / "teacher" / "metrics.json")
    assert cache.attrs["teacher_fingerprint"] == teacher["teacher_fingerprint"]
    assert cache.attrs["teacher_fingerprint"] == runs.file_sha256(run_dir / "teacher" / "teacher.pt")
    assert cache.attrs["splits"] == ["train", "val"]
    entries = read_manifest(run_dir / "prepare")
    assert sorted(cache.keys) == sorted(e.key for e in entries if e.split in ("train", "val"))
    assert not {e.key for e in entries if e.split == "test"} & set(cache.keys)
    assert set(cache.keys) < set(faces.keys)
    for key in cache.keys:
        n_frames = faces.length(key)
        assert cache.length(key, "frames") == cache.length(key, "frame_prob") == n_frames
        assert cache.length(key, "segments") == math.ceil(n_frames / 25)
        frames = cache.read(key, "frames").astype(np.float32)
        peak = int(cache.read(key, "frame_prob").argmax())
        np.testing.assert_array_equal(cache.read(key, "peak"), cache.read(key, "frames")[peak])
        np.testing.assert_allclose(cache.read(key, "segments")[0].astype(np.float32), frames[:25].mean(0), rtol=2e-3, atol=2e-3)  # float16 storage
        assert np.isfinite(frames).all()
        assert cache.read(key, "soft").sum() == pytest.approx(1.0, abs=1e-4)


def test_metrics_are_finite_and_students_beat_chance(demo_run):
    run_dir = demo_run / "run"
    n_classes = len((run_dir / "prepare" / "classes.txt").read_text().split())
    teacher = runs.read_json(run_dir / "teacher" / "metrics.json")
    assert teacher["test"]["utterance_accuracy"] > 1.0 / n_classes
    for name in ("proposed-lambda0-seed0", "proposed-lambda0.5-seed0"):
        metrics = runs.read_json(run_dir / "students" / name / "metrics.json")
        assert all(math.isfinite(row["loss"]) for row in metrics["history"])
        assert metrics["identification"]["top1"] > 1.0 / n_classes, name
        assert 0.0 <= metrics["verification"]["eer"] <= 1.0
    distilled = runs.read_json(run_dir / "students" / "proposed-lambda0.5-seed0" / "metrics.json")
    assert distilled["history"][-1]["distance"] > 0  # the teacher target really entered the loss


def test_train_student_imports_no_video_or_teacher_code(demo_run):
    """Run stage 3 through the CLI in a fresh interpreter and list what it imported."""
    script = (
        "import sys\n"
        "from pipeline.cli import main\n"
        f"sys.argv = ['avl', 'stage', 'train-student', '--lambda', '0.4', '--run-dir', {str(demo_run / 'run')!r},"
        " '--tiny', '--epochs', '1', '--batch-size', '4', '--crop-seconds', '2', '--name', 'import-check',"
        " '--num-workers', '0', '--device', 'cpu']\n"
        "try:\n    main()\nexcept SystemExit as exit:\n    assert not exit.code, exit.code\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] == 'av' or m in {VIDEO_OR_TEACHER_MODULES!r}]\n"
        "print('IMPORTED', bad)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "IMPORTED []" in result.stdout, result.stdout[-2000:]


def test_student_refuses_a_cache_from_another_teacher(demo_run):
    from cache.store import StoreError
    from pipeline import config as config_io
    from stages import train_student

    cfg = config_io.build(train_student.StudentConfig, {
        "run_dir": str(demo_run / "run"), "tiny": True, "epochs": 1, "expect_teacher": "0" * 64,
        "num_workers": 0, "device": "cpu"})
    with pytest.raises(StoreError, match="expected 0000"):
        train_student.run(cfg)


def test_rerunning_export_reuses_the_complete_cache(demo_run):
    from pipeline import config as config_io
    from stages import export_embeddings

    cfg = config_io.build(export_embeddings.ExportConfig, {"run_dir": str(demo_run / "run"), "device": "cpu",
                                                          "num_workers": 0})
    out = export_embeddings.run(cfg)
    stats = json.loads((out.parent / f"{out.name}.export.json").read_text())
    assert stats["utterances_exported"] == 0 and stats["utterances_total"] > 0


def _student_command(run_dir: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "stage", "train-student", "--run-dir", str(run_dir), "--tiny",
            "--lambda", "0.5", "--epochs", "4", "--batch-size", "4", "--crop-seconds", "2", "--num-workers", "1",
            "--device", "cpu", "--name", name, *extra]


def test_killed_student_resumes_to_the_same_metrics(demo_run):
    """SIGKILL a real training process after its first epoch checkpoint; --resume must end where an uninterrupted run does."""
    import os
    import signal
    import time

    run_dir = demo_run / "run"
    subprocess.run(_student_command(run_dir, "uninterrupted"), check=True, capture_output=True, timeout=300)

    killed = subprocess.Popen(_student_command(run_dir, "killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = run_dir / "students" / "killed" / "last.pt"
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert checkpoint.exists() and not (checkpoint.parent / "metrics.json").exists()

    refused = subprocess.run(_student_command(run_dir, "killed"), capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "--resume" in refused.stderr  # never silently restarted

    subprocess.run(_student_command(run_dir, "killed", "--resume"), check=True, capture_output=True, timeout=300)
    reference = runs.read_json(run_dir / "students" / "uninterrupted" / "metrics.json")
    resumed = runs.read_json(run_dir / "students" / "killed" / "metrics.json")
    for expected, got in zip(reference["history"], resumed["history"], strict=True):
        assert got["loss"] == pytest.approx(expected["loss"], rel=1e-4)
        assert got["val_accuracy"] == expected["val_accuracy"]
    assert resumed["identification"] == reference["identification"]
    assert resumed["verification"]["eer"] == pytest.approx(reference["verification"]["eer"], abs=1e-6)

    finished = subprocess.run(_student_command(run_dir, "killed"), capture_output=True, text=True, timeout=300)
    assert finished.returncode == 2 and "finished run" in finished.stderr  # never silently replaced
