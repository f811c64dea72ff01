"""HDF5 backend of the ragged store: one .h5 file of resizable, chunked, gzip-compressed datasets.

Every numeric dataset carries HDF5's Fletcher-32 filter after gzip, so a flipped byte in a chunk fails
its read; HDF5 refuses filters on variable-length text, so the keys' gzip stream (adler32) covers their
chunks and the store's `keys_sha256` their text. A chunk that fails is a `DamagedChunkError`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from cache import locks
from cache.base import DamagedChunkError, StoreError
from cache.rawread import RAW_READS_POSSIBLE

META_ATTR = "avl_attrs"  # the whole metadata dict as one JSON string, so it is updated in one write
READ_CACHE_BYTES = 32 << 20  # the 1 MB default cache holds less than one (4096, 512) float16 chunk


class Hdf5Backend:
    """Named resizable datasets and a JSON metadata dict in one HDF5 file; mode is "w", "r+" or "r"."""

    name = "hdf5"
    checksum = "fletcher32"
    on_disk = True

    def __init__(self, path: Path, mode: str) -> None:
        self.path = Path(path)
        # HDF5 otherwise reuses the space of a chunk it rewrote for the next one, so a killed writer
        # leaves the on-disk index pointing at overwritten bytes (seen in kill -9 tests); never
        # reusing space keeps every committed chunk intact, at the cost of one stale copy of the
        # last partial chunk per array per flush (under 1% of the file in a 128 MB test)
        space = {"fs_strategy": "none"} if mode == "w" else {}
        try:
            self.file = h5py.File(path, mode, rdcc_nbytes=READ_CACHE_BYTES, **space)
        except OSError as error:
            if "truncated file" in str(error):
                raise StoreError(f"{path}: the file is shorter than HDF5 recorded ({error}); it was cut off (a full "
                                 "disk or a copy that stopped?): rebuild it with the command that wrote it") from None
            if "unable to lock file" not in str(error):
                raise
            # HDF5 locks a file a process writes against every other opener (and one it reads against writers)
            raise StoreError(f"{path}: HDF5 cannot open it, {locks.writer_of(path)} holds its file lock; wait for "
                             "that process to finish, or stop it, then run again") from None

    @staticmethod
    def detect(path: Path) -> bool:
        """True if `path` is an HDF5 file."""
        return path.is_file() and h5py.is_hdf5(path)

    def create_array(
        self, name: str, dtype: str, row_shape: tuple[int, ...], chunk_rows: int, checksum: bool = True,
        layout: str = "compressed",
    ) -> None:
        """Create an empty (0, *row_shape) dataset chunked along rows; dtype "str" holds unicode text.

        A raw dataset has no filter but Fletcher-32, so each chunk is its rows then 4 checksum bytes."""
        text, compressed = dtype == "str", layout == "compressed"
        self.file.create_dataset(
            name,
            shape=(0, *row_shape),
            maxshape=(None, *row_shape),
            chunks=(chunk_rows, *row_shape),
            dtype=h5py.string_dtype() if text else dtype,
            compression="gzip" if compressed else None,
            compression_opts=4 if compressed else None,
            shuffle=compressed and not text,
            fletcher32=checksum and not text,  # h5py runs it after gzip: it covers the stored bytes
        )

    def chunk_rows(self, name: str) -> int:
        """Rows per chunk, the unit a checksum covers."""
        return self.file[name].chunks[0]

    def rewritten_rows(self, name: str) -> int:
        """Rows a write may store again beside the new ones: the partly filled chunk it ends in, in new space."""
        return self.file[name].chunks[0]

    def length(self, name: str) -> int:
        """Rows in the dataset, committed or not."""
        return self.file[name].shape[0]

    def write_rows(self, name: str, start: int, rows: np.ndarray) -> None:
        """Resize the dataset to start + len(rows) and write rows there."""
        dataset = self.file[name]
        dataset.resize(start + len(rows), axis=0)
        if len(rows):
            dataset[start : start + len(rows)] = rows

    def truncate(self, name: str, length: int) -> None:
        """Drop rows past `length` (HDF5 does not give the space back to the file system)."""
        dataset = self.file[name]
        if dataset.shape[0] > length:
            dataset.resize(length, axis=0)

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of the dataset; text comes back as str, not bytes."""
        dataset = self.file[name]
        try:
            if h5py.check_string_dtype(dataset.dtype) is not None:
                return dataset.asstr()[start:stop]
            return dataset[start:stop]
        except OSError as error:  # Fletcher-32 or gzip failed: "filter returned failure during read"
            detail = f"a chunk failed its Fletcher-32 checksum or its decompression; HDF5 says: {error}"
            raise DamagedChunkError(self.path, name, start, stop, detail) from None

    def raw_chunks(self, name: str) -> Hdf5Chunks | None:
        """Where the chunks of an unfiltered (raw) dataset lie in the file; None for any other dataset."""
        dataset = self.file[name]
        filters = dataset.id.get_create_plist()
        kinds = {filters.get_filter(i)[0] for i in range(filters.get_nfilters())}
        if not RAW_READS_POSSIBLE or kinds - {h5py.h5z.FILTER_FLETCHER32}:
            return None
        return Hdf5Chunks(self.path, dataset, fletcher32=h5py.h5z.FILTER_FLETCHER32 in kinds)

    def stored_bytes(self, name: str) -> int:
        """Bytes of the dataset's chunks in the file."""
        return self.file[name].id.get_storage_size()

    def read_meta(self) -> dict[str, Any]:
        """The metadata dict, or {} for an HDF5 file that is not a store."""
        if META_ATTR not in self.file.attrs:
            return {}
        try:
            return json.loads(self.file.attrs[META_ATTR])
        except ValueError as error:
            raise StoreError(f"{self.path}: its metadata ({META_ATTR!r}) is damaged: {error}") from None

    def write_meta(self, meta: dict[str, Any]) -> None:
        """Replace the metadata; the data is flushed and synced to disk first, so the count that commits it never
        reaches the disk before it does (the file is updated in place, so the order is all that keeps it sound)."""
        self.file.flush()
        os.fsync(self.file.id.get_vfd_handle())
        self.file.attrs[META_ATTR] = json.dumps(meta)
        self.file.flush()

    def close(self) -> None:
        """Close the file."""
        self.file.close()


