"""Ragged-array store: named fields for N string keys in one zarr group or HDF5 file, not one file per key.

A ragged field holds the rows of every key concatenated along axis 0, (ΣT, *row_shape), plus an
`offsets/<field>` int64 array (N+1); a per-item field holds one row per key, (N, *row_shape). Keys
are the `keys` text array (N,). Metadata (user attrs plus `avl_store`: format version, backend,
field specs, committed count, complete flag) is one JSON dict that each backend writes in one go.

Commit protocol (`RaggedWriter.flush`): append the data rows, then the offsets and keys, and only
then write the metadata with the new committed count. The committed count is the truth: rows past
it (an interrupted flush) are never returned by a reader and are truncated by `open_for_append`.

The store's own metadata also says how far a writing command has come and how to finish it
(`RaggedWriter.set_expected`), and which part of a rank-sharded store it is (`create_store(part=...)`;
a directory of parts opens as one store, see `cache/parts.py`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import KeysView
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from cache.hdf5_store import Hdf5Backend
from cache.zarr_store import ZarrBackend

if TYPE_CHECKING:
    from cache.parts import PartedReader

FORMAT_VERSION = 1
META_KEY = "avl_store"
KEYS = "keys"
SUFFIXES = {"zarr": ".zarr", "hdf5": ".h5"}  # what stages name a store of each backend
# store-level facts beside the commit state, kept across reopenings: how many keys the writing
# command means to commit, the command that finishes the store, and which part of a sharded store it is
_INFO_EXTRAS = ("expected_keys", "finish_with", "part")
INDEX_CHUNK_ROWS = 16384  # keys and offsets are read whole when a store is opened
FLUSH_BYTES = 64 << 20
# a zarr shard (16 chunks) is one file, rewritten whole by every flush that touches it: flushing a
# shard's worth of rows at a time cut the bytes written 5x and the write time 4x (measured)
FLUSH_CHUNKS = 16
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class StoreError(RuntimeError):
    """A store is missing, malformed, incomplete or in the way; the message starts with its path."""


class Backend(Protocol):
    """What a backend adapts: named arrays of rows, resizable along axis 0, and one metadata dict."""

    name: str

    def __init__(self, path: Path, mode: str) -> None: ...
    @staticmethod
    def detect(path: Path) -> bool: ...
    def create_array(self, name: str, dtype: str, row_shape: tuple[int, ...], chunk_rows: int) -> None: ...
    def length(self, name: str) -> int: ...
    def write_rows(self, name: str, start: int, rows: np.ndarray) -> None: ...
    def truncate(self, name: str, length: int) -> None: ...
    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray: ...
    def stored_bytes(self, name: str) -> int: ...
    def read_meta(self) -> dict[str, Any]: ...
    def write_meta(self, meta: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


BACKENDS: dict[str, type[Backend]] = {"zarr": ZarrBackend, "hdf5": Hdf5Backend}


@dataclass(frozen=True)
class FieldSpec:
    """One named array of a store: ragged (any number of rows per key) or per-item (one row per key)."""

    name: str
    dtype: str
    row_shape: tuple[int, ...] = ()
    ragged: bool = True
    chunk_rows: int = 4096

    def __post_init__(self) -> None:
        if not _FIELD_NAME.fullmatch(self.name) or self.name in (KEYS, "offsets"):
            raise ValueError(f"field name {self.name!r}: must be an identifier other than 'keys' and 'offsets'")
        if np.dtype(self.dtype).kind not in "biufc":
            raise ValueError(f"field {self.name!r}: dtype {self.dtype!r} is not numeric")
        if any(int(n) < 0 for n in self.row_shape) or self.chunk_rows < 1:
            raise ValueError(f"field {self.name!r}: bad row_shape {self.row_shape} or chunk_rows {self.chunk_rows}")
        # canonical forms, so a spec equals itself after a JSON round trip
        object.__setattr__(self, "dtype", np.dtype(self.dtype).name)
        object.__setattr__(self, "row_shape", tuple(int(n) for n in self.row_shape))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {**asdict(self), "row_shape": list(self.row_shape)}

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> FieldSpec:
        """Inverse of to_dict."""
        return cls(**spec)


def _offsets_name(field: str) -> str:
    return f"offsets/{field}"


def _store_meta(
    backend: str, fields: dict[str, FieldSpec], attrs: dict, committed: int, complete: bool, extras: dict
) -> dict:
    info = {
        "format_version": FORMAT_VERSION,
        "backend": backend,
        "fields": [spec.to_dict() for spec in fields.values()],
        "committed": committed,
        "complete": complete,
        **extras,
    }
    return {**attrs, META_KEY: info}


def not_complete_message(path: Path, committed: int, expected: int | None, finish_with: str | None) -> str:
    """Why a store is refused: how far its writer came and how to finish it."""
    progress = f"{committed} of {expected} keys" if expected is not None else f"{committed} keys"
    how = f"finish it with `{finish_with}`" if finish_with else "re-run the command that wrote it to finish it"
    return f"{path}: store is not complete ({progress} committed); {how} (it resumes where it stopped)"


def _check_attrs(path: Path, attrs: dict[str, Any]) -> None:
    if META_KEY in attrs:
        raise ValueError(f"{path}: attribute name {META_KEY!r} is reserved for the store's own metadata")
    for name, value in attrs.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: attribute {name!r} is not JSON-serialisable: {error}") from None


def _parse_meta(path: Path, backend: Backend) -> tuple[dict, dict[str, FieldSpec], dict[str, Any]]:
    """(avl_store info, fields, user attrs) of an opened store."""
    meta = dict(backend.read_meta())
    if META_KEY not in meta:
        raise StoreError(f"{path}: not an avl store (no {META_KEY!r} metadata)")
    info = meta.pop(META_KEY)
    if info["format_version"] > FORMAT_VERSION:
        raise StoreError(f"{path}: store format {info['format_version']} is newer than this code ({FORMAT_VERSION})")
    fields = {spec["name"]: FieldSpec.from_dict(spec) for spec in info["fields"]}
    return info, fields, meta


def _committed_rows(path: Path, backend: Backend, fields: dict[str, FieldSpec], committed: int) -> dict[str, int]:
    """Rows of every array in the committed state; an array shorter than that means a damaged store."""
    def check(name: str, n: int) -> int:
        if backend.length(name) < n:
            raise StoreError(f"{path}: array {name!r} has {backend.length(name)} rows, fewer than the {n} committed")
        return n

    rows = {KEYS: check(KEYS, committed)}
    for name, spec in fields.items():
        if spec.ragged:
            rows[_offsets_name(name)] = check(_offsets_name(name), committed + 1)
            end = int(backend.read_rows(_offsets_name(name), committed, committed + 1)[0])
            rows[name] = check(name, end)
        else:
            rows[name] = check(name, committed)
    return rows


def detect_backend(path: str | os.PathLike) -> str:
    """Name of the backend that wrote the store at `path`, from what is on disk."""
    path = Path(path)
    for name, backend in BACKENDS.items():
        if backend.detect(path):
            return name
    from cache.parts import is_parts_directory

    if is_parts_directory(path):
        raise StoreError(f"{path}: a directory of store parts, not one store (open it with open_store)")
    problem = "nothing exists there" if not path.exists() else "neither a zarr group directory nor an HDF5 file"
    raise StoreError(f"{path}: not an avl store ({problem})")


class RaggedWriter:
    """Buffers `write(key, values)` in memory and commits whole keys in `flush()` (see the module docstring)."""

    def __init__(self, path: Path, backend: Backend) -> None:
        """Open the writer on `backend`, truncating every array to the committed state."""
        self.path = path
        self._backend = backend
        info, self.fields, self.attrs = _parse_meta(path, backend)
        self._committed, self._complete = info["committed"], info["complete"]
        self._extras = {name: info[name] for name in _INFO_EXTRAS if name in info}
        self._rows = _committed_rows(path, backend, self.fields, self._committed)
        for name, n in self._rows.items():
            backend.truncate(name, n)
        # a dict, not a list: ordered like a list, and `key in writer.keys` stays O(1) at 150k keys
        self._keys: dict[str, None] = dict.fromkeys(backend.read_rows(KEYS, 0, self._committed).tolist())
        self._pending_keys: list[str] = []
        self._pending: dict[str, list[np.ndarray]] = {name: [] for name in self.fields}
        self._pending_rows = dict.fromkeys(self.fields, 0)
        self._pending_bytes = 0
        self._last_flush = time.monotonic()
        self._closed = False

    @property
    def keys(self) -> KeysView[str]:
        """Committed then buffered keys in write order, as a live view with an O(1) `in`."""
        return self._keys.keys()

    @property
    def committed(self) -> int:
        """Number of keys on disk in the committed state."""
        return self._committed

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def write(self, key: str, values: dict[str, np.ndarray]) -> None:
        """Buffer one key's arrays, one per field, cast to the field dtypes; flushes when the buffer is full."""
        if self._closed:
            raise StoreError(f"{self.path}: writer is closed")
        if not isinstance(key, str):
            raise ValueError(f"{self.path}: key {key!r}: keys must be str, not {type(key).__name__}")
        if key in self._keys:
            raise ValueError(f"{self.path}: key {key!r}: already written")
        if missing := sorted(self.fields.keys() - values.keys()):
            raise ValueError(f"{self.path}: key {key!r}: missing fields {missing}")
        if unknown := sorted(values.keys() - self.fields.keys()):
            raise ValueError(f"{self.path}: key {key!r}: unknown fields {unknown} (fields: {list(self.fields)})")
        arrays = {}
        for name, spec in self.fields.items():
            try:
                # a copy: callers may reuse their buffers before the flush that writes this one
                array = np.array(values[name], dtype=spec.dtype)
            except (TypeError, ValueError) as error:
                problem = f"cannot cast to {spec.dtype}: {error}"
                raise ValueError(f"{self.path}: key {key!r}, field {name!r}: {problem}") from None
            ragged_ok = array.ndim == len(spec.row_shape) + 1 and array.shape[1:] == spec.row_shape
            if not (ragged_ok if spec.ragged else array.shape == spec.row_shape):
                dims = ["T"] * spec.ragged + [str(n) for n in spec.row_shape]
                expected = f"({', '.join(dims)}{',' * (len(dims) == 1)})"
                problem = f"expected shape {expected}, got {array.shape}"
                raise ValueError(f"{self.path}: key {key!r}, field {name!r}: {problem}")
            arrays[name] = array if spec.ragged else array[None]
        self._keys[key] = None
        self._pending_keys.append(key)
        for name, array in arrays.items():
            self._pending[name].append(array)
            self._pending_rows[name] += len(array)
            self._pending_bytes += array.nbytes
        full = any(self._pending_rows[name] >= FLUSH_CHUNKS * spec.chunk_rows for name, spec in self.fields.items())
        if full or self._pending_bytes >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Commit the buffered keys: data rows, then offsets and keys, then the committed count."""
        n_old, n_new = self._committed, len(self._keys)
        if n_new == n_old:
            return
        rows = dict(self._rows)
        for name, spec in self.fields.items():
            block = np.concatenate(self._pending[name])
            self._backend.write_rows(name, rows[name], block)
            rows[name] += len(block)
            if spec.ragged:
                ends = self._rows[name] + np.cumsum([len(a) for a in self._pending[name]], dtype=np.int64)
                self._backend.write_rows(_offsets_name(name), n_old + 1, ends)
                rows[_offsets_name(name)] += len(ends)
        self._backend.write_rows(KEYS, n_old, np.array(self._pending_keys, dtype=object))
        rows[KEYS] = n_new
        # a store that gains keys is no longer complete until mark_complete() says so again
        self._write_meta(committed=n_new, complete=False)
        self._committed, self._complete, self._rows = n_new, False, rows
        self._pending_keys = []
        self._pending = {name: [] for name in self.fields}
        self._pending_rows = dict.fromkeys(self.fields, 0)
        self._pending_bytes = 0
        self._last_flush = time.monotonic()

    def flush_if_due(self, max_age_seconds: float) -> None:
        """Flush when the last flush is at least `max_age_seconds` old, so a long write commits regularly."""
        if time.monotonic() - self._last_flush >= max_age_seconds:
            self.flush()

    def _write_meta(self, committed: int, complete: bool) -> None:
        meta = _store_meta(self._backend.name, self.fields, self.attrs, committed, complete, self._extras)
        self._backend.write_meta(meta)

    def set_expected(self, expected_keys: int, finish_with: str | None = None) -> None:
        """Record how many keys this write will commit in all and the command that finishes the store.

        A reader refusing the store while it is not complete quotes both ("812 of 1000 keys committed;
        finish it with `...`").
        """
        self._extras["expected_keys"] = int(expected_keys)
        if finish_with is not None:
            self._extras["finish_with"] = finish_with
        self._write_meta(self._committed, self._complete)

    def set_attrs(self, **attrs: Any) -> None:
        """Add or replace user attributes (JSON values), written at once; buffered keys stay buffered."""
        _check_attrs(self.path, attrs)
        self.attrs.update(attrs)
        self._write_meta(self._committed, self._complete)

    def mark_complete(self) -> None:
        """Flush and mark the store complete, so `open_store` accepts it."""
        self.flush()
        self._write_meta(self._committed, complete=True)
        self._complete = True

    def close(self) -> None:
        """Flush and close; does not mark the store complete."""
        if not self._closed:
            self.flush()
            self._backend.close()
            self._closed = True

    def __enter__(self) -> RaggedWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        # buffered keys are whole, so they are committed even when the block raised
        self.close()


class RaggedReader:
    """Read side of a store, safe to pickle and to use in DataLoader workers (fork or spawn).

    Eager, in the constructor: the metadata, the committed keys, the key→index dict and every
    offsets array are read through a handle that is closed before the constructor returns. Lazy:
    the handle that `read`/`read_rows` use is opened on first use in each process, reopened when
    `os.getpid()` changes, and dropped when pickled, so no file handle crosses a fork or a pickle.
    """

    def __init__(self, path: str | os.PathLike, require_complete: bool = True) -> None:
        self.path = Path(path)
        self.backend = detect_backend(self.path)
        backend = BACKENDS[self.backend](self.path, "r")
        try:
            info, self.fields, self.attrs = _parse_meta(self.path, backend)
            self.complete: bool = info["complete"]
            n = info["committed"]
            self.expected_keys: int | None = info.get("expected_keys")
            self.finish_with: str | None = info.get("finish_with")
            part = info.get("part")
            self.part: tuple[int, int] | None = (part["index"], part["count"]) if part else None
            if require_complete and not self.complete:
                raise StoreError(not_complete_message(self.path, n, self.expected_keys, self.finish_with))
            rows = _committed_rows(self.path, backend, self.fields, n)
            self.keys: list[str] = backend.read_rows(KEYS, 0, n).tolist()
            self._offsets = {
                name: backend.read_rows(_offsets_name(name), 0, n + 1).astype(np.int64)
                for name, spec in self.fields.items()
                if spec.ragged
            }
        finally:
            backend.close()
        for offsets in self._offsets.values():
            offsets.flags.writeable = False
        self._rows = {name: rows[name] for name in self.fields}
        self._index = {key: i for i, key in enumerate(self.keys)}
        self._handle: Backend | None = None
        self._pid: int | None = None

    def _open(self) -> Backend:
        if self._handle is None or self._pid != os.getpid():
            # a handle inherited through fork is never used: h5py handles must not cross a fork
            self._handle = BACKENDS[self.backend](self.path, "r")
            self._pid = os.getpid()
        return self._handle

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handle": None, "_pid": None}

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def __repr__(self) -> str:
        return f"RaggedReader({str(self.path)!r}, backend={self.backend!r}, keys={len(self)}, complete={self.complete})"

    def _field(self, field: str, ragged: bool | None = None) -> FieldSpec:
        if field not in self.fields:
            raise KeyError(f"{self.path}: no field {field!r} (fields: {list(self.fields)})")
        spec = self.fields[field]
        if ragged is not None and spec.ragged != ragged:
            raise ValueError(f"{self.path}: field {field!r} is {'ragged' if spec.ragged else 'per-item'}")
        return spec

    def index(self, key: str) -> int:
        """Position of `key` in write order."""
        try:
            return self._index[key]
        except KeyError:
            raise KeyError(f"{self.path}: no key {key!r}") from None

    def length(self, key: str, field: str) -> int:
        """Rows of ragged `field` for `key`."""
        self._field(field, ragged=True)
        i = self.index(key)
        return int(self._offsets[field][i + 1] - self._offsets[field][i])

    def n_rows(self, field: str) -> int:
        """Committed rows of a field: ΣT of a ragged one, N of a per-item one."""
        self._field(field)
        return self._rows[field]

    def offsets(self, field: str) -> np.ndarray:
        """The (N+1,) read-only offsets of ragged `field`: key i has rows offsets[i]:offsets[i+1]."""
        self._field(field, ragged=True)
        return self._offsets[field]

    def read(self, key: str, field: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        """Rows [start:stop) of the key's rows (slice semantics) of a ragged field; the row of a per-item one."""
        spec = self._field(field)
        i = self.index(key)
        if not spec.ragged:
            if start is not None or stop is not None:
                raise ValueError(f"{self.path}: field {field!r} is per-item; it has no rows to slice")
            return self._open().read_rows(field, i, i + 1)[0, ...]  # an ndarray even for () rows
        first, end = int(self._offsets[field][i]), int(self._offsets[field][i + 1])
        a, b, _ = slice(start, stop).indices(end - first)
        return self._read_block(spec, first + a, first + b)

    def read_rows(self, field: str, start: int, stop: int) -> np.ndarray:
        """Global rows [start:stop) of a field (slice semantics, clipped to the committed rows)."""
        spec = self._field(field)
        a, b, _ = slice(start, stop).indices(self._rows[field])
        return self._read_block(spec, a, b)

    def _read_block(self, spec: FieldSpec, start: int, stop: int) -> np.ndarray:
        if stop <= start:  # empty items never touch the disk
            return np.empty((0, *spec.row_shape), dtype=spec.dtype)
        return self._open().read_rows(spec.name, start, stop)

    def close(self) -> None:
        """Close this process's handle; a later read opens a new one."""
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle = self._pid = None

    def __enter__(self) -> RaggedReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def create_store(
    path: str | os.PathLike,
    fields: list[FieldSpec],
    attrs: dict[str, Any],
    backend: str = "zarr",
    overwrite: bool = False,
    part: tuple[int, int] | None = None,
) -> RaggedWriter:
    """Create an empty store and return its writer; an existing store is replaced only with overwrite=True.

    `part=(index, count)` makes it part `index` of a store sharded into `count` parts (`cache/parts.py`).
    """
    path = Path(path)
    if backend not in BACKENDS:
        raise ValueError(f"{path}: unknown backend {backend!r} (choose from {sorted(BACKENDS)})")
    if part is not None and not 0 <= part[0] < part[1]:
        raise ValueError(f"{path}: part index {part[0]} is not in [0, {part[1]})")
    names = [spec.name for spec in fields]
    if not fields or len(set(names)) != len(names):
        raise ValueError(f"{path}: fields must be a non-empty list of distinct names, got {names}")
    _check_attrs(path, attrs)
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise StoreError(f"{path}: already exists; pass overwrite=True to replace it")
    if path.exists() or path.is_symlink():
        try:
            detect_backend(path)
        except StoreError:
            raise StoreError(f"{path}: exists and is not an avl store; refusing to replace it") from None
    # built beside its final place and renamed into it, so a killed create leaves no half-made store
    # in the way of the next attempt (only this staging copy, which that attempt removes)
    staging = path.with_name(f".{path.name}.creating")
    _remove(staging)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = BACKENDS[backend](staging, "w")
    try:
        handle.create_array(KEYS, "str", (), INDEX_CHUNK_ROWS)
        for spec in fields:
            handle.create_array(spec.name, spec.dtype, spec.row_shape, spec.chunk_rows)
            if spec.ragged:
                handle.create_array(_offsets_name(spec.name), "int64", (), INDEX_CHUNK_ROWS)
                handle.write_rows(_offsets_name(spec.name), 0, np.zeros(1, dtype=np.int64))
        extras = {"part": {"index": int(part[0]), "count": int(part[1])}} if part is not None else {}
        handle.write_meta(_store_meta(backend, {spec.name: spec for spec in fields}, dict(attrs), 0, False, extras))
    finally:
        handle.close()
    _remove(path)
    os.replace(staging, path)
    return open_for_append(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def array_stats(path: str | os.PathLike) -> dict[str, dict[str, int]]:
    """Every array of one store: committed rows, rows on disk (more: an interrupted flush) and bytes stored."""
    path = Path(path)
    handle = BACKENDS[detect_backend(path)](path, "r")
    try:
        info, fields, _ = _parse_meta(path, handle)
        committed = _committed_rows(path, handle, fields, info["committed"])
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
    from cache.parts import (  # parts.py builds on this module
        PartedReader,
        is_parts_directory,
    )

    if is_parts_directory(Path(path)):
        return PartedReader(path, require_complete)
    return RaggedReader(path, require_complete)
