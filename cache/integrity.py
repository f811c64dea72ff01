"""The scan behind `avl cache verify`: every chunk of every array of a store read, each damaged one a finding.

Reading a chunk checks it (zarr's crc32c, HDF5's Fletcher-32; see the backends), so the scan reads
every committed row, in blocks of whole chunks; a block that fails is read again chunk by chunk, so
that each damaged chunk is named (array, chunk index, rows, the keys those rows belong to) and the
sound chunks beside it are still read. Nothing here stops at the first damaged chunk.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cache.backends import BACKENDS, detect_backend
from cache.base import KEYS, Backend, DamagedChunkError, FieldSpec, check_keys, describe_keys, offsets_name, parse_meta

SCAN_BLOCK_BYTES = 32 << 20  # rows are read in blocks of about this size, never an array whole

# sees each sound block of a field: (field, first row, rows)
BlockVisitor = Callable[[str, int, np.ndarray], None]


@dataclass(frozen=True)
class DamagedChunk:
    """One chunk of one array that failed its checksum or its decoding."""

    array: str
    index: int
    start: int
    stop: int
    detail: str


def scan_array(backend: Backend, name: str, n_rows: int, row_bytes: int) -> Iterator[tuple[int, np.ndarray | DamagedChunk]]:
    """(first row, rows) for every block of rows [0, n_rows), or (first row, DamagedChunk) for each damaged chunk."""
    chunk = backend.chunk_rows(name)
    block = max(chunk, SCAN_BLOCK_BYTES // max(1, row_bytes) // chunk * chunk)
    for start in range(0, n_rows, block):
        stop = min(start + block, n_rows)
        try:
            yield start, backend.read_rows(name, start, stop)
            continue
        except DamagedChunkError:
            pass
        for first in range(start, stop, chunk):
            last = min(first + chunk, stop)
            try:
                rows = backend.read_rows(name, first, last)
            except DamagedChunkError as error:
                yield first, DamagedChunk(name, first // chunk, first, last, error.detail)
            else:
                yield first, rows


def scan_store(path: str | os.PathLike, visit: BlockVisitor | None = None) -> list[str]:
    """A finding for each damaged chunk of the store at `path` (one store, not a directory of parts), and for keys
    that do not match their recorded sha256; `visit` sees every sound block of every field."""
    path = Path(path)
    backend = BACKENDS[detect_backend(path)](path, "r")
    try:
        info, fields, _ = parse_meta(path, backend)
        n = info["committed"]
        keys = _sound_rows(backend, KEYS, n)
        offsets = {name: _sound_rows(backend, offsets_name(name), n + 1) for name, spec in fields.items() if spec.ragged}
        findings = []
        if keys is not None:
            try:
                check_keys(path, keys.tolist(), info)
            except DamagedChunkError as error:
                findings.append(f"{path.name}: array 'keys': {error.detail}")
        for array, n_rows, row_bytes in _arrays(backend, fields, n, offsets):
            for start, block in scan_array(backend, array, n_rows, row_bytes):
                if isinstance(block, DamagedChunk):
                    whose = _whose(block, fields, keys, offsets)
                    findings.append(f"{path.name}: {_array_name(array)}, chunk {block.index} (rows {block.start}-"
                                    f"{block.stop - 1}, {whose}): damaged ({block.detail})")
                elif visit is not None and array in fields:
                    visit(array, start, block)
        return findings
    finally:
        backend.close()


def _sound_rows(backend: Backend, name: str, n_rows: int) -> np.ndarray | None:
    """Rows [0, n_rows) of an index array, or None when a chunk of them is damaged (the scan names it)."""
    try:
        return backend.read_rows(name, 0, n_rows)
    except DamagedChunkError:
        return None


def _arrays(backend: Backend, fields: dict[str, FieldSpec], n: int,
            offsets: dict[str, np.ndarray | None]) -> list[tuple[str, int, int]]:
    """(array, committed rows, bytes per row) of every array; a field whose offsets are damaged: the rows on disk."""
    arrays = [(KEYS, n, 64)]
    for name, spec in fields.items():
        row_bytes = int(np.prod(spec.row_shape, dtype=np.int64)) * np.dtype(spec.dtype).itemsize
        if spec.ragged:
            arrays.append((offsets_name(name), n + 1, 8))
            ends = offsets[name]
            arrays.append((name, int(ends[-1]) if ends is not None else backend.length(name), row_bytes))
        else:
            arrays.append((name, n, row_bytes))
    return arrays


def _whose(damage: DamagedChunk, fields: dict[str, FieldSpec], keys: np.ndarray | None,
           offsets: dict[str, np.ndarray | None]) -> str:
    """The keys whose rows a damaged chunk holds, by name when the keys are sound, else by position."""
    first, last = damage.start, damage.stop - 1
    if damage.array == KEYS:
        return f"the names of keys #{first}-#{last}"
    if damage.array.startswith("offsets/"):
        first, last = max(first - 1, 0), last  # entry i ends key i - 1 and starts key i
    elif fields[damage.array].ragged:
        ends = offsets[damage.array]
        if ends is None:
            return "keys unknown: their offsets are damaged too"
        first, last = (int(i) for i in np.searchsorted(ends, [first, last], side="right") - 1)
    if keys is None:
        return f"keys #{first}-#{last}"
    return describe_keys(keys[first : last + 1].tolist())


def _array_name(array: str) -> str:
    if array == KEYS:
        return "array 'keys'"
    if array.startswith("offsets/"):
        return f"offsets of field {array.removeprefix('offsets/')!r}"
    return f"field {array!r}"
