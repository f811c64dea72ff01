"""The ragged-array store: every test runs on every backend."""

from __future__ import annotations

import os
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from cache.store import (
    BACKENDS,
    FieldSpec,
    StoreError,
    create_store,
    detect_backend,
    open_for_append,
    open_store,
)

BACKEND_NAMES = sorted(BACKENDS)
# tiny chunks, so a handful of keys already spans several chunks and several flushes; both layouts, ragged and
# per-item, so every test reads raw fields (pread from memory maps) and compressed ones (the library)
FIELDS = [
    FieldSpec("frames", "float16", (8,), chunk_rows=4, layout="raw"),
    FieldSpec("frame_prob", "float32", (), chunk_rows=4),
    FieldSpec("frame_pred", "int64", (), chunk_rows=4, layout="raw"),
    FieldSpec("crops", "uint8", (3, 4, 4), chunk_rows=4, layout="raw"),
    FieldSpec("peak", "float32", (8,), ragged=False, chunk_rows=4, layout="raw"),
    FieldSpec("n_frames", "int32", (), ragged=False, chunk_rows=4),
]
LENGTHS = [0, 1, 5, 3, 0, 1, 7, 2]
KEYS = ["spk/é/001", "spk/é/002", "日本/ü/003", "a", "b", "c", "d", "e"]


