"""In-memory backend of the ragged store: the same arrays and metadata, held by this process under a path name.

A store lives in `STORES`, keyed by its absolute path, until it is replaced or removed; no file is
written. Reopening a path in the same process finds the store again, so it resumes and appends like
the on-disk backends. A reader pickled into another process (a spawned DataLoader worker) carries a
copy of the store there (`snapshot` / `restore`); nothing written in one process reaches another.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cache.base import StoreError


@dataclass
class MemoryArray:
    """Rows [0, length) of `data`; the capacity past them doubles as rows are appended."""

    data: np.ndarray
    length: int = 0


@dataclass
class MemoryData:
    """One store: its named arrays and its metadata dict."""

    arrays: dict[str, MemoryArray] = field(default_factory=dict)
    chunk_rows: dict[str, int] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


STORES: dict[str, MemoryData] = {}


def _name(path: str | os.PathLike) -> str:
    return os.path.abspath(path)


def holds(path: str | os.PathLike) -> bool:
    """True if an in-memory store exists under `path`."""
    return _name(path) in STORES


def remove(path: str | os.PathLike) -> None:
    """Drop the in-memory store under `path`, if any."""
    STORES.pop(_name(path), None)


def rename(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move the store under `source` to `target`, replacing what was there."""
    STORES[_name(target)] = STORES.pop(_name(source))


def snapshot(path: str | os.PathLike) -> MemoryData | None:
    """The store under `path` (None if there is none), for a pickled reader to carry into another process."""
    return STORES.get(_name(path))


def restore(path: str | os.PathLike, data: MemoryData) -> None:
    """Put a carried store under `path` unless this process already has one there (the same one)."""
    STORES.setdefault(_name(path), data)


class MemoryBackend:
    """Named resizable arrays and a JSON metadata dict in this process's memory; mode is "w", "r+" or "r"."""

    name = "memory"
    checksum = None  # no bytes leave the process, so there is nothing to check
    on_disk = False

    def __init__(self, path: Path, mode: str) -> None:
        self.path, self.writable = Path(path), mode != "r"
        if mode == "w":
            STORES[_name(path)] = MemoryData()
        elif not holds(path):
            raise StoreError(f"{path}: no in-memory store of this name in this process")
        self._store = STORES[_name(path)]

    @staticmethod
    def detect(path: Path) -> bool:
        """True if this process holds an in-memory store under `path`."""
        return holds(path)

    def _writing(self) -> None:
        if not self.writable:
            raise StoreError(f"{self.path}: opened read-only")

    def create_array(
        self, name: str, dtype: str, row_shape: tuple[int, ...], chunk_rows: int, checksum: bool = True,
        layout: str = "compressed",
    ) -> None:
        """Create an empty (0, *row_shape) array; dtype "str" holds unicode text. Memory has one layout."""
        self._writing()
        self._store.arrays[name] = MemoryArray(np.empty((0, *row_shape), dtype=object if dtype == "str" else dtype))
        self._store.chunk_rows[name] = chunk_rows

    def chunk_rows(self, name: str) -> int:
        """The chunk rows the array was created with (it is one block of memory)."""
        return self._store.chunk_rows[name]

    def rewritten_rows(self, name: str) -> int:
        """None: a write stores only its own rows."""
        return 0

    def length(self, name: str) -> int:
        """Rows in the array, committed or not."""
        return self._store.arrays[name].length

    def write_rows(self, name: str, start: int, rows: np.ndarray) -> None:
        """Resize the array to start + len(rows) and write rows there."""
        self._writing()
        array = self._store.arrays[name]
        end = start + len(rows)
        if end > len(array.data):
            grown = np.empty((max(end, 2 * len(array.data)), *array.data.shape[1:]), dtype=array.data.dtype)
            grown[: array.length] = array.data[: array.length]
            array.data = grown
        array.data[start:end] = rows
        array.length = end

    def truncate(self, name: str, length: int) -> None:
        """Drop rows past `length`."""
        self._writing()
        array = self._store.arrays[name]
        array.length = min(array.length, length)

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """A copy of rows [start, stop) of the array, as a read from disk would be."""
        array = self._store.arrays[name]
        return array.data[: array.length][start:stop].copy()

    def raw_chunks(self, name: str) -> None:
        """None: rows in memory are read by `read_rows` at memory speed already."""
        return None

    def stored_bytes(self, name: str) -> int:
        """Bytes of the array's rows (text: their UTF-8 bytes)."""
        array = self._store.arrays[name]
        rows = array.data[: array.length]
        return sum(len(text.encode()) for text in rows) if rows.dtype == object else rows.nbytes

    def read_meta(self) -> dict[str, Any]:
        """A copy of the metadata dict."""
        return copy.deepcopy(self._store.meta)

    def write_meta(self, meta: dict[str, Any]) -> None:
        """Replace the metadata dict with a copy of `meta`."""
        self._writing()
        self._store.meta = copy.deepcopy(meta)

    def close(self) -> None:
        """Nothing to release: the store stays in STORES."""
