"""One writer at a time: every writing stage is refused at once, naming the holder, while another process writes
the same outputs; the first run then finishes a sound store or run; a killed holder does not block; two sweeps
share their cells and never train one together.

The first writer is a real stage run in another process, held inside its work (at the first item its DataLoader
asks for) until the test lets it go, so the second writer is sure to start while the first holds its lock."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from cache import locks
from cache.store import open_store
from pipeline import checkpoints, runs, stores
from pipeline import config as config_io
from pipeline.manifest import read_manifest
from stages import export_embeddings, prepare, protocol, sweep, train_student, train_teacher

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
HANG_GUARD_SECONDS = 600  # a wedged helper process fails the test instead of hanging it; no timing is asserted

# Runs stage `module` with `settings` (JSON), holding it at `hook` (module.Class.method) until the file `go`
# exists; touches `started` when it gets there, by which time the stage holds its lock.
HELD_STAGE = """
import importlib, json, sys, time
from pathlib import Path
from pipeline import config as config_io
module_name, config_name, settings, hook, started, go = sys.argv[1:]
owner_path, attribute = hook.rsplit(".", 1)
owner_module, owner_class = owner_path.rsplit(".", 1)
owner = getattr(importlib.import_module(owner_module), owner_class)
original = getattr(owner, attribute)
def held(*args, **kwargs):
    Path(started).touch()
    while not Path(go).exists():
        time.sleep(0.05)
    return original(*args, **kwargs)
setattr(owner, attribute, held)
module = importlib.import_module(module_name)
module.run(config_io.build(getattr(module, config_name), json.loads(settings)))
"""
# Holds one lock until its stdin closes (or it is killed).
HELD_LOCK = """
import sys
from cache import locks
with locks.hold(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


class HeldStage:
    """A stage running in another process, stopped at `hook` until `release()`."""

    def __init__(self, tmp_path: Path, module, config_name: str, settings: dict, hook: str):
        self.started, self.go = tmp_path / f"{module.__name__}.started", tmp_path / f"{module.__name__}.go"
        self.log = tmp_path / f"{module.__name__}.log"
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", HELD_STAGE, module.__name__, config_name, json.dumps(settings, default=str),
                 hook, str(self.started), str(self.go)], cwd=REPO, env=ENV, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + HANG_GUARD_SECONDS
        while not self.started.exists():
            assert self.process.poll() is None, f"the first writer ended early:\n{self.log.read_text()}"
            assert time.monotonic() < deadline, "the first writer never reached its work"
            time.sleep(0.05)

    def release(self) -> str:
        """Let it finish; its output, after asserting it succeeded."""
        self.go.touch()
        code = self.process.wait(HANG_GUARD_SECONDS)
        output = self.log.read_text()
        assert code == 0, output
        return output

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(HANG_GUARD_SECONDS)


