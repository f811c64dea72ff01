"""Writer and reader of one store: keys committed whole, read by row slices from any process.

Commit protocol (`RaggedWriter.flush`): append the data rows, then the offsets and keys, and only
then write the metadata with the new committed count. The committed count is the truth: rows past
it (an interrupted flush) are never returned by a reader and are truncated by `open_for_append`.
Each commit first checks that the disk has room for it (`cache/space.py`); a full disk stops the
writer with a StoreError and leaves the committed state, from which the next writer resumes.

Reads check what they read: a chunk that fails its checksum is a StoreError naming the store, the field,
the rows and the keys they belong to (`base.DamagedChunkError`), and the committed keys must match their
recorded sha256. A raw field (`FieldSpec.layout`) is read with one pread per chunk, its checksums verified
on first touch (`cache/rawread.py`).

The store's own metadata also says how far a writing command has come and how to finish it
(`RaggedWriter.set_expected`), and which part of a rank-sharded store it is (`create_store(part=...)`;
a directory of parts opens as one store, see `cache/parts.py`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import KeysView
from pathlib import Path
from typing import Any

import numpy as np

from cache import memory_store
from cache.backends import BACKENDS, detect_backend
from cache.base import (
    INFO_EXTRAS,
    KEYS,
    Backend,
    DamagedChunkError,
    FieldSpec,
    StoreError,
    check_attrs,
    check_keys,
    committed_rows,
    describe_keys,
    keys_digest,
    not_complete_message,
    offsets_name,
    parse_meta,
    store_meta,
)
from cache.rawread import OpenMaps, RawField
from cache.space import MARGIN_BYTES, RoomGuard, commit_bytes

FLUSH_BYTES = 64 << 20
# a zarr shard (16 chunks) is one file, rewritten whole by every flush that touches it: flushing a
# shard's worth of rows at a time cut the bytes written 5x and the write time 4x (measured)
FLUSH_CHUNKS = 16


class RaggedWriter:
    """Buffers `write(key, values)` in memory and commits whole keys in `flush()` (see the module docstring)."""

    def __init__(self, path: Path, backend: Backend) -> None:
        """Open the writer on `backend`, truncating every array to the committed state."""
        self.path = path
        self._backend = backend
        info, self.fields, self.attrs = parse_meta(path, backend)
        self._committed, self._complete = info["committed"], info["complete"]
        self._extras = {name: info[name] for name in INFO_EXTRAS if name in info}
        self._rows = committed_rows(path, backend, self.fields, self._committed)
        committed_keys = backend.read_rows(KEYS, 0, self._committed).tolist()
        self._digest = check_keys(path, committed_keys, info)  # extended by each commit
        self._room = RoomGuard(path, backend.on_disk)
        with self._room.writing(MARGIN_BYTES, "resume it", self._how_to_resume()):  # truncating writes metadata
            for name, n in self._rows.items():
                backend.truncate(name, n)
        # a dict, not a list: ordered like a list, and `key in writer.keys` stays O(1) at 150k keys
        self._keys: dict[str, None] = dict.fromkeys(committed_keys)
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
        self._room.check_not_stopped()
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
        blocks = {name: np.concatenate(self._pending[name]) for name in self.fields}
        needed = commit_bytes(self._backend, self.fields, self._rows, blocks, self._pending_keys, self._meta_bytes())
        what = f"commit {n_new - n_old} more {'key' if n_new - n_old == 1 else 'keys'}"
        rows = dict(self._rows)
        digest = keys_digest(self._pending_keys, self._digest.copy())
        with self._room.writing(needed, what, self._how_to_resume()):
            for name, spec in self.fields.items():
                self._backend.write_rows(name, rows[name], blocks[name])
                rows[name] += len(blocks[name])
                if spec.ragged:
                    ends = self._rows[name] + np.cumsum([len(a) for a in self._pending[name]], dtype=np.int64)
                    self._backend.write_rows(offsets_name(name), n_old + 1, ends)
                    rows[offsets_name(name)] += len(ends)
            self._backend.write_rows(KEYS, n_old, np.array(self._pending_keys, dtype=object))
            rows[KEYS] = n_new
            # a store that gains keys is no longer complete until mark_complete() says so again
            self._write_meta(committed=n_new, complete=False, keys_sha256=digest.hexdigest())
        self._committed, self._complete, self._rows, self._digest = n_new, False, rows, digest
        self._pending_keys = []
        self._pending = {name: [] for name in self.fields}
        self._pending_rows = dict.fromkeys(self.fields, 0)
        self._pending_bytes = 0
        self._last_flush = time.monotonic()

    def flush_if_due(self, max_age_seconds: float) -> None:
        """Flush when the last flush is at least `max_age_seconds` old, so a long write commits regularly."""
        if time.monotonic() - self._last_flush >= max_age_seconds:
            self.flush()

    def _write_meta(self, committed: int, complete: bool, keys_sha256: str | None = None) -> None:
        if keys_sha256 is None:  # the digest always covers exactly the first `committed` keys
            digest = self._digest if committed == self._committed else keys_digest(list(self._keys)[:committed])
            keys_sha256 = digest.hexdigest()
        meta = store_meta(self._backend.name, self.fields, self.attrs, committed, complete, self._extras, keys_sha256)
        self._backend.write_meta(meta)

    def _update_meta(self, committed: int, complete: bool) -> None:
        """Write the metadata alone, as a commit does: refused on a full disk."""
        with self._room.writing(self._meta_bytes(), "update its metadata", self._how_to_resume()):
            self._write_meta(committed, complete)

    def _meta_bytes(self) -> int:
        return len(json.dumps(store_meta(self._backend.name, self.fields, self.attrs, self._committed, True,
                                         self._extras, self._digest.hexdigest())))

    def _how_to_resume(self) -> str:
        finish = self._extras.get("finish_with")
        command = f"run `{finish}`" if finish else "run the command that wrote it again"
        return f"{command} (it resumes from the {self._committed} keys committed)"

    def set_expected(self, expected_keys: int, finish_with: str | None = None) -> None:
        """Record how many keys this write will commit in all and the command that finishes the store.

        A reader refusing the store while it is not complete quotes both ("812 of 1000 keys committed;
        finish it with `...`").
        """
        self._extras["expected_keys"] = int(expected_keys)
        if finish_with is not None:
            self._extras["finish_with"] = finish_with
        self._update_meta(self._committed, self._complete)

    def set_attrs(self, **attrs: Any) -> None:
        """Add or replace user attributes (JSON values), written at once; buffered keys stay buffered."""
        check_attrs(self.path, attrs)
        self.attrs.update(attrs)
        self._update_meta(self._committed, self._complete)

    def mark_complete(self) -> None:
        """Flush and mark the store complete, so `open_store` accepts it."""
        self.flush()
        self._update_meta(self._committed, complete=True)
        self._complete = True

    def close(self) -> None:
        """Flush and close; does not mark the store complete. A writer a full disk stopped only closes."""
        if not self._closed:
            try:
                if not self._room.stopped:
                    self.flush()
            finally:
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
    An in-memory store exists only in its process, so a pickled reader of one carries the store along.
    """

    def __init__(self, path: str | os.PathLike, require_complete: bool = True) -> None:
        self.path = Path(path)
        self.backend = detect_backend(self.path)
        backend = BACKENDS[self.backend](self.path, "r")
        try:
            info, self.fields, self.attrs = parse_meta(self.path, backend)
            self.complete: bool = info["complete"]
            self.checksums: str | None = info.get("checksums")  # None: written without (format 1)
            n = info["committed"]
            self.expected_keys: int | None = info.get("expected_keys")
            self.finish_with: str | None = info.get("finish_with")
            part = info.get("part")
            self.part: tuple[int, int] | None = (part["index"], part["count"]) if part else None
            if require_complete and not self.complete:
                raise StoreError(not_complete_message(self.path, n, self.expected_keys, self.finish_with))
            rows = committed_rows(self.path, backend, self.fields, n)
            self.keys: list[str] = backend.read_rows(KEYS, 0, n).tolist()
            check_keys(self.path, self.keys, info)
            self._offsets = {
                name: backend.read_rows(offsets_name(name), 0, n + 1).astype(np.int64)
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
        self._raw: dict[str, RawField | None] = {}  # this process's raw-read state per field (None: library reads)
        self._files = OpenMaps()

    def _open(self) -> Backend:
        if self._handle is None or self._pid != os.getpid():
            # a handle inherited through fork is never used: h5py handles must not cross a fork
            self._handle = BACKENDS[self.backend](self.path, "r")
            self._pid = os.getpid()
            self._raw, self._files = {}, OpenMaps()  # nor are descriptors, or chunks another process verified
        return self._handle

    def _raw_field(self, field: str) -> RawField | None:
        handle = self._open()
        if field not in self._raw:
            spec = self.fields[field]
            chunks = handle.raw_chunks(field) if spec.layout == "raw" else None
            self._raw[field] = chunks and RawField(self.path, field, chunks, np.dtype(spec.dtype), spec.row_shape,
                                                  0, self._files)
        return self._raw[field]

    def __getstate__(self) -> dict[str, Any]:
        carried = memory_store.snapshot(self.path) if self.backend == "memory" else None
        return {**self.__dict__, "_handle": None, "_pid": None, "_raw": {}, "_files": None, "_carried": carried}

    def __setstate__(self, state: dict[str, Any]) -> None:
        carried = state.pop("_carried")
        if carried is not None:
            memory_store.restore(state["path"], carried)
        self.__dict__.update(state)
        self._files = OpenMaps()

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
            return self._read(field, i, i + 1)[0, ...]  # an ndarray even for () rows
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
        return self._read(spec.name, start, stop)

    def _read(self, field: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of `field` from disk; a damaged chunk among them is a StoreError naming their keys."""
        try:
            raw = self._raw_field(field)
            return raw.read(start, stop) if raw is not None else self._handle.read_rows(field, start, stop)
        except DamagedChunkError as error:
            if self.fields[field].ragged:  # key i holds rows offsets[i]:offsets[i + 1]
                first, last = np.searchsorted(self._offsets[field], [start, stop - 1], side="right") - 1
            else:
                first, last = start, stop - 1
            keys = describe_keys(self.keys[int(first) : int(last) + 1])
            raise StoreError(f"{self.path}: field {field!r}, rows {start}-{stop - 1} ({keys}): damaged data "
                             f"({error.detail}); `avl cache verify {self.path}` lists every damaged chunk; rebuild "
                             "the store with the command that wrote it (--overwrite)") from None

    def close(self) -> None:
        """Close this process's handle; a later read opens a new one."""
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
            self._files.close()
        self._handle = self._pid = None
        self._raw = {}

    def __enter__(self) -> RaggedReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
