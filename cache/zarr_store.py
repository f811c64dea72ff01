"""Zarr v3 backend of the ragged store: one group directory of sharded, zstd-compressed, checksummed arrays.

Each chunk inside a shard carries zarr's crc32c codec (the shard index has its own), so a flipped byte
in a chunk fails its read instead of decompressing to wrong values; a chunk that fails to decode is a
`DamagedChunkError` naming the array and the rows read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle, Crc32cCodec, ZstdCodec

from cache.base import DamagedChunkError, StoreError

CHUNKS_PER_SHARD = 16  # a shard is one file: the file count is the chunk count / 16
# zarr's LocalStore writes every file as <name>.<uuid>.partial and then renames it, so a killed writer
# leaves these behind; they are never part of the store
PARTIAL_SUFFIX = ".partial"


def partial_files(path: Path) -> list[Path]:
    """Temporary files of interrupted writes under a zarr store."""
    return sorted(p for p in Path(path).rglob(f"*{PARTIAL_SUFFIX}") if p.is_file())


def remove_partial_files(path: Path) -> None:
    """Delete what killed writers left; only a writer (the store has one at a time) may call this."""
    for leftover in partial_files(path):
        leftover.unlink(missing_ok=True)


def _damage(error: Exception) -> str:
    """What went wrong with a chunk, without the checksum bytes zarr quotes."""
    if "checksum" in str(error):
        return "a chunk or shard index failed its crc32c checksum"
    return f"a chunk could not be decoded: {error}"


class ZarrBackend:
    """Named resizable arrays and a JSON metadata dict in a zarr group; mode is "w", "r+" or "r"."""

    name = "zarr"
    checksum = "crc32c"
    on_disk = True

    def __init__(self, path: Path, mode: str) -> None:
        self.path = Path(path)
        if mode == "r+":
            remove_partial_files(path)
        try:
            self.group = zarr.open_group(str(path), mode=mode)
        except ValueError as error:  # a damaged zarr.json is not JSON
            raise StoreError(f"{path}: its metadata (zarr.json) cannot be read: {' '.join(str(error).split())}") from None
        self._arrays: dict[str, zarr.Array] = {}

    @staticmethod
    def detect(path: Path) -> bool:
        """True if `path` is a zarr v3 directory."""
        return path.is_dir() and (path / "zarr.json").is_file()

    def create_array(
        self, name: str, dtype: str, row_shape: tuple[int, ...], chunk_rows: int, checksum: bool = True
    ) -> None:
        """Create an empty (0, *row_shape) array chunked along rows; dtype "str" holds unicode text."""
        text = dtype == "str"
        # byte shuffle groups the bytes of each number, which is what makes float rows compress
        compressor = ZstdCodec(level=3) if text else BloscCodec(cname="zstd", clevel=3, shuffle=BloscShuffle.shuffle)
        self.group.create_array(
            name,
            shape=(0, *row_shape),
            dtype=str if text else dtype,
            chunks=(chunk_rows, *row_shape),
            shards=(chunk_rows * CHUNKS_PER_SHARD, *row_shape),
            # these codecs run on each chunk inside its shard: the checksum covers the compressed bytes
            compressors=[compressor, Crc32cCodec()] if checksum else compressor,
        )

    def chunk_rows(self, name: str) -> int:
        """Rows per chunk (the unit a checksum covers), not per shard."""
        return self._array(name).chunks[0]

    def rewritten_rows(self, name: str) -> int:
        """Rows a write may store again beside the new ones: the shard it ends in is rewritten whole."""
        return self._array(name).shards[0]

    def _array(self, name: str) -> zarr.Array:
        if name not in self._arrays:
            self._arrays[name] = self.group[name]
        return self._arrays[name]

    def length(self, name: str) -> int:
        """Rows in the array, committed or not."""
        return self._array(name).shape[0]

    def write_rows(self, name: str, start: int, rows: np.ndarray) -> None:
        """Resize the array to start + len(rows) and write rows there."""
        array = self._array(name)
        array.resize((start + len(rows), *array.shape[1:]))
        if len(rows):
            try:
                array[start : start + len(rows)] = rows
            except (ValueError, RuntimeError) as error:  # a partly filled chunk is decoded to be extended
                raise DamagedChunkError(self.path, name, start, start + len(rows), _damage(error)) from None

    def truncate(self, name: str, length: int) -> None:
        """Drop rows past `length` (shards wholly past it are deleted)."""
        array = self._array(name)
        if array.shape[0] > length:
            array.resize((length, *array.shape[1:]))

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of the array; a chunk that fails its checksum or its decoding is a DamagedChunkError."""
        array = self._array(name)
        try:
            return array[start:stop]
        except (ValueError, RuntimeError) as error:  # crc32c mismatch: ValueError; blosc or zstd: RuntimeError
            raise DamagedChunkError(self.path, name, start, stop, _damage(error)) from None

    def stored_bytes(self, name: str) -> int:
        """Bytes of the array's files (metadata and shards)."""
        directory = Path(self.group.store.root) / self.group.path / name  # arrays hold no nested arrays
        return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())

    def read_meta(self) -> dict[str, Any]:
        """The group attributes."""
        return self.group.attrs.asdict()

    def write_meta(self, meta: dict[str, Any]) -> None:
        """Replace the group attributes; LocalStore writes zarr.json atomically (temp file + rename)."""
        self.group.attrs.put(meta)

    def close(self) -> None:
        """Drop the array handles (zarr keeps no open files between calls)."""
        self._arrays.clear()
