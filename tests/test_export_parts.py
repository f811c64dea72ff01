"""Stage 2 sharded by rank: parts written by separate runs read as one store, equal to a single export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cache.parts import PartedReader
from cache.store import StoreError, open_store
from pipeline import config as config_io
from pipeline.manifest import Entry, read_classes, read_manifest
from pipeline.stores import verify as verify_store
from stages import export_embeddings

pytestmark = pytest.mark.slow


def export(run_dir: Path, out: Path, **settings) -> Path:
    return export_embeddings.run(config_io.build(export_embeddings.ExportConfig, {
        "run_dir": run_dir, "out": out, "device": "cpu", "num_workers": 0, "batch_frames": 64, **settings}))


def test_teacher_groups_are_whole_utterances_in_manifest_order():
    entries = [Entry(f"u{i}", "a", "train", n, n / 25, "") for i, n in enumerate([30, 10, 40, 70, 5, 5])]
    groups = export_embeddings.teacher_groups(entries, 64)
    assert groups == [["u0", "u1", "u2"], ["u3"], ["u4", "u5"]]
    assert export_embeddings.teacher_groups(entries, 1) == [[e.key] for e in entries]


def test_rank_and_world_size_come_from_torchrun(monkeypatch):
    cfg = config_io.build(export_embeddings.ExportConfig, {"out": "cache.zarr"})
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert cfg.resolved_part is None and cfg.resolved_store == Path("cache.zarr")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cfg.resolved_part == (1, 2) and cfg.resolved_store == Path("cache.zarr/part-00001.zarr")
    explicit = config_io.build(export_embeddings.ExportConfig, {"out": "c.h5", "store": "hdf5", "part": 0, "num_parts": 3})
    assert explicit.resolved_part == (0, 3) and explicit.resolved_store == Path("c.h5/part-00000.h5")
    with pytest.raises(config_io.ConfigError, match="both part and num_parts"):
        config_io.build(export_embeddings.ExportConfig, {"part": 1})


def test_two_parts_read_as_the_single_store(tiny_run, tmp_path):
    run_dir = tiny_run / "run"
    single = open_store(export(run_dir, tmp_path / "single.zarr"))
    parted = tmp_path / "parted.zarr"

    assert export(run_dir, parted, part=0, num_parts=2) == parted / "part-00000.zarr"
    with pytest.raises(StoreError, match="1 of 2 parts complete[^$]*part 1 of 2 is missing"):
        open_store(parted)
    half = open_store(parted, require_complete=False)
    assert isinstance(half, PartedReader) and not half.complete and 0 < len(half) < len(single)

    export(run_dir, parted, part=1, num_parts=2)
    whole = open_store(parted)
    assert isinstance(whole, PartedReader) and whole.complete
    assert sorted(whole.keys) == sorted(single.keys) and len(whole) == len(single)
    assert whole.attrs == single.attrs and whole.fields == single.fields
    # part order: part 0 holds teacher groups 0, 2, 4, ... and part 1 groups 1, 3, 5, ...
    exported = [e for e in read_manifest(run_dir / "prepare") if e.split in ("train", "val")]
    groups = export_embeddings.teacher_groups(exported, 64)
    assert whole.keys == [key for group in groups[0::2] + groups[1::2] for key in group]
    for key in single.keys:
        for field, spec in single.fields.items():
            assert np.array_equal(whole.read(key, field), single.read(key, field)), (key, field)
            if spec.ragged:
                assert whole.length(key, field) == single.length(key, field)
                np.testing.assert_array_equal(whole.read(key, field, 1, 3), single.read(key, field, 1, 3))
    frames = np.concatenate([single.read(key, "frames") for key in whole.keys])
    np.testing.assert_array_equal(whole.read_rows("frames", 0, 10**9), frames)
    np.testing.assert_array_equal(whole.read_rows("frames", 5, len(frames) - 7), frames[5:-7])
    offsets = whole.offsets("frames")
    for key in whole.keys[::5]:
        i = whole.index(key)
        np.testing.assert_array_equal(whole.read_rows("frames", offsets[i], offsets[i + 1]), single.read(key, "frames"))
    assert verify_store(parted, manifest=run_dir / "prepare", teacher=run_dir / "teacher" / "teacher.pt") == []

    # stage 3 opens the directory as it opens a single cache
    from stages.train_student import open_checked_cache

    train = [e for e in read_manifest(run_dir / "prepare") if e.split == "train"]
    assert isinstance(open_checked_cache(parted, read_classes(run_dir / "prepare"), train, None), PartedReader)


def test_parts_of_different_runs_are_refused(tiny_run, tmp_path):
    run_dir = tiny_run / "run"
    parted = tmp_path / "mixed.zarr"
    export(run_dir, parted, part=0, num_parts=2)
    export(run_dir, parted, part=1, num_parts=2, batch_frames=32)
    with pytest.raises(StoreError, match=r"differ in attrs \['batch_frames'\]"):
        open_store(parted)
    export(run_dir, tmp_path / "three.zarr", part=2, num_parts=3)
    (tmp_path / "three.zarr" / "part-00002.zarr").rename(parted / "part-00002.zarr")
    with pytest.raises(StoreError, match="parts disagree on how many parts there are"):
        open_store(parted)
    with pytest.raises(StoreError, match="holds the parts of a sharded cache"):
        export(run_dir, parted)
