"""A full disk never costs a store: the writer stops with one line naming the store and the space needed, and the
same command, run again once there is room, resumes to a store identical, array by array, to an uninterrupted one.

The disk is a real tmpfs of a few MB where this machine lets the tests mount one (root in a container); where it
does not, a simulated small disk (free space reported as capacity minus what is written) stands in for it, and
an ENOSPC injected at zarr's file write covers a disk that fills after the check.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cache.space
from cache.backends import DISK_BACKENDS, SUFFIXES
from cache.schema import SpectrogramStoreSpec
from cache.store import StoreError, open_store
from pipeline import config as config_io
from pipeline.datasets.synthetic import SynthConfig, synthesize

REPO = Path(__file__).resolve().parents[1]
TRIALS = 4  # per backend and kind of disk, each with another amount of free space
SPEC = SpectrogramStoreSpec(dataset="synthetic", dataset_root="/corpus", video_fps=25, spectrogram={"n_fft": 512})
LENGTHS = [310, 95, 0, 420, 150, 260, 380, 75, 200, 330, 120, 290] * 2  # rows of 257 float16: 3 MB in all
CORPUS = SynthConfig(n_speakers=2, n_verification_speakers=0, utterances_per_speaker=5, videos_per_speaker=2,
                     min_seconds=1.2, max_seconds=2.5, frame_size=64, n_trials=0)


class Tmpfs:
    """A tmpfs of `size` bytes mounted at `path`; a ballast file takes the room a test does not give."""

    def __init__(self, path: Path, size: int) -> None:
        self.path, self.ballast = path, path / "ballast"
        path.mkdir()
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                 capture_output=True, text=True)
        self.refused = mounted.returncode != 0 and (mounted.stderr.strip() or f"rc {mounted.returncode}")

    def leave_free(self, n_bytes: int) -> None:
        self.free()
        with open(self.ballast, "wb") as handle:
            handle.write(b"\0" * max(0, shutil.disk_usage(self.path).free - n_bytes))

    def free(self) -> None:
        self.ballast.unlink(missing_ok=True)

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=True)  # lazily: a handle still open must not fail it


class SimulatedDisk:
    """A directory whose free space, as the writer's check reads it, is a capacity minus the bytes written there."""

    def __init__(self, path: Path, monkeypatch) -> None:
        self.path, self.capacity = path, 1 << 40
        path.mkdir()
        real = cache.space.free_bytes
        monkeypatch.setattr(cache.space, "free_bytes", lambda where: self._free(where, real))

    def _free(self, where: Path, real) -> int:
        if not Path(where).absolute().is_relative_to(self.path):
            return real(where)
        used = sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())
        return max(0, self.capacity - used)

    def leave_free(self, n_bytes: int) -> None:
        self.capacity = sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file()) + n_bytes

    def free(self) -> None:
        self.capacity = 1 << 40


@pytest.fixture
def tmpfs(tmp_path):
    """A 48 MB tmpfs, unmounted after the test; skipped where mounting is refused (the other disks stand in)."""
    disk = Tmpfs(tmp_path / "disk", 48 << 20)
    if disk.refused:
        pytest.skip(f"mounting a tmpfs was refused here ({disk.refused}); a simulated disk or an injected ENOSPC "
                    "stands in for it")
    yield disk
    disk.close()


@pytest.fixture(params=["tmpfs", "simulated"])
def disk(request, tmp_path, monkeypatch):
    if request.param == "tmpfs":
        return request.getfixturevalue("tmpfs")
    return SimulatedDisk(tmp_path / "disk", monkeypatch)


def rows(i: int, n: int) -> dict[str, np.ndarray]:
    return {"spectrogram": np.random.default_rng(i).standard_normal((n, 257)).astype(np.float16)}


def write_all(path: Path, backend: str) -> None:
    """Write every key not in the store yet, committing after each, as prepare does with commit_seconds=0."""
    writer = SPEC.open_or_create(path, backend, overwrite=False, hint="")
    writer.set_expected(len(LENGTHS), finish_with="the test's writer")
    try:
        for i, n in enumerate(LENGTHS):
            if f"key{i:02d}" not in writer:
                writer.write(f"key{i:02d}", rows(i, n))
                writer.flush()
        writer.mark_complete()
    finally:
        writer.close()


def assert_same_store(path: Path, reference: Path) -> None:
    """The same keys in the same order, attributes, fields, offsets and rows of every field."""
    got, want = open_store(path), open_store(reference)
    assert got.keys == want.keys and got.attrs == want.attrs and got.fields == want.fields
    for name, spec in want.fields.items():
        if spec.ragged:
            assert np.array_equal(got.offsets(name), want.offsets(name)), name
        assert np.array_equal(got.read_rows(name, 0, want.n_rows(name)), want.read_rows(name, 0, want.n_rows(name)))
    got.close()
    want.close()


def assert_one_line_about_space(message: str, path: Path) -> None:
    assert message.startswith(f"{path}: no space left on the device to ") and "\n" not in message, message


