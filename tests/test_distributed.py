"""torchrun with 2 real processes (gloo, CPU): sharded export equals the single-process export key by key;
DDP teacher and student training run, checkpoint on rank 0, reduce their metrics over ranks, and a killed
distributed student resumes to the same metrics as an uninterrupted one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cache.parts import is_parts_directory
from cache.store import open_store
from pipeline import config as config_io
from pipeline import runs
from pipeline.distributed import torchrun_command
from pipeline.manifest import read_manifest
from pipeline.processes import process_tree

pytestmark = pytest.mark.slow


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def _avl(*args: str, nproc: int | None = None) -> list[str]:
    """The `avl` command line; with nproc, the torchrun command `--nproc-per-node` re-executes into."""
    argv = ["stage", *args] + ([f"--nproc-per-node={nproc}"] if nproc else [])
    return torchrun_command(argv) if nproc else [sys.executable, "-m", "pipeline.cli", *argv]


def _run(command: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=_env())
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory) -> tuple[Path, Path]:
    """(run dir, cache): the tiny run's teacher exported once by one process into a cache of this module's own
    (64-frame teacher batches: several groups to share between ranks)."""
    run_dir, cache = tiny_run / "run", tmp_path_factory.mktemp("ddp") / "single.zarr"
    _run(_avl("export-embeddings", "--run-dir", str(run_dir), "--out", str(cache), "--batch-frames", "64",
              "--num-workers", "0", "--device", "cpu"))
    return run_dir, cache


def test_torchrun_command_is_built_from_the_nproc_flag() -> None:
    command = torchrun_command(["stage", "train-student", "--lambda", "0.4", "--nproc-per-node", "2"])
    assert command[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m"]
    assert command[6:] == ["pipeline.cli", "stage", "train-student", "--lambda", "0.4"]
    assert torchrun_command(["stage", "train-student"]) is None
    with pytest.raises(config_io.ConfigError, match="positive process count"):
        torchrun_command(["stage", "train-student", "--nproc-per-node", "two"])
    with pytest.raises(config_io.ConfigError, match="applies to"):
        torchrun_command(["sweep", "--nproc-per-node", "2"])


def test_distributed_export_equals_single_process_export_key_by_key(exported, tmp_path) -> None:
    run_dir, cache = exported
    single = open_store(cache)
    sharded_path = tmp_path / "sharded.zarr"
    _run(_avl("export-embeddings", "--run-dir", str(run_dir), "--out", str(sharded_path), "--batch-frames", "64",
              "--num-workers", "0", "--device", "cpu", nproc=2))
    assert is_parts_directory(sharded_path) and len(list(sharded_path.iterdir())) >= 2
    sharded = open_store(sharded_path)  # the parts read as one store
    assert sorted(sharded.keys) == sorted(single.keys)
    assert len(single.keys) > 0
    for key in single.keys:
        for field in single.fields:
            np.testing.assert_array_equal(sharded.read(key, field), single.read(key, field), err_msg=f"{key} {field}")
    assert sharded.attrs["teacher_fingerprint"] == single.attrs["teacher_fingerprint"]


def _student(run_dir: Path, cache: Path, name: str, *extra: str, nproc: int = 2) -> list[str]:
    return _avl("train-student", "--run-dir", str(run_dir), "--cache", str(cache), "--tiny", "--lambda", "0.5", "--epochs", "3",
                "--batch-size", "2", "--crop-seconds", "1", "--num-workers", "0", "--device", "cpu", "--name", name,
                *extra, nproc=nproc)


def test_distributed_student_trains_checkpoints_and_resumes_after_sigkill(exported) -> None:
    run_dir, cache = exported
    _run(_student(run_dir, cache, "ddp-uninterrupted"))
    reference = runs.read_json(run_dir / "students" / "ddp-uninterrupted" / "metrics.json")
    assert reference["processes"] == 2
    train = [e for e in read_manifest(runs.prepare_dir(run_dir)) if e.split == "train"]
    test = [e for e in read_manifest(runs.prepare_dir(run_dir)) if e.split == "test"]
    # metrics cover every test utterance once, whichever rank scored it
    assert np.sum(reference["identification"]["confusion"]["rows_true_columns_predicted"]) == len(test)
    assert all(np.isfinite(row["loss"]) for row in reference["history"]) and len(train) >= 4

    command = _student(run_dir, cache, "ddp-killed")
    killed = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    checkpoint = run_dir / "students" / "ddp-killed" / "last.pt"
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in process_tree(killed.pid):  # torchrun and both workers (they run in sessions of their own)
        os.kill(pid, signal.SIGKILL)
    killed.wait()
    assert checkpoint.exists() and not (checkpoint.parent / "metrics.json").exists()

    one_process = subprocess.run(_student(run_dir, cache, "ddp-killed", "--resume", nproc=0), capture_output=True,
                                 text=True, timeout=300, env=_env())
    assert one_process.returncode == 2 and "saved by 2 process(es)" in one_process.stderr

    _run(_student(run_dir, cache, "ddp-killed", "--resume"))
    resumed = runs.read_json(run_dir / "students" / "ddp-killed" / "metrics.json")
    for expected, got in zip(reference["history"], resumed["history"], strict=True):
        assert got["loss"] == pytest.approx(expected["loss"], rel=1e-4)
        assert got["val_accuracy"] == expected["val_accuracy"]
    assert resumed["identification"] == reference["identification"]


def test_distributed_teacher_trains_and_reduces_its_metrics(tiny_run, tmp_path) -> None:
    """A second run directory sharing the tiny run's prepared data: DDP teacher training writes one teacher."""
    run_dir = tmp_path / "run"
    runs.prepare_dir(run_dir).parent.mkdir(parents=True)
    runs.prepare_dir(run_dir).symlink_to(runs.prepare_dir(tiny_run / "run").resolve())
    _run(_avl("train-teacher", "--run-dir", str(run_dir), "--tiny", "--epochs", "2", "--batch-size", "2",
              "--num-workers", "0", "--device", "cpu", nproc=2))
    metrics = runs.read_json(runs.teacher_dir(run_dir) / "metrics.json")
    assert metrics["processes"] == 2 and len(metrics["history"]) == 2
    assert 0.0 <= metrics["test"]["utterance_accuracy"] <= 1.0
    assert not (runs.teacher_dir(run_dir) / "last.pt").exists()
    assert runs.teacher_checkpoint(run_dir).exists()
