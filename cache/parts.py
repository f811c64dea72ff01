"""A store sharded into parts: `part-NNNNN.<zarr|h5>` files of one directory, read as one store.

Each rank of a sharded writer (stage 2 under torchrun) creates its own part with
`create_store(..., part=(rank, world_size))` in the same directory; nothing merges them. A reader
opens the directory with `open_store` and gets a `PartedReader`: keys in *part order* (every key of
part 0 in its write order, then part 1, ...), reads routed to the part that holds the key. The
parts must agree on fields and attributes, and the store is complete only when every one of the
`count` parts is present and complete.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from cache.backends import is_parts_directory, part_path, part_paths
from cache.base import FieldSpec, StoreError, not_complete_message
from cache.ragged import RaggedReader

__all__ = ["PartedReader", "is_parts_directory", "part_path", "part_paths"]


class PartedReader:
    """Read side of a directory of parts, with RaggedReader's interface; safe to pickle like it."""

    def __init__(self, path: str | os.PathLike, require_complete: bool = True) -> None:
        self.path = Path(path)
        paths = part_paths(self.path)
        if not paths:
            raise StoreError(f"{self.path}: no store parts (part-NNNNN.zarr or .h5) in this directory")
        self.parts = [RaggedReader(p, require_complete=False) for p in paths]
        self.count = self._part_count()
        present = {part.part[0] for part in self.parts}
        missing = [i for i in range(self.count) if i not in present]
        incomplete = [part for part in self.parts if not part.complete]
        self.complete = not missing and not incomplete
        # why the store is not complete and how to finish it; None when it is complete
        self.not_complete_reason = None if self.complete else self._not_complete(missing, incomplete)
        if require_complete and not self.complete:
            raise StoreError(self.not_complete_reason)
        self.fields: dict[str, FieldSpec] = self._agreed("fields")
        self.attrs: dict[str, Any] = self._agreed("attrs")
        self.backend = "+".join(sorted({part.backend for part in self.parts}))
        kinds = {part.checksums for part in self.parts}
        self.checksums = None if None in kinds else "+".join(sorted(kinds))  # one part without: not all checked
        self.expected_keys = None if missing else _sum_or_none([part.expected_keys for part in self.parts])
        self.finish_with = None
        self.part = None
        self.keys: list[str] = [key for part in self.parts for key in part.keys]
        # global position -> (part, position in that part); keys in two parts would make reads ambiguous
        self._where = {key: (p, i) for p, part in enumerate(self.parts) for i, key in enumerate(part.keys)}
        if len(self._where) != len(self.keys):
            seen: dict[str, Path] = {}
            for part in self.parts:
                for key in part.keys:
                    if key in seen:
                        raise StoreError(f"{self.path}: key {key!r} is in both {seen[key].name} and {part.path.name}")
                    seen[key] = part.path
        self._first_key = np.cumsum([0] + [len(part) for part in self.parts])
        self._first_row = {
            name: np.cumsum([0] + [part.n_rows(name) for part in self.parts]) for name in self.fields
        }
        self._rows = {name: int(starts[-1]) for name, starts in self._first_row.items()}
        self._offsets = {
            name: np.concatenate([[0]] + [part.offsets(name)[1:] + start
                                          for part, start in zip(self.parts, self._first_row[name])])
            for name, spec in self.fields.items()
            if spec.ragged
        }
        for offsets in self._offsets.values():
            offsets.flags.writeable = False

    def _part_count(self) -> int:
        counts = {}
        for part in self.parts:
            if part.part is None:
                raise StoreError(f"{part.path}: is not a part of a sharded store (no part index recorded)")
            index, count = part.part
            if part.path.name != part_path(self.path, index, part.backend).name:
                raise StoreError(f"{part.path}: records part index {index}, which does not match its name")
            counts.setdefault(count, []).append(part.path.name)
        if len(counts) > 1:
            described = "; ".join(f"{names} say {count}" for count, names in sorted(counts.items()))
            raise StoreError(f"{self.path}: parts disagree on how many parts there are: {described}")
        return next(iter(counts))

    def _not_complete(self, missing: list[int], incomplete: list[RaggedReader]) -> str:
        lines = [f"{self.path}: sharded store is not complete "
                 f"({self.count - len(missing) - len(incomplete)} of {self.count} parts complete)"]
        for index in missing:
            lines.append(f"  part {index} of {self.count} is missing: run the writer for part {index} "
                         f"(rank {index} of world size {self.count})")
        for part in incomplete:
            lines.append("  " + not_complete_message(part.path, len(part), part.expected_keys, part.finish_with))
        return "\n".join(lines)

    def _agreed(self, name: str) -> Any:
        first = getattr(self.parts[0], name)
        for part in self.parts[1:]:
            other = getattr(part, name)
            if other != first:
                differ = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k))
                raise StoreError(
                    f"{self.path}: {part.path.name} and {self.parts[0].path.name} differ in {name} {differ}; "
                    "they were not written by one sharded run"
                )
        return first

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: object) -> bool:
        return key in self._where

    def __repr__(self) -> str:
        return (f"PartedReader({str(self.path)!r}, parts={len(self.parts)}/{self.count}, keys={len(self)}, "
                f"complete={self.complete})")

    def _locate(self, key: str) -> tuple[int, int]:
        try:
            return self._where[key]
        except KeyError:
            raise KeyError(f"{self.path}: no key {key!r}") from None

    def index(self, key: str) -> int:
        """Position of `key` in part order."""
        part, position = self._locate(key)
        return int(self._first_key[part]) + position

    def length(self, key: str, field: str) -> int:
        """Rows of ragged `field` for `key`."""
        part, _ = self._locate(key)
        return self.parts[part].length(key, field)

    def offsets(self, field: str) -> np.ndarray:
        """The (N+1,) read-only offsets of ragged `field` over all parts, in part order."""
        self.parts[0].offsets(field)  # raises for an unknown or per-item field, naming it
        return self._offsets[field]

    def read(self, key: str, field: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        """As RaggedReader.read, from the part that holds `key`."""
        part, _ = self._locate(key)
        return self.parts[part].read(key, field, start, stop)

    def read_rows(self, field: str, start: int, stop: int) -> np.ndarray:
        """Global rows [start:stop) of a field over all parts, in part order (slice semantics)."""
        self.parts[0].n_rows(field)  # raises for an unknown field, naming it
        spec = self.fields[field]
        a, b, _ = slice(start, stop).indices(self._rows[field])
        blocks = []
        for part, first in zip(self.parts, self._first_row[field]):
            last = first + part.n_rows(field)
            if a < last and b > first:
                blocks.append(part.read_rows(field, max(a, first) - first, min(b, last) - first))
        return np.concatenate(blocks) if blocks else np.empty((0, *spec.row_shape), dtype=spec.dtype)

    def close(self) -> None:
        """Close every part's handle in this process."""
        for part in self.parts:
            part.close()

    def __enter__(self) -> PartedReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _sum_or_none(values: list[int | None]) -> int | None:
    return None if any(v is None for v in values) else sum(values)
