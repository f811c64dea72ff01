"""Zarr v3 backend of the ragged store: one group directory of sharded, zstd-compressed arrays."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle, ZstdCodec

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


class ZarrBackend:
    """Named resizable arrays and a JSON metadata dict in a zarr group; mode is "w", "r+" or "r"."""

    name = "zarr"

    def __init__(self, path: Path, mode: str) -> None:
        if mode == "r+":
            remove_partial_files(path)
        self.group = zarr.open_group(str(path), mode=mode)
        self._arrays: dict[str, zarr.Array] = {}

    @staticmethod
    def detect(path: Path) -> bool:
        """True if `path` is a zarr v3 directory."""
        return path.is_dir() and (path / "zarr.json").is_file()

    def create_array(self, name: str, dtype: str, row_shape: tuple[int, ...], chunk_rows: int) -> None:
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
            compressors=compressor,
        )

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
            array[start : start + len(rows)] = rows

    def truncate(self, name: str, length: int) -> None:
        """Drop rows past `length` (shards wholly past it are deleted)."""
        array = self._array(name)
        if array.shape[0] > length:
            array.resize((length, *array.shape[1:]))

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of the array."""
        return self._array(name)[start:stop]

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
