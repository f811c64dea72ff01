"""The GPU-path settings, exercised on the CPU: bf16 autocast, channels-last weights, torch.compile of the
training step, and max_steps_per_epoch. The saved student must load into an uncompiled model."""

import pytest
import torch

from pipeline import config as config_io
from pipeline import runs
from pipeline.training import autocast_dtype
from stages import train_student, train_teacher

pytestmark = pytest.mark.slow


def test_autocast_dtype_follows_precision_and_device() -> None:
    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("auto", torch.device("cuda")) is torch.bfloat16
    assert autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    assert autocast_dtype("fp32", torch.device("cuda")) is None
    with pytest.raises(config_io.ConfigError, match="precision"):
        config_io.build(train_student.StudentConfig, {"precision": "fp8"})


@pytest.mark.parametrize("settings", [
    {"precision": "bf16", "channels_last": True},
    {"compile": True},
], ids=["bf16-channels-last", "compile"])
def test_student_trains_with_speed_settings(tiny_run, settings) -> None:
    run_dir = tiny_run / "run"
    name = "speed-" + "-".join(settings)
    out = train_student.run(config_io.build(train_student.StudentConfig, {
        "run_dir": run_dir, "tiny": True, "lam": 0.0, "epochs": 1, "batch_size": 2, "crop_seconds": 1,
        "num_workers": 0, "device": "cpu", "name": name, "max_steps_per_epoch": 2, **settings}))
    metrics = runs.read_json(out / "metrics.json")
    assert metrics["precision"] == ("bfloat16" if settings.get("precision") == "bf16" else "float32")
    assert torch.isfinite(torch.tensor(metrics["history"][0]["loss"]))
    state = torch.load(out / "student.pt", map_location="cpu", weights_only=True)["state_dict"]
    assert not any("_orig_mod" in key for key in state)  # the uncompiled model's weights


def test_teacher_trains_in_bf16_channels_last(tiny_run, tmp_path) -> None:
    run_dir = tmp_path / "run"
    runs.prepare_dir(run_dir).parent.mkdir(parents=True)
    runs.prepare_dir(run_dir).symlink_to(runs.prepare_dir(tiny_run / "run").resolve())
    train_teacher.run(config_io.build(train_teacher.TeacherConfig, {
        "run_dir": run_dir, "tiny": True, "epochs": 1, "batch_size": 2, "num_workers": 0, "device": "cpu",
        "precision": "bf16", "channels_last": True, "max_steps_per_epoch": 2}))
    metrics = runs.read_json(runs.teacher_dir(run_dir) / "metrics.json")
    assert len(metrics["history"]) == 1 and runs.teacher_checkpoint(run_dir).exists()
