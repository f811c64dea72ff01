"""SIGKILL stage 2 (and stage 0) at random moments; re-running the same command must finish the store
and leave it identical, array by array and key by key, to one written without interruption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cache.inspect import verify_store
from cache.store import StoreError, array_stats, open_store
from cache.zarr_store import partial_files
from pipeline.cli import app
from pipeline.manifest import MANIFEST

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
EXPORT_TRIALS = {"zarr": 20, "hdf5": 5}
PREPARE_TRIALS = 5
EARLY_KILLS = 0.2  # share of kills timed from the launch (import, model load); the rest from the store's creation


def launch(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_in_process(args: list[str]) -> None:
    """The same command line through the same CLI, without another interpreter start (2-3 s each)."""
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output


def wait_for(path: Path, process: subprocess.Popen) -> bool:
    """Wait until `path` exists; False when the process ended first."""
    while not path.exists():
        if process.poll() is not None:
            return path.exists()
        time.sleep(0.002)
    return True


def timed_run(args: list[str], store: Path, done: Path) -> tuple[float, float]:
    """Run to completion; seconds until `store` appeared and until `done` (written once it is complete) did."""
    started = time.perf_counter()
    process = launch(args)
    assert wait_for(store, process), "the command ended without writing its store"
    appeared = time.perf_counter() - started
    assert wait_for(done, process) and process.wait() == 0
    return appeared, time.perf_counter() - started


def kill_at_random(args: list[str], store: Path, timing: tuple[float, float], rng: np.random.Generator) -> bool:
    """Launch, SIGKILL after a random delay (from the launch, or from when `store` appeared); True if killed."""
    appeared, done = timing
    process = launch(args)
    if rng.random() < EARLY_KILLS:
        time.sleep(rng.uniform(0, appeared))
    elif wait_for(store, process):
        time.sleep(rng.uniform(0, done - appeared))
    killed = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait()
    return killed


def state_after_kill(path: Path) -> tuple[str, int]:
    """Where the kill landed, read from the store it left: (state, committed keys)."""
    if not path.exists():
        return "before the store existed", 0
    reader = open_store(path, require_complete=False)  # a killed writer never leaves an unreadable store
    committed, expected, complete = len(reader), reader.expected_keys, reader.complete
    reader.close()
    if complete:
        return "after completion", committed
    torn = any(s["rows_on_disk"] != s["rows"] for s in array_stats(path).values())
    if committed == 0:
        return "inside the first flush" if torn else "before the first commit", committed
    if committed < expected:
        return "inside a flush" if torn else "between commits", committed
    return "before marking complete", committed


def assert_same_store(path: Path, reference: Path, prefix: int | None = None) -> None:
    """Same keys in the same order, attributes, fields and rows; with `prefix`, only its first keys."""
    got, want = open_store(path, require_complete=prefix is None), open_store(reference)
    n = len(want) if prefix is None else prefix
    assert got.keys == want.keys[:n]
    assert got.fields == want.fields
    if prefix is None:
        assert got.attrs == want.attrs and got.complete
    for name, spec in want.fields.items():
        rows = int(want.offsets(name)[n]) if spec.ragged else n
        assert np.array_equal(got.read_rows(name, 0, rows), want.read_rows(name, 0, rows)), name
        assert got.n_rows(name) == rows, name
        if spec.ragged:
            assert np.array_equal(got.offsets(name), want.offsets(name)[: n + 1]), name
    got.close()
    want.close()


def assert_no_leftovers(path: Path) -> None:
    assert not path.with_name(f".{path.name}.creating").exists()
    if path.is_dir():
        assert partial_files(path) == []


@pytest.mark.parametrize("backend", sorted(EXPORT_TRIALS))
def test_export_survives_sigkill(tiny_run, tmp_path, backend):
    run_dir = tiny_run / "run"
    config = tmp_path / "export.toml"
    config.write_text("commit_seconds = 0.0\n")  # commit after every teacher group: many commits to land in

    def command(out: Path) -> list[str]:
        return ["stage", "export-embeddings", "--run-dir", str(run_dir), "--out", str(out), "--store", backend,
                "--device", "cpu", "--num-workers", "0", "--batch-frames", "64", "--config", str(config)]

    reference = tmp_path / "reference"
    timing = timed_run(command(reference), reference, tmp_path / "reference.export.json")
    n_keys = len(open_store(reference))
    rng = np.random.default_rng(1234)
    states = Counter()
    for trial in range(EXPORT_TRIALS[backend]):
        out = tmp_path / f"trial{trial:02d}"
        kill_at_random(command(out), out, timing, rng)
        state, committed = state_after_kill(out)
        states[state] += 1
        if committed:  # what a killed export committed is already what an uninterrupted one writes
            assert_same_store(out, reference, prefix=committed)
        run_in_process(command(out))
        assert_same_store(out, reference)
        assert_no_leftovers(out)
        stats = json.loads((tmp_path / f"{out.name}.export.json").read_text())
        # the resume wrote only what the killed run had not committed
        assert stats["utterances_exported"] == n_keys - committed, (trial, state, stats)
        assert stats["utterances_total"] == n_keys
    summary = {"backend": backend, "trials": EXPORT_TRIALS[backend], "keys": n_keys,
               "store_appeared_seconds": round(timing[0], 2), "store_complete_seconds": round(timing[1], 2),
               "kills": dict(states)}
    print(f"\nexport kill trials: {json.dumps(summary)}")
    mid_write = states["between commits"] + states["inside a flush"] + states["inside the first flush"]
    if backend == "zarr":  # enough trials that a loaded machine still puts several kills mid-write
        assert mid_write >= 3, summary


def test_prepare_survives_sigkill(tiny_run, tmp_path):
    config = tmp_path / "prepare.toml"
    config.write_text("commit_seconds = 0.0\n")

    def command(run_dir: Path) -> list[str]:
        return ["stage", "prepare", "--root", str(tiny_run / "corpus"), "--run-dir", str(run_dir),
                "--num-workers", "0", "--config", str(config)]

    reference = tmp_path / "reference"
    timing = timed_run(command(reference), reference / "prepare" / "faces.zarr", reference / "prepare" / "prepare.json")
    rng = np.random.default_rng(99)
    states = Counter()
    for trial in range(PREPARE_TRIALS):
        run_dir = tmp_path / f"trial{trial}"
        kill_at_random(command(run_dir), run_dir / "prepare" / "faces.zarr", timing, rng)
        state, _ = state_after_kill(run_dir / "prepare" / "faces.zarr")
        states[state] += 1
        run_in_process(command(run_dir))
        for store in ("spectrograms.zarr", "faces.zarr"):
            assert_same_store(run_dir / "prepare" / store, reference / "prepare" / store)
            assert_no_leftovers(run_dir / "prepare" / store)
        assert (run_dir / "prepare" / MANIFEST).read_bytes() == (reference / "prepare" / MANIFEST).read_bytes()
    print(f"\nprepare kill trials: {json.dumps({'trials': PREPARE_TRIALS, 'kills': dict(states)})}")


def test_incomplete_store_is_refused_with_how_to_finish_it(tiny_run, tmp_path):
    """A store left by a killed export says how far it came and the command that finishes it."""
    from pipeline import config as config_io
    from stages import export_embeddings

    out = tmp_path / "cache.zarr"
    cfg = config_io.build(export_embeddings.ExportConfig, {
        "run_dir": tiny_run / "run", "out": out, "device": "cpu", "num_workers": 0, "batch_frames": 64})
    export_embeddings.run(cfg)
    from cache.store import open_for_append

    # what a kill before the final commit leaves: every key written, the complete flag not yet set
    writer = open_for_append(out)
    writer._write_meta(writer.committed - 5, complete=False)
    writer.close()
    n_keys = len(open_store(out, require_complete=False)) + 5
    with pytest.raises(StoreError, match=rf"not complete \({n_keys - 5} of {n_keys} keys committed\); "
                                         r"finish it with `avl stage export-embeddings --config "):
        open_store(out)
    assert any("not complete" in problem for problem in verify_store(out))
    finish = open_store(out, require_complete=False).finish_with
    run_in_process(finish.split()[1:])  # the quoted command, minus the program name
    assert open_store(out).complete and len(open_store(out)) == n_keys
