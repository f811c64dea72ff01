"""Opening and creating stores: the entry points the stages use, whatever backend wrote what is on disk.

A store is a ragged-array store (`cache/base.py`, `cache/ragged.py`) of one backend (`cache/backends.py`),
or a directory of parts read as one (`cache/parts.py`). This module also re-exports the names that
code outside `cache/` imports, so `from cache.store import ...` is the one door into the storage layer.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from cache import memory_store
from cache.backends import BACKENDS, DISK_BACKENDS, SUFFIXES, detect_backend
from cache.base import (
    INDEX_CHUNK_ROWS,
    KEYS,
    FieldSpec,
    StoreError,
    check_attrs,
    committed_rows,
    keys_digest,
    offsets_name,
    parse_meta,
    store_meta,
)
from cache.space import MARGIN_BYTES, RoomGuard
from cache.parts import PartedReader, is_parts_directory
from cache.ragged import FLUSH_BYTES, FLUSH_CHUNKS, RaggedReader, RaggedWriter

__all__ = [
    "BACKENDS", "DISK_BACKENDS", "FLUSH_BYTES", "FLUSH_CHUNKS", "INDEX_CHUNK_ROWS", "SUFFIXES", "FieldSpec",
    "PartedReader", "RaggedReader", "RaggedWriter", "StoreError", "array_stats", "copy_store", "create_store",
    "delete_store", "detect_backend", "open_for_append", "open_store", "something_at",
]


def create_store(
    path: str | os.PathLike,
    fields: list[FieldSpec],
    attrs: dict[str, Any],
    backend: str = "zarr",
    overwrite: bool = False,
    part: tuple[int, int] | None = None,
    checksums: bool = True,
) -> RaggedWriter:
    """Create an empty store and return its writer; an existing store is replaced only with overwrite=True.

    `part=(index, count)` makes it part `index` of a store sharded into `count` parts (`cache/parts.py`).
    `checksums=False` writes chunks without checksums, as format 1 did: only to measure what they cost.
    """
    path = Path(path)
    if backend not in BACKENDS:
        raise ValueError(f"{path}: unknown backend {backend!r} (choose from {sorted(BACKENDS)})")
    if part is not None and not 0 <= part[0] < part[1]:
        raise ValueError(f"{path}: part index {part[0]} is not in [0, {part[1]})")
    names = [spec.name for spec in fields]
    if not fields or len(set(names)) != len(names):
        raise ValueError(f"{path}: fields must be a non-empty list of distinct names, got {names}")
    check_attrs(path, attrs)
    if something_at(path) and not overwrite:
        raise StoreError(f"{path}: already exists; pass overwrite=True to replace it")
    if something_at(path):
        try:
            detect_backend(path)
        except StoreError:
            raise StoreError(f"{path}: exists and is not an avl store; refusing to replace it") from None
    # built beside its final place and renamed into it, so a killed create leaves no half-made store
    # in the way of the next attempt (only this staging copy, which that attempt removes)
    staging = path.with_name(f".{path.name}.creating")
    _remove(staging)
    if backend in DISK_BACKENDS:
        path.parent.mkdir(parents=True, exist_ok=True)
    with RoomGuard(path, backend in DISK_BACKENDS).writing(MARGIN_BYTES, "create it", "run the command again"):
        _create(staging, backend, fields, attrs, part, checksums)
    _remove(path)
    if backend in DISK_BACKENDS:
        os.replace(staging, path)
    else:  # an in-memory store is renamed in this process's registry
        memory_store.rename(staging, path)
    return open_for_append(path)


def _create(staging: Path, backend: str, fields: list[FieldSpec], attrs: dict[str, Any],
            part: tuple[int, int] | None, checksums: bool) -> None:
    handle = BACKENDS[backend](staging, "w")
    try:
        handle.create_array(KEYS, "str", (), INDEX_CHUNK_ROWS, checksum=checksums)
        for spec in fields:
            handle.create_array(spec.name, spec.dtype, spec.row_shape, spec.chunk_rows, checksum=checksums,
                                layout=spec.layout)
            if spec.ragged:
                handle.create_array(offsets_name(spec.name), "int64", (), INDEX_CHUNK_ROWS, checksum=checksums)
                handle.write_rows(offsets_name(spec.name), 0, np.zeros(1, dtype=np.int64))
        extras = {"checksums": handle.checksum if checksums else None}
        if part is not None:
            extras["part"] = {"index": int(part[0]), "count": int(part[1])}
        meta = store_meta(backend, {spec.name: spec for spec in fields}, dict(attrs), 0, False, extras,
                          keys_digest([]).hexdigest())
        handle.write_meta(meta)
    finally:
        handle.close()


def something_at(path: str | os.PathLike) -> bool:
    """True if anything is at `path`: a file, a directory, a link or an in-memory store."""
    path = Path(path)
    return path.exists() or path.is_symlink() or memory_store.holds(path)


def delete_store(path: str | os.PathLike) -> None:
    """Remove the store or directory of parts at `path` (nothing there is fine); anything else is refused."""
    path = Path(path)
    if something_at(path) and not is_parts_directory(path):
        detect_backend(path)  # raises for what is not a store
    _remove(path)


def _remove(path: Path) -> None:
    memory_store.remove(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def array_stats(path: str | os.PathLike) -> dict[str, dict[str, int]]:
    """Every array of one store: committed rows, rows on disk (more: an interrupted flush) and bytes stored."""
    path = Path(path)
    handle = BACKENDS[detect_backend(path)](path, "r")
    try:
        info, fields, _ = parse_meta(path, handle)
        committed = committed_rows(path, handle, fields, info["committed"])
        return {
            name: {"rows": rows, "rows_on_disk": handle.length(name), "bytes": handle.stored_bytes(name)}
            for name, rows in committed.items()
        }
    finally:
        handle.close()


def open_for_append(path: str | os.PathLike) -> RaggedWriter:
    """Reopen a store to write more keys, dropping rows of any interrupted flush; `keys` says what is there."""
    path = Path(path)
    handle = BACKENDS[detect_backend(path)](path, "r+")
    try:
        return RaggedWriter(path, handle)
    except BaseException:
        handle.close()
        raise


def open_store(path: str | os.PathLike, require_complete: bool = True) -> RaggedReader | PartedReader:
    """Open a store, or a directory of parts as one store; incomplete is a StoreError unless require_complete=False."""
    if is_parts_directory(Path(path)):
        return PartedReader(path, require_complete)
    return RaggedReader(path, require_complete)


def copy_store(source: str | os.PathLike, target: str | os.PathLike, keys: list[str] | None = None,
               fields: tuple[str, ...] | None = None, backend: str = "memory") -> RaggedReader:
    """Copy `keys` and `fields` (default: all) of a complete store into a new complete store, and open that."""
    with open_store(source) as reader:
        specs = [spec for name, spec in reader.fields.items() if fields is None or name in fields]
        with create_store(target, specs, reader.attrs, backend=backend) as writer:
            for key in reader.keys if keys is None else keys:
                writer.write(key, {spec.name: reader.read(key, spec.name) for spec in specs})
            writer.mark_complete()
    return RaggedReader(target)