class Hdf5Chunks:
    """Byte offsets of a raw dataset's chunks, asked of HDF5 once per chunk (`cache.rawread.RawChunks`)."""

    def __init__(self, path: Path, dataset: h5py.Dataset, fletcher32: bool) -> None:
        self.path, self._dataset = str(Path(path).resolve()), dataset
        self.chunk_rows = dataset.chunks[0]
        self.checksum = "fletcher32" if fletcher32 else None
        self._zeros = (0,) * (dataset.ndim - 1)
        self._bytes = dataset.dtype.itemsize * int(np.prod(dataset.chunks)) + 4 * fletcher32
        self._where: dict[int, tuple[str, int] | None] = {}

    def locate(self, chunk: int) -> tuple[str, int] | None:
        if chunk not in self._where:
            info = self._dataset.id.get_chunk_info_by_coord((chunk * self.chunk_rows, *self._zeros))
            if info.byte_offset is None:  # never written: HDF5 reads it as the fill value
                self._where[chunk] = None
            elif info.filter_mask != 0 or info.size != self._bytes:
                rows = (chunk * self.chunk_rows, (chunk + 1) * self.chunk_rows)
                raise DamagedChunkError(Path(self.path), self._dataset.name.lstrip("/"), *rows, f"its chunk index says "
                                        f"{info.size} bytes with filter mask {info.filter_mask}, expected {self._bytes}")
            else:
                self._where[chunk] = (self.path, info.byte_offset)
        return self._where[chunk]
