"""`avl cache info` and `avl cache verify` on small stores made here, sound and broken, on every backend."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cache.inspect import store_info
from cache.store import BACKENDS, SUFFIXES, FieldSpec, create_store, open_for_append
from pipeline.cli import app
from pipeline.manifest import Entry, manifest_hash, write_manifest
from pipeline.stores import verify as verify_store

FIELDS = [
    FieldSpec("frames", "float16", (4,), chunk_rows=4),
    FieldSpec("frame_pred", "int32", (), chunk_rows=4),
    FieldSpec("peak", "float32", (4,), ragged=False, chunk_rows=4),
]
KEYS = ["a", "b", "c", "d", "e"]
LENGTHS = [3, 5, 0, 6, 2]


@pytest.fixture
def teacher(tmp_path: Path) -> Path:
    path = tmp_path / "teacher.pt"
    path.write_bytes(b"weights of the teacher")
    return path


def manifest_dir(tmp_path: Path, keys: list[str], splits: dict[str, str] | None = None) -> Path:
    """A prepare directory listing `keys`, each in split "train" unless `splits` says otherwise."""
    directory = tmp_path / f"prepare-{len(keys)}{'-split' if splits else ''}"
    directory.mkdir()
    entries = [Entry(key, "spk", (splits or {}).get(key, "train"), 1, 0.04, "") for key in keys]
    write_manifest(directory, entries, ["spk"], [])
    return directory


def make_store(tmp_path: Path, backend: str, teacher: Path, manifest: Path, name: str = "cache", *,
               complete: bool = True, nan_key: str | None = None, splits: list[str] | None = None) -> Path:
    path = tmp_path / f"{name}{SUFFIXES[backend]}"
    attrs = {"teacher_fingerprint": hashlib.sha256(teacher.read_bytes()).hexdigest(),
             "manifest_sha256": manifest_hash(manifest), "video_fps": 25}
    if splits is not None:  # a teacher cache records the splits it exported
        attrs["splits"] = splits
    rng = np.random.default_rng(0)
    with create_store(path, FIELDS, attrs, backend=backend) as writer:
        writer.set_expected(len(KEYS), finish_with="avl stage export-embeddings --config x.toml")
        for key, n in zip(KEYS if complete else KEYS[:2], LENGTHS):
            frames = rng.standard_normal((n, 4))
            if key == nan_key:
                frames[[0, 2]] = [np.nan, np.inf, 0, 0]
            writer.write(key, {"frames": frames, "frame_pred": np.arange(n), "peak": rng.standard_normal(4)})
        if complete:
            writer.mark_complete()
    return path


def cli(*args: str):
    return CliRunner().invoke(app, ["cache", *map(str, args)])


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_info_lists_counts_fields_and_attributes(tmp_path, backend, teacher):
    if backend == "memory":
        pytest.skip("checks the bytes and files on disk; an in-memory store has none")
    path = make_store(tmp_path, backend, teacher, manifest_dir(tmp_path, KEYS))
    result = cli("info", path)
    assert result.exit_code == 0, result.output
    for text in ("complete  yes", "keys      5 of 5 expected", "frames", "ragged", "float16", "(4,)", "per-item",
                 "teacher_fingerprint", "video_fps", f"backend   {backend}"):
        assert text in result.output, text
    info = json.loads(cli("info", path, "--json").output)
    assert info == store_info(path)
    frames = next(f for f in info["fields"] if f["name"] == "frames")
    assert frames["rows"] == sum(LENGTHS) and frames["dtype"] == "float16" and frames["row_shape"] == [4]
    assert info["keys"] == 5 and info["bytes_on_disk"] > 0 and info["uncommitted_rows"] == {}


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_verify_accepts_a_sound_store(tmp_path, backend, teacher):
    manifest = manifest_dir(tmp_path, KEYS)
    path = make_store(tmp_path, backend, teacher, manifest)
    result = cli("verify", path, "--manifest", manifest, "--teacher", teacher)
    assert result.exit_code == 0 and "ok" in result.output, result.output
    assert cli("verify", path, "--manifest", manifest / "manifest.tsv").exit_code == 0


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_verify_names_every_problem(tmp_path, backend, teacher):
    manifest = manifest_dir(tmp_path, KEYS)
    cases = {
        "NaN rows": (
            [make_store(tmp_path, backend, teacher, manifest, "nan", nan_key="d"), "--manifest", manifest],
            r"field 'frames' has 2 rows with NaN or Inf, the first in key 'd'"),
        "missing key": (
            [make_store(tmp_path, backend, teacher, manifest), "--manifest", manifest_dir(tmp_path, KEYS + ["f"])],
            r"1 of 6 manifest keys are missing from the store, e.g. \['f'\]"),
        "other manifest": (
            [make_store(tmp_path, backend, teacher, manifest, "other"), "--manifest", manifest_dir(tmp_path, KEYS[:3])],
            "the store was made for manifest"),
        "wrong fingerprint": (
            [make_store(tmp_path, backend, teacher, manifest, "fp"), "--teacher", tmp_path / "other.pt"],
            "made by teacher"),
        "incomplete": (
            [make_store(tmp_path, backend, teacher, manifest, "part", complete=False)],
            r"not complete \(2 of 5 keys committed\); finish it with `avl stage export-embeddings --config x.toml`"),
        "not a store": ([tmp_path / "nothing.zarr"], "not an avl store"),
    }
    (tmp_path / "other.pt").write_bytes(b"another teacher")
    for name, (args, message) in cases.items():
        result = cli("verify", *args)
        assert result.exit_code == 1, (name, result.output)
        assert re.search(message, result.output), (name, result.output)
        assert "problem:" in result.output, name


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_verify_checks_only_the_exported_splits_and_flags_any_other(tmp_path, backend, teacher):
    """A cache records the splits it exported: a test key absent is right, a test key present is a leak."""
    exported = manifest_dir(tmp_path, KEYS + ["t1", "t2"], {"e": "val", "t1": "test", "t2": "test"})
    path = make_store(tmp_path, backend, teacher, exported, splits=["train", "val"])
    assert verify_store(path, manifest=exported, teacher=teacher) == []
    leaky = manifest_dir(tmp_path, KEYS, {"a": "test"})
    problems = verify_store(make_store(tmp_path, backend, teacher, leaky, "leaky", splits=["train", "val"]),
                            manifest=leaky)
    assert problems == ["the store holds 1 keys of splits ['test'] it was not to export (splits ['train', 'val']), "
                        "e.g. ['a']"], problems
    wider = manifest_dir(tmp_path, KEYS + ["f"], {"f": "val"})
    problems = verify_store(make_store(tmp_path, backend, teacher, wider, "wider", splits=["train", "val"]),
                            manifest=wider)
    assert problems == ["1 of 6 manifest keys of splits ['train', 'val'] are missing from the store, e.g. ['f']"]


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_verify_finds_broken_offsets_and_an_interrupted_flush(tmp_path, backend, teacher, monkeypatch):
    manifest = manifest_dir(tmp_path, KEYS)
    path = make_store(tmp_path, backend, teacher, manifest)
    handle = BACKENDS[backend](path, "r+")
    offsets = handle.read_rows("offsets/frames", 0, len(KEYS) + 1)
    offsets[2] = 1  # key b's rows now end before they start
    handle.write_rows("offsets/frames", 0, offsets)
    handle.close()
    problems = verify_store(path)
    assert any("offsets of 'frames' decrease at key 'b'" in p for p in problems), problems

    # an interrupted flush: rows of one more key on disk, the committed count not raised
    torn = make_store(tmp_path, backend, teacher, manifest, "torn")
    writer = open_for_append(torn)
    writer.write("f", {"frames": np.zeros((3, 4)), "frame_pred": np.zeros(3), "peak": np.zeros(4)})
    monkeypatch.setattr(writer, "_write_meta", lambda **kwargs: None)
    writer.flush()
    writer._backend.close()
    problems = verify_store(torn)
    assert any("offsets of 'frames' end at row 16, but array 'frames' holds 19 rows" in p for p in problems), problems
    assert any("5 keys are committed, but array 'keys' holds 6 rows" in p for p in problems), problems
    result = cli("info", torn)
    assert "rows past the committed state" in result.output and "frames: 3" in result.output


def test_verify_and_info_on_a_directory_of_parts(tmp_path, teacher):
    manifest = manifest_dir(tmp_path, KEYS)
    directory = tmp_path / "parts.zarr"
    attrs = {"teacher_fingerprint": hashlib.sha256(teacher.read_bytes()).hexdigest(),
             "manifest_sha256": manifest_hash(manifest)}
    for index, keys in [(0, KEYS[:3]), (2, KEYS[3:])]:
        with create_store(directory / f"part-{index:05d}.zarr", FIELDS, attrs, part=(index, 3)) as writer:
            for key in keys:
                writer.write(key, {"frames": np.ones((2, 4)), "frame_pred": np.ones(2), "peak": np.ones(4)})
            writer.mark_complete()
    problems = verify_store(directory, manifest=manifest, teacher=teacher)
    assert len(problems) == 1 and "part 1 of 3 is missing" in problems[0], problems
    result = cli("info", directory)
    assert result.exit_code == 0 and "part-00002.zarr" in result.output and "complete  NO" in result.output

    with create_store(directory / "part-00001.zarr", [replace(FIELDS[0], chunk_rows=8), *FIELDS[1:]], attrs,
                      part=(1, 3)) as writer:
        writer.mark_complete()
    problems = verify_store(directory)
    assert len(problems) == 1 and "differ in fields" in problems[0], problems