@contextlib.contextmanager
def lock_held_elsewhere(lock_file: Path):
    """Another process holding `lock_file` for the block; yields that process."""
    holder = subprocess.Popen([sys.executable, "-c", HELD_LOCK, str(lock_file)], cwd=REPO, env=ENV,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait(HANG_GUARD_SECONDS)


def assert_refused_naming(error: pytest.ExceptionInfo, holder_pid: int, target: Path) -> None:
    """The refusal names what is locked and the holder's PID and host, on one line."""
    message = str(error.value)
    assert isinstance(error.value, locks.LockedError), message
    assert f"pid {holder_pid} on host {socket.gethostname()}" in message and str(target) in message
    assert "\n" not in message


def assert_cli_refuses_in_one_line(monkeypatch, capsys, argv: list[str], holder_pid: int) -> None:
    """`avl ARGV` exits 2 with one line naming the holder."""
    from pipeline import cli

    monkeypatch.setattr(sys, "argv", ["avl", *argv])
    with pytest.raises(SystemExit) as exit:
        cli.main()
    err = capsys.readouterr().err.strip()
    assert exit.value.code == 2 and err.startswith("error: ") and f"pid {holder_pid}" in err
    assert "\n" not in err and "Traceback" not in err


@pytest.fixture
def work(tiny_run, tmp_path) -> Path:
    """A private copy of the tiny run (corpus untouched; run/ with stage 0 and 1 done)."""
    shutil.copytree(tiny_run / "run", tmp_path / "run", symlinks=True)
    return tmp_path


def _export(run_dir: Path, **settings) -> Path:
    return export_embeddings.run(config_io.build(export_embeddings.ExportConfig, {
        "run_dir": run_dir, "device": "cpu", "num_workers": 0, **settings}))


def _student_settings(run_dir: Path, **settings) -> dict:
    return {"run_dir": str(run_dir), "tiny": True, "epochs": 1, "batch_size": 4, "crop_seconds": 1, "num_workers": 0,
            "device": "cpu", **settings}


# ---------------------------------------------------------------- the lock itself


def test_a_second_holder_is_refused_at_once_naming_pid_and_host(tmp_path):
    lock_file = locks.inside(tmp_path / "out")
    with lock_held_elsewhere(lock_file) as holder:
        with pytest.raises(locks.LockedError) as refused:
            with locks.hold(lock_file):
                pass
        assert_refused_naming(refused, holder.pid, tmp_path / "out")
        assert locks.holder_of(lock_file)["pid"] == holder.pid
    assert locks.holder_of(lock_file) is None  # the holder let go: nobody holds it
    with locks.hold(lock_file):
        assert locks.read_holder(lock_file)["pid"] == os.getpid()


def test_a_killed_holder_does_not_block_and_its_record_is_replaced(tmp_path):
    lock_file = locks.beside(tmp_path / "cache.zarr")
    with lock_held_elsewhere(lock_file) as holder:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert locks.read_holder(lock_file)["pid"] == holder.pid  # the stale record is still there...
        with locks.hold(lock_file):  # ...and blocks nothing
            assert locks.read_holder(lock_file)["pid"] == os.getpid()


def test_a_process_may_take_its_own_lock_again_and_a_forked_child_drops_it(tmp_path):
    lock_file = locks.inside(tmp_path)
    with locks.hold(lock_file), locks.hold(lock_file):  # a sweep around stage 3 takes a cell's lock twice
        child = os.fork()
        if child == 0:  # the child (a DataLoader worker) exits at once, but must not be what keeps the lock
            os._exit(0 if not locks._HELD else 1)
        assert os.waitpid(child, 0)[1] == 0
        assert locks.holder_of(lock_file)["pid"] == os.getpid()
    assert locks.holder_of(lock_file) is None


def test_a_waiting_holder_gets_the_lock_once_it_is_free(tmp_path):
    lock_file = locks.inside(tmp_path)
    with lock_held_elsewhere(lock_file) as holder:
        threading.Timer(0.5, holder.kill).start()
        with locks.hold(lock_file, wait_seconds=HANG_GUARD_SECONDS):  # a sweep's report waits for the other's
            assert locks.read_holder(lock_file)["pid"] == os.getpid()


def test_under_torchrun_only_rank_0_takes_a_training_lock(tmp_path, monkeypatch):
    seen = []
    run = runs.one_writer(lambda cfg: locks.inside(tmp_path))(lambda cfg: seen.append(locks.holder_of(
        locks.inside(tmp_path))))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    run(None)
    monkeypatch.setenv("RANK", "0")
    run(None)
    assert seen[0] is None and seen[1]["pid"] == os.getpid()


# ---------------------------------------------------------------- every writing stage


@pytest.mark.slow
def test_two_prepares_of_one_run_directory(tiny_run, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    settings = {"root": str(tiny_run / "corpus"), "run_dir": str(run_dir), "num_workers": 0}
    first = HeldStage(tmp_path, prepare, "PrepareConfig", settings, "stages.prepare._DecodeUtterances.__getitem__")
    with pytest.raises(locks.LockedError) as refused:
        prepare.run(config_io.build(prepare.PrepareConfig, settings))
    assert_refused_naming(refused, first.process.pid, run_dir / "prepare")
    assert_cli_refuses_in_one_line(monkeypatch, capsys, [
        "stage", "prepare", "--root", str(tiny_run / "corpus"), "--run-dir", str(run_dir), "--overwrite"],
        first.process.pid)
    first.release()
    prepared = run_dir / "prepare"
    entries = read_manifest(prepared)
    for name in ("spectrograms", "faces"):
        assert stores.verify(runs.find_store(prepared, name), prepared) == []
    assert len(entries) == 18


@pytest.mark.slow
def test_two_teacher_trainings_of_one_run_directory(work, tmp_path):
    run_dir = work / "run"
    settings = {"run_dir": str(run_dir), "tiny": True, "epochs": 1, "batch_size": 4, "num_workers": 0,
                "device": "cpu", "overwrite": True, "seed": 5}
    first = HeldStage(tmp_path, train_teacher, "TeacherConfig", settings, "pipeline.data.RandomFrames.__getitem__")
    with pytest.raises(locks.LockedError) as refused:
        train_teacher.run(config_io.build(train_teacher.TeacherConfig, {**settings, "seed": 6}))
    assert_refused_naming(refused, first.process.pid, run_dir / "teacher")
    first.release()
    metrics = runs.read_json(run_dir / "teacher" / "metrics.json")
    assert metrics["teacher_fingerprint"] == runs.file_sha256(run_dir / "teacher" / "teacher.pt")
    assert config_io.load_saved(train_teacher.TeacherConfig, run_dir / "teacher" / "config.toml").seed == 5


@pytest.mark.slow
def test_two_exports_of_one_cache_the_second_overwriting_with_another_teacher(work, tmp_path, monkeypatch, capsys):
    """The issue's case: both used to exit 0 with rows of both teachers in a cache marked complete."""
    run_dir = work / "run"
    teacher = run_dir / "teacher" / "teacher.pt"
    other = tmp_path / "other-teacher.pt"
    loaded = checkpoints.load_teacher(teacher)
    with torch.no_grad():
        next(loaded.model.parameters()).add_(1.0)
    checkpoints.save_teacher(other, loaded.model, loaded.class_names, loaded.face_size, loaded.window_seconds)
    cache = run_dir / "embeddings" / "voxceleb.zarr"
    settings = {"run_dir": str(run_dir), "device": "cpu", "num_workers": 0, "commit_seconds": 0}
    first = HeldStage(tmp_path, export_embeddings, "ExportConfig", settings, "pipeline.data.GroupFrames.__getitem__")
    with pytest.raises(locks.LockedError) as refused:
        _export(run_dir, teacher=other, overwrite=True)
    assert_refused_naming(refused, first.process.pid, cache)
    assert_cli_refuses_in_one_line(monkeypatch, capsys, [
        "stage", "export-embeddings", "--run-dir", str(run_dir), "--teacher", str(other), "--overwrite",
        "--device", "cpu"], first.process.pid)
    first.release()
    assert stores.verify(cache, run_dir / "prepare", teacher) == []
    with open_store(cache) as reader:
        assert all((reader.offsets("frames")[1:] >= reader.offsets("frames")[:-1]))


@pytest.mark.slow
def test_two_students_of_one_name(work, tmp_path):
    """The issue's case: both exited 0 with λ = 0.8 in config.toml and λ = 0.4 in student.pt."""
    run_dir = work / "run"
    _export(run_dir)
    out = run_dir / "students" / "same"
    first = HeldStage(tmp_path, train_student, "StudentConfig", _student_settings(run_dir, name="same", lam=0.8),
                      "pipeline.data.Crops.__getitem__")
    with pytest.raises(locks.LockedError) as refused:
        train_student.run(config_io.build(train_student.StudentConfig, _student_settings(
            run_dir, name="same", lam=0.4, overwrite=True)))
    assert_refused_naming(refused, first.process.pid, out)
    first.release()
    saved = config_io.load_saved(train_student.StudentConfig, out / "config.toml")
    weights = torch.load(out / "student.pt", weights_only=True)
    assert weights["lambda"] == saved.lam == runs.read_json(out / "metrics.json")["lambda"] == 0.8


@pytest.mark.slow
def test_under_torchrun_a_refused_rank_0_stops_every_rank(work):
    """Rank 0 takes the run lock; refused, it exits 2 and torchrun stops the other rank: nothing waits forever."""
    from pipeline.distributed import torchrun_command

    run_dir = work / "run"
    env = {key: value for key, value in ENV.items()
           if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    with lock_held_elsewhere(locks.inside(run_dir / "students" / "ddp")) as holder:
        command = torchrun_command(["stage", "train-student", "--run-dir", str(run_dir), "--name", "ddp", "--tiny",
                                    "--lambda", "0", "--epochs", "1", "--num-workers", "0", "--device", "cpu",
                                    "--nproc-per-node=2"])
        result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                                timeout=HANG_GUARD_SECONDS)
    assert result.returncode != 0 and f"another process is writing it (pid {holder.pid}" in result.stderr
    assert not (run_dir / "students" / "ddp" / "config.toml").exists()


@pytest.mark.slow
def test_a_killed_student_run_does_not_block_the_next(work, tmp_path):
    run_dir = work / "run"
    first = HeldStage(tmp_path, train_student, "StudentConfig", _student_settings(run_dir, name="killed", lam=0.0),
                      "pipeline.data.Crops.__getitem__")
    first.kill()
    out = train_student.run(config_io.build(train_student.StudentConfig, _student_settings(
        run_dir, name="killed", lam=0.0)))
    assert (out / "metrics.json").exists()


@pytest.mark.slow
def test_two_sweeps_of_one_name_share_the_cells(work, tmp_path):
    """The first sweep holds its first cell; the second trains the others, reports the held one, and the first
    then finishes it and reuses the second's cells: every cell trained once, none by both."""
    run_dir = work / "run"
    settings = {"run_dir": str(run_dir), "name": "shared", "lambdas": [0.0], "seeds": [0, 1, 2], "tiny": True,
                "epochs": 1, "batch_size": 4, "crop_seconds": 1, "num_workers": 0, "device": "cpu"}
    first = HeldStage(tmp_path, sweep, "SweepConfig", settings, "pipeline.data.Crops.__getitem__")
    cfg = config_io.build(sweep.SweepConfig, settings)
    trained = []
    original = train_student.run

    def recording(cell_cfg):
        trained.append(cell_cfg.name)
        return original(cell_cfg)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_student, "run", recording)
        sweep.run(cfg)
    cells = ["none-resnet-lambda0-seed0", "none-resnet-lambda0-seed1", "none-resnet-lambda0-seed2"]
    assert trained == cells[1:]  # the held cell was skipped, twice, not trained alongside
    assert not (run_dir / "students" / "shared" / cells[0] / "metrics.json").exists()
    output = first.release()
    assert "1 cells trained this time" in output
    for seed, cell in enumerate(cells):
        out = run_dir / "students" / "shared" / cell
        saved = config_io.load_saved(train_student.StudentConfig, out / "config.toml")
        assert saved.seed == seed and runs.read_json(out / "metrics.json")["name"] == cell
        assert len(runs.read_json(out / "metrics.json")["history"]) == 1
    assert "have not finished" not in (run_dir / "sweeps" / "shared" / "report.md").read_text()


def test_a_second_protocol_in_one_run_directory_is_refused(tmp_path):
    cfg = config_io.build(protocol.ProtocolConfig, {"root": str(tmp_path / "corpus"), "run_dir": str(tmp_path / "p")})
    with lock_held_elsewhere(locks.inside(tmp_path / "p")) as holder:
        with pytest.raises(locks.LockedError) as refused:
            protocol.run(cfg)
    assert_refused_naming(refused, holder.pid, tmp_path / "p")
