"""100,000 utterances: a bounded number of files, and a key's rows read by touching only their chunks."""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr.storage

from cache import hdf5_store
from cache.store import INDEX_CHUNK_ROWS, SUFFIXES, FieldSpec, create_store, open_store
from cache.zarr_store import CHUNKS_PER_SHARD

N_KEYS = 100_000
CHUNK_ROWS = 1024  # (1024, 16) float16: 32 KB chunks
FIELDS = [FieldSpec("frames", "float16", (16,), chunk_rows=CHUNK_ROWS),
          FieldSpec("peak", "float16", (16,), ragged=False, chunk_rows=CHUNK_ROWS)]


def key(i: int) -> str:
    return f"id{i // 100:05d}/utt{i:06d}"


@pytest.fixture(scope="module", params=[
    pytest.param(name, marks=pytest.mark.skip(reason="counts files and chunk reads on disk; an in-memory store has neither"))
    if name == "memory" else name for name in sorted(SUFFIXES)])
def big_store(request, tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """(path, every frame row, offsets) of a store of 100,000 keys with 1-8 rows each."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 9, N_KEYS)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    frames = rng.standard_normal((offsets[-1], 16)).astype(np.float16)
    path = tmp_path_factory.mktemp("scale") / f"big{SUFFIXES[request.param]}"
    with create_store(path, FIELDS, {}, backend=request.param) as writer:
        for i in range(N_KEYS):
            writer.write(key(i), {"frames": frames[offsets[i] : offsets[i + 1]], "peak": frames[offsets[i]]})
        writer.mark_complete()
    return path, frames, offsets


def test_file_count_is_bounded(big_store):
    path, frames, _ = big_store
    reader = open_store(path)
    assert len(reader) == N_KEYS
    if path.is_file():  # HDF5: one file whatever the key count
        return
    files = [p for p in path.rglob("*") if p.is_file()]
    # one shard file per CHUNKS_PER_SHARD chunks of each array, plus one zarr.json per array and group
    shards = (math.ceil(len(frames) / (CHUNK_ROWS * CHUNKS_PER_SHARD)) + math.ceil(N_KEYS / (CHUNK_ROWS * CHUNKS_PER_SHARD))
              + 3 * math.ceil((N_KEYS + 1) / (INDEX_CHUNK_ROWS * CHUNKS_PER_SHARD)))
    metadata = len([p for p in files if p.name == "zarr.json"])
    assert len(files) <= shards + metadata and len(files) < 60, len(files)


def chunks_of(start: int, stop: int) -> set[int]:
    return set(range(start // CHUNK_ROWS, (stop - 1) // CHUNK_ROWS + 1))


def test_reading_a_key_touches_only_its_chunks(big_store, monkeypatch):
    path, frames, offsets = big_store
    reader = open_store(path)  # keys and offsets are read here, once: a lookup is then a dict access
    reads: list[tuple[str, int]] = []
    if path.is_dir():
        original_get = zarr.storage.LocalStore.get

        async def counting_get(self, name, prototype=None, byte_range=None):
            buffer = await original_get(self, name, prototype, byte_range)
            reads.append((name, 0 if buffer is None else len(buffer)))
            return buffer

        monkeypatch.setattr(zarr.storage.LocalStore, "get", counting_get)
    else:
        original_file = h5py.File

        class CountingFile:
            def __init__(self, raw):
                self.raw = raw

            def read(self, size=-1):
                data = self.raw.read(size)
                reads.append(("file", len(data)))
                return data

            def readinto(self, buffer):
                n = self.raw.readinto(buffer)
                reads.append(("file", n))
                return n

            def __getattr__(self, name):
                return getattr(self.raw, name)

        def counting_open(name, mode="r", **kwargs):
            return original_file(CountingFile(open(name, "rb")), mode, **kwargs)

        monkeypatch.setattr(hdf5_store.h5py, "File", counting_open)

    rng = np.random.default_rng(1)
    reader.read(key(0), "frames")  # opens the handle and its array metadata
    for i in rng.integers(0, N_KEYS, 20):
        reads.clear()
        rows = reader.read(key(int(i)), "frames")
        np.testing.assert_array_equal(rows, frames[offsets[i] : offsets[i + 1]])
        chunks = chunks_of(offsets[i], offsets[i + 1])
        chunk_bytes = CHUNK_ROWS * 16 * 2
        if path.is_dir():
            shards = {c // CHUNKS_PER_SHARD for c in chunks}
            # each shard: its chunk index (suffix read), then one byte range per chunk the rows lie in
            assert {name for name, _ in reads} == {f"frames/c/{s}/0" for s in shards}, reads
            assert len(reads) == len(shards) + len(chunks), reads
        # compressed chunks of random data are about their raw size; allow the index and B-tree nodes
        assert 0 < sum(n for _, n in reads) <= len(chunks) * chunk_bytes * 1.1 + 8192, reads
