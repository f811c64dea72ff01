"""Room on the disk for a commit: checked before anything is written, and a full disk reported in one line.

HDF5 updates its file in place and does not survive running out of space part-way through a write (the
process crashes and leaves a file that cannot be reopened), so a writer checks, before each commit,
that the disk holds the bytes it is about to write: their uncompressed size, the partly filled chunk
(HDF5) or shard (zarr) each array writes again, and a margin for the backend's own metadata. Zarr
writes each file beside its place and renames it, so a full disk met anyway leaves its committed
state intact; the writer turns that error into the same one-line message.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cache.base import KEYS, Backend, FieldSpec, StoreError, offsets_name

# the errors of a write that found no room: a full device, a full quota, a file size limit
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
# HDF5's chunk index nodes and object headers grow with each commit, in new space (the file never reuses
# space; see hdf5_store.py), and compression can grow random bytes a little
MARGIN_BYTES = 1 << 20
MARGIN_FRACTION = 0.02


@dataclass(frozen=True)
class ArrayWrite:
    """What one commit writes to one array: its rows before, the rows it adds, and how they are stored."""

    rows_before: int
    new_rows: int
    row_bytes: int
    rewritten_rows: int  # the unit written again when a write ends inside it (a chunk or a shard); 0: none

    def bytes(self) -> int:
        """An upper bound on the bytes this write takes on disk: the new rows and the partly filled unit again."""
        again = self.rows_before % self.rewritten_rows if self.rewritten_rows and self.new_rows else 0
        return (again + self.new_rows) * self.row_bytes


def commit_bytes(backend: Backend, fields: dict[str, FieldSpec], rows_before: dict[str, int],
                 blocks: dict[str, np.ndarray], keys: list[str], meta_bytes: int) -> int:
    """An upper bound on the free space a commit of `blocks` (new rows of each field) and `keys` needs: every
    array's write, the metadata twice and a margin."""
    key_bytes = max(len(key.encode()) for key in keys) + 16  # HDF5's heap adds 16 bytes to each text
    writes = [ArrayWrite(rows_before[KEYS], len(keys), key_bytes, backend.rewritten_rows(KEYS))]
    for name, spec in fields.items():
        row_bytes = int(np.prod(spec.row_shape, dtype=np.int64)) * np.dtype(spec.dtype).itemsize
        writes.append(ArrayWrite(rows_before[name], len(blocks[name]), row_bytes, backend.rewritten_rows(name)))
        if spec.ragged:
            offsets = offsets_name(name)
            writes.append(ArrayWrite(rows_before[offsets], len(keys), 8, backend.rewritten_rows(offsets)))
    data = sum(write.bytes() for write in writes)
    return int(data * (1 + MARGIN_FRACTION)) + 2 * meta_bytes + MARGIN_BYTES


def free_bytes(path: Path) -> int:
    """Free bytes on the file system that holds `path` (or, if it does not exist yet, its nearest parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def is_disk_full(error: BaseException) -> bool:
    """True for an OSError that says the disk, a quota or a file size limit has no room left."""
    return isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS


def no_room_message(path: Path, what: str, needed: int | None, free: int | None, resume: str) -> str:
    """One line: the store, what could not be written, the space needed and free, and how to go on."""
    sizes = f": about {_megabytes(needed)} needed, {_megabytes(free)} free" if needed is not None else ""
    return f"{path}: no space left on the device to {what}{sizes}; free some space, then {resume}"


class RoomGuard:
    """Guards the writes to one store: each is refused unless the disk has room for it, and a full disk met anyway
    is one StoreError; after either, the store's writer is stopped (`stopped` says why)."""

    def __init__(self, path: Path, on_disk: bool) -> None:
        self.path, self.on_disk = path, on_disk
        self.stopped: str | None = None

    def check_not_stopped(self) -> None:
        """Raise why the writer stopped, if it did."""
        if self.stopped:
            raise StoreError(self.stopped)

    @contextmanager
    def writing(self, needed: int, what: str, resume: str) -> Iterator[None]:
        """Run the block that writes about `needed` bytes (to `what`); `resume` says how to go on after a full disk."""
        self.check_not_stopped()
        if self.on_disk and (free := free_bytes(self.path)) < needed:
            self.stopped = no_room_message(self.path, what, needed, free, resume)
            raise StoreError(self.stopped)
        try:
            yield
        except OSError as error:
            if not is_disk_full(error):
                raise
            self.stopped = no_room_message(self.path, what, None, None, resume)
            raise StoreError(self.stopped) from None


def _megabytes(n_bytes: int | None) -> str:
    return f"{n_bytes / 2**20:.1f} MB"
