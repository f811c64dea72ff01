"""Stage 0 in parts (`--part I --num-parts N`, or torchrun's ranks): the parts read as one store and the finished run
equals a one-process run store by store; each part resumes on its own; skipped files of every part are merged; an
unfinished run says which parts are missing and how to finish; whole and parted stores never mix; stages 2 and 3 run
on parted stage-0 output."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cache.parts import PartedReader
from cache.store import StoreError, open_store
from pipeline import config as config_io
from pipeline import runs
from pipeline.distributed import torchrun_command
from pipeline.errors import MissingInputError
from pipeline.manifest import read_manifest
from pipeline.prepare_parts import share
from stages import prepare as prepare_stage

FILES = ("manifest.tsv", "skipped.tsv", "classes.txt", "trials.tsv", "prepare.json", "dataset.json")
STORES = ("spectrograms.zarr", "faces.zarr")


def prepare(root: Path, run_dir: Path, **settings) -> Path:
    return prepare_stage.run(config_io.build(prepare_stage.PrepareConfig, {
        "root": root, "run_dir": run_dir, "num_workers": 0, **settings}))


def assert_same_prepared(reference: Path, prepared: Path, parts: int = 2) -> None:
    """Same files byte for byte (the manifest in the adapter's order), same keys, attributes and rows per store."""
    for name in FILES:
        assert (prepared / name).read_bytes() == (reference / name).read_bytes(), name
    for name in STORES:
        one, parted = open_store(reference / name), open_store(prepared / name)
        assert isinstance(parted, PartedReader) and len(parted.parts) == parts
        assert sorted(parted.keys) == sorted(one.keys) and len(one.keys) > 0
        assert parted.attrs == one.attrs and parted.fields == one.fields
        assert parted.attrs["manifest_sha256"] == runs.file_sha256(prepared / "manifest.tsv")
        for key in one.keys:
            for field in one.fields:
                np.testing.assert_array_equal(parted.read(key, field), one.read(key, field), err_msg=f"{key} {field}")


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def _avl(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "stage", "prepare", *args]


@pytest.fixture(scope="module")
def two_parts(tiny_run, tmp_path_factory) -> Path:
    """A run directory whose stage 0 ran as part 0 then part 1 of 2 (in this process): the tiny run's corpus."""
    run_dir = tmp_path_factory.mktemp("parts") / "run"
    prepare(tiny_run / "corpus", run_dir, part=0, num_parts=2)
    prepare(tiny_run / "corpus", run_dir, part=1, num_parts=2)
    return run_dir


def test_parts_resolve_from_the_flags_or_torchrun(monkeypatch):
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    build = lambda **values: config_io.build(prepare_stage.PrepareConfig, {"root": "corpus", **values})  # noqa: E731
    assert build().resolved_part is None and build().resolved_num_parts is None
    assert build(part=2, num_parts=3).resolved_part == (2, 3)
    finish_only = build(num_parts=3)
    assert finish_only.resolved_part is None and finish_only.resolved_num_parts == 3
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert build().resolved_part == (1, 2) and build(num_parts=2).resolved_part == (1, 2)
    assert build(part=0, num_parts=4).resolved_part == (0, 4)  # an explicit part wins, as in stage 2
    with pytest.raises(config_io.ConfigError, match="launch as many processes as parts"):
        build(num_parts=3).resolved_part
    for values in ({"part": 1}, {"part": 2, "num_parts": 2}):
        with pytest.raises(config_io.ConfigError, match="--part needs --num-parts"):
            build(**values)
    assert share(list(range(7)), (1, 3)) == [1, 4] and share(list(range(7)), None) == list(range(7))


def test_two_parts_equal_one_process_store_by_store(tiny_run, two_parts):
    assert_same_prepared(tiny_run / "run" / "prepare", two_parts / "prepare")


def test_an_unfinished_run_names_the_missing_parts_and_how_to_finish(tiny_run, tmp_path):
    run_dir = tmp_path / "run"
    prepared = prepare(tiny_run / "corpus", run_dir, part=1, num_parts=3)
    config = prepared / "config.toml"
    assert not (prepared / "manifest.tsv").exists()
    with pytest.raises(MissingInputError, match=rf"not finished decoding.*--config {config} --part I"):
        read_manifest(prepared)  # what stages 1-3 meet first
    # the parts are marked complete only when the run is finished; the decoded one says how to finish it
    with pytest.raises(StoreError, match=r"(?s)0 of 3 parts complete.*part 0 of 3 is missing.*part 2 of 3 is missing"
                                         r".*6 of 6 keys committed.*--part 1`"):
        open_store(prepared / "spectrograms.zarr")
    settings = {"root": tiny_run / "corpus", "run_dir": run_dir, "num_workers": 0, "num_parts": 3}
    with pytest.raises(MissingInputError, match=r"part\(s\) 0, 2 have not decoded their share"):
        prepare_stage.run(config_io.build(prepare_stage.PrepareConfig, settings))  # finish only: nothing to finish
    with pytest.raises(StoreError, match="holds the parts of a stage 0 run in parts"):
        prepare(tiny_run / "corpus", run_dir, overwrite=True)  # one process never writes into a parted run
    with pytest.raises(StoreError, match="holds parts of a run in 3 parts, not 2; run with --num-parts 3"):
        prepare(tiny_run / "corpus", run_dir, part=0, num_parts=2)


def test_a_parted_run_never_writes_into_a_whole_store(tiny_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run / "run" / "prepare", run_dir / "prepare")
    before = (run_dir / "prepare" / "dataset.json").read_bytes()
    with pytest.raises(StoreError, match="holds the whole store of a stage 0 run in one process"):
        prepare(tiny_run / "corpus", run_dir, part=0, num_parts=2, overwrite=True)
    assert (run_dir / "prepare" / "dataset.json").read_bytes() == before  # refused before anything is written


def test_a_part_resumes_on_its_own(tiny_run, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    decoded = []
    real_load_clip = prepare_stage.load_clip

    def load_clip(utterance, faces):
        if len(decoded) == 3:
            raise KeyboardInterrupt("killed")  # what an interrupted part leaves: 3 committed keys
        decoded.append(utterance.key)
        return real_load_clip(utterance, faces)

    monkeypatch.setattr(prepare_stage, "load_clip", load_clip)
    with pytest.raises(KeyboardInterrupt):
        prepare(tiny_run / "corpus", run_dir, part=1, num_parts=2, commit_seconds=0)
    part_store = run_dir / "prepare" / "faces.zarr" / "part-00001.zarr"
    assert len(open_store(part_store, require_complete=False)) == 3
    assert not (run_dir / "prepare" / "parts" / "part-00001.json").exists()

    decoded.clear()
    monkeypatch.setattr(prepare_stage, "load_clip", lambda u, f: (decoded.append(u.key), real_load_clip(u, f))[1])
    prepare(tiny_run / "corpus", run_dir, part=1, num_parts=2, commit_seconds=0)
    mine = share([e.key for e in read_manifest(tiny_run / "run" / "prepare")], (1, 2))
    assert decoded == mine[3:]  # only what the interrupted part had not committed; part 0 untouched
    prepare(tiny_run / "corpus", run_dir, part=0, num_parts=2)
    assert_same_prepared(tiny_run / "run" / "prepare", run_dir / "prepare")


def test_every_part_s_skipped_files_are_merged(tiny_run, tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(tiny_run / "corpus", corpus)
    keys = [e.key for e in read_manifest(tiny_run / "run" / "prepare")]
    broken = [keys[2], keys[5]]  # one in each part's share
    for key in broken:
        (corpus / "mp4" / f"{key}.mp4").write_bytes(bytes(range(256)) * 20)
    whole = prepare(corpus, tmp_path / "whole", on_error="skip")
    parted = tmp_path / "parted"
    prepare(corpus, parted, part=0, num_parts=2, on_error="skip")
    prepare(corpus, parted, part=1, num_parts=2, on_error="skip")
    assert [line.split("\t")[0] for line in (whole / "skipped.tsv").read_text().splitlines()[1:]] == broken
    assert_same_prepared(whole, parted / "prepare")
    records = [runs.read_json(parted / "prepare" / "parts" / f"part-0000{i}.json") for i in range(2)]
    assert [[key for key, _ in record["skipped"]] for record in records] == [[keys[2]], [keys[5]]]


@pytest.mark.slow
def test_two_part_processes_at_once_finish_the_run_once(tiny_run, tmp_path):
    """A two-task job array: both tasks run at the same time, the run is finished once and equals one process's."""
    run_dir = tmp_path / "run"
    tasks = [subprocess.Popen(_avl("--root", str(tiny_run / "corpus"), "--run-dir", str(run_dir), "--num-workers", "0",
                                   "--part", str(i), "--num-parts", "2"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
             for i in range(2)]
    outputs = [task.communicate(timeout=300)[0] for task in tasks]
    assert [task.returncode for task in tasks] == [0, 0], outputs
    assert sum("18 utterances (0 skipped)" in output for output in outputs) in (1, 2)  # one finished, or both in turn
    assert_same_prepared(tiny_run / "run" / "prepare", run_dir / "prepare")


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_process(tiny_run, tmp_path):
    run_dir = tmp_path / "run"
    command = torchrun_command(["stage", "prepare", "--root", str(tiny_run / "corpus"), "--run-dir", str(run_dir),
                                "--num-workers", "0", "--nproc-per-node", "2"])
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "world size 2" in result.stdout + result.stderr
    assert_same_prepared(tiny_run / "run" / "prepare", run_dir / "prepare")
    assert runs.read_json(run_dir / "prepare" / "parts" / "part-00001.json")["num_parts"] == 2


def test_stages_2_and_3_run_on_parted_stage_0_output(tiny_run, two_parts):
    from stages import export_embeddings, train_student

    cache = export_embeddings.run(config_io.build(export_embeddings.ExportConfig, {
        "run_dir": two_parts, "teacher": tiny_run / "run" / "teacher" / "teacher.pt", "device": "cpu",
        "num_workers": 0, "batch_frames": 64}))
    exported = [e.key for e in read_manifest(two_parts / "prepare") if e.split in ("train", "val")]
    assert sorted(open_store(cache).keys) == sorted(exported)
    out = train_student.run(config_io.build(train_student.StudentConfig, {
        "run_dir": two_parts, "tiny": True, "lambda": 0.5, "epochs": 1, "batch_size": 2, "crop_seconds": 1,
        "num_workers": 0, "device": "cpu", "name": "on-parts"}))
    metrics = runs.read_json(out / "metrics.json")
    assert 0.0 <= metrics["identification"]["top1"] <= 1.0