@pytest.mark.parametrize("backend", DISK_BACKENDS)
def test_a_writer_stops_on_a_full_disk_and_resumes_to_an_identical_store(tmp_path, disk, backend):
    reference = tmp_path / f"reference{SUFFIXES[backend]}"
    write_all(reference, backend)
    rng = np.random.default_rng(len(backend))
    stopped_at, identical = [], 0
    for trial in range(TRIALS):
        path = disk.path / f"trial{trial}{SUFFIXES[backend]}"
        disk.leave_free(int(rng.uniform(1.2, 2.5) * 2**20))  # less than the store takes
        with pytest.raises(StoreError) as error:
            write_all(path, backend)
        assert_one_line_about_space(str(error.value), path)
        assert "needed" in str(error.value) and "it resumes from the" in str(error.value)
        stopped_at.append(len(open_store(path, require_complete=False)))
        disk.free()
        write_all(path, backend)
        assert_same_store(path, reference)
        identical += 1
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    print(f"\n{backend} on a {type(disk).__name__}: {TRIALS} full-disk trials (stopped after {stopped_at} of "
          f"{len(LENGTHS)} keys), {identical} identical after resuming")
    assert all(0 <= n < len(LENGTHS) for n in stopped_at)


@pytest.mark.parametrize("how", ["tmpfs", "injected"])
def test_zarr_survives_a_disk_that_fills_after_the_check(request, tmp_path, monkeypatch, how):
    """ENOSPC from zarr's own file writes, the check passed (a real full tmpfs, or the error injected at the write
    call): the committed state stands, the error is one line, and the writer resumes."""
    import zarr.storage._local as local

    reference = tmp_path / "reference.zarr"
    write_all(reference, "zarr")
    monkeypatch.setattr(cache.space, "free_bytes", lambda path: 1 << 40)  # every check passes
    tmpfs = request.getfixturevalue("tmpfs") if how == "tmpfs" else None
    real_put = local._put
    stopped_at, identical = [], 0
    for trial, room in enumerate([300_000, 700_000, 1_200_000, 1_700_000]):
        if how == "tmpfs":
            path = tmpfs.path / f"trial{trial}.zarr"
            tmpfs.leave_free(room)
        else:
            path = tmp_path / f"trial{trial}.zarr"
            monkeypatch.setattr(local, "_put", _failing_put(real_put, room))
        with pytest.raises(StoreError) as error:
            write_all(path, "zarr")
        assert_one_line_about_space(str(error.value), path)
        stopped_at.append(len(open_store(path, require_complete=False)) if path.exists() else None)
        if how == "tmpfs":
            tmpfs.free()
        else:
            monkeypatch.setattr(local, "_put", real_put)
        write_all(path, "zarr")
        assert_same_store(path, reference)
        identical += 1
    print(f"\nzarr, disk full past the check ({how}): {len(stopped_at)} trials (stopped after {stopped_at} of "
          f"{len(LENGTHS)} keys), {identical} identical after resuming")


def _failing_put(real_put, room: int):
    """zarr's file write on a disk with `room` bytes left: ENOSPC once they are used up."""
    written = {"bytes": 0}

    def put(path, value, exclusive=False):
        written["bytes"] += len(value.as_buffer_like())
        if written["bytes"] > room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_put(path, value, exclusive=exclusive)

    return put


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return synthesize(tmp_path_factory.mktemp("corpus") / "corpus", CORPUS)


def prepare_args(root: Path, run_dir: Path, backend: str) -> list[str]:
    return ["stage", "prepare", "--root", str(root), "--run-dir", str(run_dir), "--store", backend,
            "--num-workers", "0", "--commit-seconds", "0"]


@pytest.mark.parametrize("backend", DISK_BACKENDS)
def test_prepare_stops_in_one_line_on_a_full_disk_and_resumes(tmp_path, tmpfs, corpus, backend, one_torch_thread):
    """The real stage through the real CLI: exit 2 and one line (HDF5 crashed with rc 139 here before); the
    subprocess and this process compute with one thread each, so that both write the same bits."""
    from stages import prepare

    reference = tmp_path / "reference"
    prepare.run(config_io.build(prepare.PrepareConfig, {
        "root": corpus, "run_dir": reference, "num_workers": 0, "store": backend, "commit_seconds": 0}))
    run_dir = tmpfs.path / "run"
    tmpfs.leave_free(3 << 20)
    failed = subprocess.run([sys.executable, "-m", "pipeline.cli", *prepare_args(corpus, run_dir, backend)],
                            cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error: ")]
    assert failed.returncode == 2 and len(errors) == 1 and "Traceback" not in failed.stderr, failed.stderr[-3000:]
    assert "no space left on the device" in errors[0] and "needed" in errors[0], errors[0]
    assert str(run_dir / "prepare") in errors[0]
    tmpfs.free()
    prepare.run(config_io.build(prepare.PrepareConfig, {
        "root": corpus, "run_dir": run_dir, "num_workers": 0, "store": backend, "commit_seconds": 0}))
    for store in ("spectrograms", "faces"):
        name = f"{store}{SUFFIXES[backend]}"
        assert_same_store(run_dir / "prepare" / name, reference / "prepare" / name)
    print(f"\nprepare ({backend}) on a full tmpfs: stopped with `{errors[0][:160]}...`; resumed to identical stores")