def make_item(seed: int, length: int) -> dict[str, np.ndarray]:
    """Arrays for one key: crops have about half as many rows as frames, as segments would."""
    rng = np.random.default_rng(seed)
    return {
        "frames": rng.standard_normal((length, 8)),  # float64, cast to float16 on write
        "frame_prob": rng.random(length, dtype=np.float32),
        "frame_pred": rng.integers(0, 1 << 40, length),
        "crops": rng.integers(0, 256, ((length + 1) // 2, 3, 4, 4), dtype=np.uint8),
        "peak": rng.standard_normal(8).astype(np.float32),
        "n_frames": length,
    }


def store_path(tmp_path: Path, backend: str, name: str = "emb") -> Path:
    return tmp_path / f"{name}.{'zarr' if backend == 'zarr' else 'h5'}"


def write_store(path: Path, backend: str, keys: list[str], lengths: list[int], complete: bool = True) -> None:
    with create_store(path, FIELDS, {"teacher": "vgg16", "fps": 25}, backend=backend) as writer:
        for seed, (key, length) in enumerate(zip(keys, lengths)):
            writer.write(key, make_item(seed, length))
        if complete:
            writer.mark_complete()


def assert_item(reader, key: str, expected: dict[str, np.ndarray]) -> None:
    for spec in FIELDS:
        got = reader.read(key, spec.name)
        want = np.asarray(expected[spec.name]).astype(spec.dtype)
        assert isinstance(got, np.ndarray) and got.dtype == np.dtype(spec.dtype), (key, spec.name)
        np.testing.assert_array_equal(got, want, err_msg=f"{key} {spec.name}")


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_round_trip(tmp_path: Path, backend: str) -> None:
    path = store_path(tmp_path, backend)
    write_store(path, backend, KEYS, LENGTHS)
    reader = open_store(path)
    assert detect_backend(path) == backend == reader.backend
    assert reader.complete and reader.attrs == {"teacher": "vgg16", "fps": 25}
    assert reader.fields == {spec.name: spec for spec in FIELDS}
    assert reader.keys == KEYS and len(reader) == len(KEYS) and "spk/é/001" in reader and "zz" not in reader
    for seed, (key, length) in enumerate(zip(KEYS, LENGTHS)):
        assert reader.index(key) == seed
        assert reader.length(key, "frames") == length and reader.length(key, "crops") == (length + 1) // 2
        assert_item(reader, key, make_item(seed, length))
    np.testing.assert_array_equal(reader.offsets("frames"), np.concatenate([[0], np.cumsum(LENGTHS)]))
    all_frames = np.concatenate([make_item(s, n)["frames"] for s, n in enumerate(LENGTHS)]).astype(np.float16)
    np.testing.assert_array_equal(reader.read_rows("frames", 0, 10**9), all_frames)
    np.testing.assert_array_equal(reader.read_rows("frames", 3, 9), all_frames[3:9])
    assert reader.read_rows("peak", 0, 100).shape == (len(KEYS), 8)
    with pytest.raises(KeyError, match="no key 'nope'") as error:
        reader.read("nope", "frames")
    assert str(path) in str(error.value)
    with pytest.raises(ValueError, match="per-item"):
        reader.read("a", "peak", 0, 1)
    reader.close()


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_read_slices(tmp_path: Path, backend: str) -> None:
    path = store_path(tmp_path, backend)
    write_store(path, backend, KEYS, LENGTHS)
    reader = open_store(path)
    key, seed = "d", KEYS.index("d")  # 7 rows
    frames = make_item(seed, 7)["frames"].astype(np.float16)
    for start, stop in [(None, None), (2, 5), (0, 1), (5, 100), (-3, None), (None, -2), (4, 2), (7, 9), (-100, 3)]:
        got = reader.read(key, "frames", start, stop)
        np.testing.assert_array_equal(got, frames[start:stop], err_msg=f"{start}:{stop}")
    empty = reader.read("spk/é/001", "crops", 0, 5)  # a 0-row item
    assert empty.shape == (0, 3, 4, 4) and empty.dtype == np.uint8


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_resume_with_open_for_append(tmp_path: Path, backend: str) -> None:
    path = store_path(tmp_path, backend)
    write_store(path, backend, KEYS[:3], LENGTHS[:3], complete=False)
    with pytest.raises(StoreError, match=r"not complete \(3 keys committed\); re-run") as error:
        open_store(path)
    assert str(error.value).startswith(str(path))
    assert open_store(path, require_complete=False).keys == KEYS[:3]
    writer = open_for_append(path)
    assert list(writer.keys) == KEYS[:3] and KEYS[0] in writer.keys and KEYS[3] not in writer
    for seed in (3, 4):
        writer.write(KEYS[seed], make_item(seed, LENGTHS[seed]))
    writer.mark_complete()
    writer.close()
    reader = open_store(path)
    assert reader.keys == KEYS[:5] and reader.attrs["teacher"] == "vgg16"
    for seed in range(5):
        assert_item(reader, KEYS[seed], make_item(seed, LENGTHS[seed]))


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_uncommitted_tail_is_ignored_then_truncated(tmp_path: Path, backend: str, monkeypatch) -> None:
    path = store_path(tmp_path, backend)
    # big chunks: no automatic flush, so the test chooses which flush is interrupted
    writer = create_store(path, [replace(spec, chunk_rows=4096) for spec in FIELDS], {}, backend=backend)
    for seed in range(3):
        writer.write(KEYS[seed], make_item(seed, LENGTHS[seed]))
    writer.flush()

    def crash(**kwargs: object) -> None:
        raise RuntimeError("killed before the commit")

    # an interrupted flush: rows, offsets and keys of 2 more keys land on disk, the committed count does not
    for seed in (3, 6):
        writer.write(KEYS[seed], make_item(seed, LENGTHS[seed]))
    monkeypatch.setattr(writer, "_write_meta", crash)
    with pytest.raises(RuntimeError, match="killed"):
        writer.flush()
    writer._backend.close()
    raw = BACKENDS[backend](path, "r")
    assert raw.length("keys") == 5 and raw.length("frames") == sum(LENGTHS[:4]) + LENGTHS[6]
    raw.close()

    reader = open_store(path, require_complete=False)
    assert reader.keys == KEYS[:3] and KEYS[3] not in reader
    assert len(reader.read_rows("frames", 0, 10**9)) == sum(LENGTHS[:3])
    assert len(reader.read_rows("peak", 0, 10**9)) == 3
    reader.close()  # HDF5 will not open a file for writing while this process has it open for reading

    writer = open_for_append(path)
    assert list(writer.keys) == KEYS[:3]
    assert writer._backend.length("keys") == 3 and writer._backend.length("frames") == sum(LENGTHS[:3])
    for seed in (4, 5):  # different keys and lengths from the lost tail
        writer.write(KEYS[seed], make_item(seed, LENGTHS[seed]))
    writer.mark_complete()
    writer.close()
    reader = open_store(path)
    assert reader.keys == KEYS[:3] + KEYS[4:6]
    for seed in (0, 1, 2, 4, 5):
        assert_item(reader, KEYS[seed], make_item(seed, LENGTHS[seed]))
    assert len(reader.read_rows("frames", 0, 10**9)) == sum(LENGTHS[:3]) + sum(LENGTHS[4:6])


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_context_manager_flushes_without_completing(tmp_path: Path, backend: str) -> None:
    path = store_path(tmp_path, backend)
    with pytest.raises(RuntimeError, match="boom"):
        with create_store(path, FIELDS, {}, backend=backend) as writer:
            writer.write("a", make_item(0, 2))
            raise RuntimeError("boom")
    reader = open_store(path, require_complete=False)
    assert not reader.complete and reader.keys == ["a"]
    assert_item(reader, "a", make_item(0, 2))


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_write_errors_name_the_key(tmp_path: Path, backend: str) -> None:
    path = store_path(tmp_path, backend)
    writer = create_store(path, FIELDS, {}, backend=backend)
    writer.write("k1", make_item(0, 2))
    bad_frames = {**make_item(1, 2), "frames": np.zeros((2, 7))}
    bad_peak = {**make_item(1, 2), "peak": np.zeros((1, 8))}
    flat_crops = {**make_item(1, 2), "crops": np.zeros((3, 4, 4))}
    scalar_prob = {**make_item(1, 2), "frame_prob": np.float32(0.5)}
    cases = [
        ("k1", make_item(1, 2), "'k1': already written"),
        ("k2", bad_frames, r"'k2', field 'frames': expected shape \(T, 8\), got \(2, 7\)"),
        ("k2", bad_peak, r"'k2', field 'peak': expected shape \(8,\), got \(1, 8\)"),
        ("k2", flat_crops, r"'k2', field 'crops': expected shape \(T, 3, 4, 4\)"),
        ("k2", scalar_prob, r"'k2', field 'frame_prob': expected shape \(T,\), got \(\)"),
        ("k2", {k: v for k, v in make_item(1, 2).items() if k != "peak"}, r"'k2': missing fields \['peak'\]"),
        ("k2", {**make_item(1, 2), "extra": np.zeros(1)}, r"'k2': unknown fields \['extra'\]"),
    ]
    for key, values, message in cases:
        with pytest.raises(ValueError, match=message):
            writer.write(key, values)
    assert list(writer.keys) == ["k1"]  # a rejected key leaves nothing behind
    writer.write("k2", make_item(1, 2))
    writer.mark_complete()
    writer.close()
    assert open_store(path).keys == ["k1", "k2"]


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_detection_and_overwrite(tmp_path: Path, backend: str) -> None:
    path = store_path(tmp_path, backend)
    write_store(path, backend, KEYS[:2], LENGTHS[:2])
    assert detect_backend(path) == backend
    with pytest.raises(StoreError, match="already exists; pass overwrite=True") as error:
        create_store(path, FIELDS, {}, backend=backend)
    assert str(error.value).startswith(str(path))
    assert open_store(path).keys == KEYS[:2]  # the refused create left the store alone
    other = "hdf5" if backend == "zarr" else "zarr"
    create_store(path, FIELDS[:1], {"v": 2}, backend=other, overwrite=True).close()
    reader = open_store(path, require_complete=False)
    assert reader.backend == other and reader.keys == [] and reader.attrs == {"v": 2}

    (tmp_path / "notes.txt").write_text("not a store")
    (tmp_path / "empty").mkdir()
    for not_a_store in ["notes.txt", "empty", "missing"]:
        with pytest.raises(StoreError, match="not an avl store"):
            open_store(tmp_path / not_a_store)
    with pytest.raises(StoreError, match="refusing to replace it"):
        create_store(tmp_path / "empty", FIELDS, {}, backend=backend, overwrite=True)
    assert (tmp_path / "empty").is_dir()


class StoreDataset(torch.utils.data.Dataset):
    """Reads every field of one key per item, as a training dataset would."""

    def __init__(self, reader) -> None:
        self.reader = reader

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, i: int) -> dict[str, object]:
        key = self.reader.keys[i]
        return {"pid": os.getpid(), **{spec.name: self.reader.read(key, spec.name) for spec in FIELDS}}


@pytest.mark.parametrize("context", ["fork", "spawn"])
@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_dataloader_workers(tmp_path: Path, backend: str, context: str) -> None:
    path = store_path(tmp_path, backend)
    write_store(path, backend, KEYS, LENGTHS)
    reader = open_store(path)
    reader.read("d", "frames")  # the parent holds an open handle when the workers start
    loader = torch.utils.data.DataLoader(
        StoreDataset(reader), batch_size=None, num_workers=2, multiprocessing_context=context
    )
    items = list(loader)
    assert {item["pid"] for item in items} - {os.getpid()}, "items were not read in worker processes"
    for key, item in zip(KEYS, items):
        for spec in FIELDS:
            np.testing.assert_array_equal(item[spec.name].numpy(), reader.read(key, spec.name))


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_pickle_after_use(tmp_path: Path, backend: str) -> None:
    path = store_path(tmp_path, backend)
    write_store(path, backend, KEYS, LENGTHS)
    reader = open_store(path)
    assert reader._handle is None  # the constructor closed the handle it read the metadata through
    before = reader.read("d", "frames", 1, 4)
    clone = pickle.loads(pickle.dumps(reader))
    np.testing.assert_array_equal(clone.read("d", "frames", 1, 4), before)
    assert clone.keys == reader.keys and clone.attrs == reader.attrs
    clone.close()
    reader.close()


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_many_small_keys_keep_the_file_count_small(tmp_path: Path, backend: str) -> None:
    path = store_path(tmp_path, backend)
    # small chunks, so the 5,000 keys take several automatic flushes and several shards
    fields = [FieldSpec("segments", "float16", (16,), chunk_rows=64), FieldSpec("peak", "float16", (16,), ragged=False)]
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 4, 5000)
    keys = [f"id{i // 50:04d}/utt{i:05d}" for i in range(len(lengths))]
    segments = [rng.standard_normal((n, 16)).astype(np.float16) for n in lengths]
    peaks = rng.standard_normal((len(keys), 16)).astype(np.float16)
    with create_store(path, fields, {}, backend=backend) as writer:
        for key, rows, peak in zip(keys, segments, peaks):
            writer.write(key, {"segments": rows, "peak": peak})
        assert writer.committed > 0  # flushed without being asked
        writer.mark_complete()
    reader = open_store(path)
    assert reader.keys == keys
    for i in rng.choice(len(keys), 200, replace=False):
        np.testing.assert_array_equal(reader.read(keys[i], "segments"), segments[i])
        np.testing.assert_array_equal(reader.read(keys[i], "peak"), peaks[i])
    np.testing.assert_array_equal(reader.read_rows("segments", 0, 10**9), np.concatenate(segments))
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    assert len(files) < 50, sorted(str(p.relative_to(path)) for p in files)
