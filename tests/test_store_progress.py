"""What a store says about an unfinished write, and what a killed create or flush leaves behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cache import memory_store
from cache.store import (
    BACKENDS,
    SUFFIXES,
    FieldSpec,
    StoreError,
    create_store,
    delete_store,
    open_for_append,
    open_store,
)
from cache.zarr_store import partial_files

FIELDS = [FieldSpec("frames", "float32", (2,), chunk_rows=4096)]


def item(n: int) -> dict[str, np.ndarray]:
    return {"frames": np.full((n, 2), n, dtype=np.float32)}


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_not_complete_says_how_far_and_how_to_finish(tmp_path: Path, backend: str) -> None:
    path = tmp_path / f"s{SUFFIXES[backend]}"
    with create_store(path, FIELDS, {}, backend=backend) as writer:
        writer.set_expected(1000, finish_with="avl stage prepare --config run/prepare/config.toml")
        for i in range(3):
            writer.write(f"k{i}", item(i))
    with pytest.raises(StoreError, match=r"not complete \(3 of 1000 keys committed\); finish it with "
                                         r"`avl stage prepare --config run/prepare/config.toml`"):
        open_store(path)
    writer = open_for_append(path)  # what set_expected recorded survives reopening and later commits
    writer.write("k3", item(1))
    writer.close()
    reader = open_store(path, require_complete=False)
    assert reader.expected_keys == 1000 and reader.finish_with.startswith("avl stage prepare")
    assert len(reader) == 4 and reader.part is None


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_flush_if_due_commits_on_time(tmp_path: Path, backend: str) -> None:
    writer = create_store(tmp_path / f"s{SUFFIXES[backend]}", FIELDS, {}, backend=backend)
    writer.write("a", item(2))
    writer.flush_if_due(3600)
    assert writer.committed == 0  # big chunks: nothing flushed on its own
    writer.flush_if_due(0)
    assert writer.committed == 1
    writer.close()


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_a_killed_create_leaves_nothing_in_the_way(tmp_path: Path, backend: str, monkeypatch) -> None:
    if backend == "memory":
        pytest.skip("checks the files a killed create leaves on disk; an in-memory store writes none")
    path = tmp_path / f"s{SUFFIXES[backend]}"

    def killed(self, meta):
        raise KeyboardInterrupt("killed while creating")

    with monkeypatch.context() as patch:
        patch.setattr(BACKENDS[backend], "write_meta", killed)
        with pytest.raises(KeyboardInterrupt):
            create_store(path, FIELDS, {}, backend=backend)
    assert not path.exists()  # the next run creates the store instead of tripping over half of one
    assert (tmp_path / f".{path.name}.creating").exists()
    with create_store(path, FIELDS, {"v": 1}, backend=backend) as writer:
        writer.write("a", item(1))
        writer.mark_complete()
    assert open_store(path).attrs == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_a_killed_create_of_an_in_memory_store_leaves_nothing_in_the_way(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "s.mem"

    def killed(self, meta):
        raise KeyboardInterrupt("killed while creating")

    with monkeypatch.context() as patch:
        patch.setattr(BACKENDS["memory"], "write_meta", killed)
        with pytest.raises(KeyboardInterrupt):
            create_store(path, FIELDS, {}, backend="memory")
    assert not memory_store.holds(path) and memory_store.holds(tmp_path / ".s.mem.creating")
    with create_store(path, FIELDS, {"v": 1}, backend="memory") as writer:
        writer.write("a", item(1))
        writer.mark_complete()
    assert open_store(path).attrs == {"v": 1}
    assert not memory_store.holds(tmp_path / ".s.mem.creating") and list(tmp_path.iterdir()) == []
    delete_store(path)
    assert not memory_store.holds(path)


def test_resume_removes_temporary_files_of_killed_zarr_writes(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    with create_store(path, FIELDS, {}) as writer:
        writer.write("a", item(3))
    # zarr writes each file as <name>.<uuid>.partial and renames it; a kill leaves the temporary file
    leftover = path / "frames" / "c" / "0" / "0.0123456789abcdef.partial"
    leftover.write_bytes(b"half a shard")
    assert partial_files(path) == [leftover]
    assert open_store(path, require_complete=False).keys == ["a"]  # a reader ignores it
    writer = open_for_append(path)
    assert partial_files(path) == []
    writer.mark_complete()
    writer.close()
    np.testing.assert_array_equal(open_store(path).read("a", "frames"), item(3)["frames"])
