"""Raw-layout fields: read from memory maps of the backend's files, every chunk checksummed on first touch."""

from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

from cache.base import FieldSpec, StoreError
from cache.rawread import RawField, fletcher32_matches
from cache.schema import cache_fields, spectrogram_fields
from cache.store import DISK_BACKENDS, SUFFIXES, create_store, open_store

FIELDS = [FieldSpec("rows", "float16", (6,), chunk_rows=8, layout="raw"),
          FieldSpec("item", "float32", (3,), ragged=False, chunk_rows=4, layout="raw")]


def write(path: Path, backend: str, lengths: list[int], zero_key: int | None = None) -> dict[str, np.ndarray]:
    """A complete store of keys k0, k1, ... with `lengths` rows each; key `zero_key`'s rows are all zero."""
    rng = np.random.default_rng(0)
    rows = {f"k{i}": rng.standard_normal((n, 6)).astype(np.float16) for i, n in enumerate(lengths)}
    if zero_key is not None:
        rows[f"k{zero_key}"][:] = 0
    with create_store(path, FIELDS, {}, backend=backend) as writer:
        for key, values in rows.items():
            writer.write(key, {"rows": values, "item": np.full(3, len(values), dtype=np.float32)})
        writer.mark_complete()
    return rows


@pytest.mark.parametrize("backend", DISK_BACKENDS)
def test_raw_fields_read_through_maps_and_match(tmp_path: Path, backend: str) -> None:
    path = tmp_path / f"s{SUFFIXES[backend]}"
    # 40 zero rows fill whole chunks, which zarr does not store at all: they must read back as zeros
    rows = write(path, backend, [5, 40, 0, 17, 1, 33], zero_key=1)
    reader = open_store(path)
    assert reader.fields["rows"].layout == "raw"
    for key, values in rows.items():
        np.testing.assert_array_equal(reader.read(key, "rows"), values)
        np.testing.assert_array_equal(reader.read(key, "rows", 2, -1), values[2:-1])
        assert reader.read(key, "item").tolist() == [len(values)] * 3
    assert isinstance(reader._raw["rows"], RawField) and isinstance(reader._raw["item"], RawField)
    clone = pickle.loads(pickle.dumps(reader))  # a DataLoader worker's copy maps the files itself
    np.testing.assert_array_equal(clone.read("k3", "rows", 3, 15), rows["k3"][3:15])


def test_the_stage_schemas_store_spectrograms_and_targets_raw() -> None:
    assert {spec.layout for spec in spectrogram_fields(257)} == {"raw"}
    assert {spec.layout for spec in cache_fields(512, 10, "float16", sequential=True)} == {"raw"}


def test_a_compressed_field_is_recorded_as_format_2_recorded_it() -> None:
    assert "layout" not in FieldSpec("x", "float32").to_dict()
    assert FieldSpec.from_dict(FieldSpec("x", "float32", layout="raw").to_dict()).layout == "raw"
    with pytest.raises(ValueError, match="layout"):
        FieldSpec("x", "float32", layout="packed")


def finished_store_and_first_chunk(tmp_path: Path, backend: str) -> tuple[Path, Path, int]:
    """A finished store of keys k0-k2, the file holding the first chunk of `rows` and that chunk's byte offset."""
    path = tmp_path / f"s{SUFFIXES[backend]}"
    write(path, backend, [5, 6, 7])
    with open_store(path) as reader:
        reader.read("k0", "rows")
        file, offset = reader._raw["rows"].chunks.locate(0)
    return path, Path(file), offset


@pytest.mark.parametrize("backend", DISK_BACKENDS)
def test_a_flipped_byte_in_a_raw_chunk_names_the_store_field_and_keys(tmp_path: Path, backend: str) -> None:
    path, file, offset = finished_store_and_first_chunk(tmp_path, backend)
    data = bytearray(file.read_bytes())
    data[offset + 3] ^= 0x10
    file.write_bytes(bytes(data))
    reader = open_store(path)
    with pytest.raises(StoreError, match=r"field 'rows'.*key 'k0'.*(crc32c|fletcher32) checksum"):
        reader.read("k0", "rows")
    np.testing.assert_array_equal(reader.read("k2", "rows", 4, 7).shape, (3, 6))  # rows of sound chunks still read


@pytest.mark.parametrize("backend", DISK_BACKENDS)
def test_a_truncated_file_is_an_error_not_a_crash(tmp_path: Path, backend: str) -> None:
    path, file, offset = finished_store_and_first_chunk(tmp_path, backend)
    with open(file, "r+b") as handle:
        handle.truncate(offset + 10)
    with pytest.raises(StoreError, match=r"rows|truncated|index|checksum"):
        with open_store(path) as reader:
            reader.read("k0", "rows")


def test_zarr_shard_index_damage_is_caught(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    write(path, "zarr", [5, 6, 7])
    shard = path / "rows" / "c" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0x01  # inside the index, before its crc32c
    shard.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="crc32c"):
        open_store(path).read("k0", "rows")


@pytest.mark.parametrize("n_bytes", [2, 3, 720, 4097, 2 * 1024 * 3 + 1])
def test_fletcher32_agrees_with_the_chunks_hdf5_wrote(tmp_path: Path, n_bytes: int) -> None:
    rng = np.random.default_rng(n_bytes)
    with h5py.File(tmp_path / "f.h5", "w") as handle:
        handle.create_dataset("a", data=rng.integers(0, 256, (4, n_bytes), dtype=np.uint8), chunks=(1, n_bytes),
                              fletcher32=True)
        handle.create_dataset("z", data=np.full((1, n_bytes), 255, dtype=np.uint8), chunks=(1, n_bytes),
                              fletcher32=True)  # all-ones words: sums whose residue is 0
    with h5py.File(tmp_path / "f.h5", "r") as handle:
        for name in ("a", "z"):
            for row in range(handle[name].shape[0]):
                _, stored = handle[name].id.read_direct_chunk((row, 0))
                data, checksum = np.frombuffer(stored[:-4], dtype=np.uint8), stored[-4:]
                assert fletcher32_matches(data, checksum), (name, row)
                damaged = data.copy()
                damaged[len(damaged) // 2] ^= 0x04
                assert not fletcher32_matches(damaged, checksum)


def test_memory_backend_reads_raw_fields_itself(tmp_path: Path) -> None:
    rows = write(tmp_path / "m", "memory", [3, 9])
    reader = open_store(tmp_path / "m")
    np.testing.assert_array_equal(reader.read("k1", "rows", 2, 8), rows["k1"][2:8])
    assert reader._raw["rows"] is None


@pytest.mark.parametrize("backend", DISK_BACKENDS)
def test_single_byte_fields_are_read_raw_too(tmp_path: Path, backend: str) -> None:
    path = tmp_path / f"b{SUFFIXES[backend]}"
    with create_store(path, [FieldSpec("blob", "uint8", (), chunk_rows=16, layout="raw")], {}, backend=backend) as writer:
        writer.write("a", {"blob": np.arange(40, dtype=np.uint8)})
        writer.mark_complete()
    reader = open_store(path)
    np.testing.assert_array_equal(reader.read("a", "blob", 5, 37), np.arange(5, 37, dtype=np.uint8))
    assert isinstance(reader._raw["blob"], RawField)  # zarr writes 1-byte rows with a bytes codec without endianness
