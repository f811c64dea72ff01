"""What `avl cache info` shows and what `avl cache verify` checks, for a store or a directory of parts."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cache.backends import part_paths
from cache.base import DamagedChunkError, StoreError, not_complete_message
from cache.integrity import scan_store
from cache.layers import LAYER_KINDS, cached_layers, layer_field
from cache.parts import PartedReader, is_parts_directory
from cache.ragged import RaggedReader
from cache.schema import TeacherCacheSpec, coverage_problems
from cache.store import array_stats, open_store
from cache.zarr_store import partial_files


def disk_usage(path: str | os.PathLike) -> tuple[int, int]:
    """(bytes, files) under `path`: a store directory, a directory of parts, or one file."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size, 1
    sizes = [p.stat().st_size for p in path.rglob("*") if p.is_file()]
    return sum(sizes), len(sizes)


def _parts(reader: RaggedReader | PartedReader) -> list[RaggedReader]:
    return reader.parts if isinstance(reader, PartedReader) else [reader]


def _not_complete_reason(reader: RaggedReader | PartedReader) -> str | None:
    if reader.complete:
        return None
    if isinstance(reader, PartedReader):
        return reader.not_complete_reason
    return not_complete_message(reader.path, len(reader), reader.expected_keys, reader.finish_with)


def store_info(path: str | os.PathLike) -> dict[str, Any]:
    """Counts, fields (kind, dtype, row shape, rows, chunk rows, bytes), attributes and size on disk."""
    reader = open_store(path, require_complete=False)
    parts = _parts(reader)
    stats = [array_stats(part.path) for part in parts]
    total_bytes, n_files = disk_usage(path)
    fields = []
    for name, spec in reader.fields.items():
        stored = sum(s[name]["bytes"] + s.get(f"offsets/{name}", {"bytes": 0})["bytes"] for s in stats)
        fields.append({
            "name": name,
            "kind": "ragged" if spec.ragged else "per-item",
            "dtype": spec.dtype,
            "row_shape": list(spec.row_shape),
            "rows": sum(s[name]["rows"] for s in stats),
            "chunk_rows": spec.chunk_rows,
            "layout": spec.layout,
            "bytes": stored,
        })
    uncommitted = {
        f"{part.path.name}:{array}" if len(parts) > 1 else array: s["rows_on_disk"] - s["rows"]
        for part, part_stats in zip(parts, stats)
        for array, s in part_stats.items()
        if s["rows_on_disk"] != s["rows"]
    }
    info = {
        "path": str(reader.path),
        "backend": reader.backend,
        "checksums": reader.checksums,
        "complete": reader.complete,
        "not_complete": _not_complete_reason(reader),
        "keys": len(reader),
        "expected_keys": reader.expected_keys,
        "parts": [{"path": str(part.path), "part": list(part.part) if part.part else None, "keys": len(part),
                   "complete": part.complete} for part in parts] if isinstance(reader, PartedReader) else None,
        "fields": fields,
        # a teacher cache's inner layers (export-embeddings --layers): module name, dimension, its fields
        "layers": [{"layer": layer, "dim": dim, "fields": [layer_field(layer, kind) for kind in LAYER_KINDS]}
                   for layer, dim in cached_layers(reader).items()],
        "attrs": reader.attrs,
        "bytes_on_disk": total_bytes,
        "files": n_files,
        "uncommitted_rows": uncommitted,
        "partial_files": sum(len(partial_files(part.path)) for part in parts if part.backend == "zarr"),
    }
    reader.close()
    return info


class _NonFiniteRows:
    """Counts the rows holding NaN or Inf of each float field, and the first of them, as the scan reads blocks."""

    def __init__(self, fields: Mapping) -> None:
        self.found: dict[str, tuple[int, int]] = {}  # field -> (rows, first row)
        self._float = {name for name, spec in fields.items() if np.dtype(spec.dtype).kind in "fc"}

    def __call__(self, field: str, start: int, rows: np.ndarray) -> None:
        if field not in self._float:
            return
        finite = np.isfinite(rows.reshape(len(rows), -1)).all(axis=1)
        if not finite.all():
            bad, first = self.found.get(field, (0, start + int(np.argmin(finite))))
            self.found[field] = (bad + int((~finite).sum()), first)


def _structure_problems(part: RaggedReader) -> list[str]:
    """Offsets, row counts, damaged chunks and finite values of one store (one part)."""
    problems = []
    name = part.path.name
    n = len(part)
    for array, s in array_stats(part.path).items():
        # the committed rows of a ragged field are where its offsets end, of the others the key count
        if s["rows_on_disk"] != s["rows"]:
            spec = part.fields.get(array)
            what = (f"offsets of {array!r} end at row {s['rows']}" if spec is not None and spec.ragged
                    else f"{s['rows']} keys are committed")
            problems.append(f"{name}: {what}, but array {array!r} holds {s['rows_on_disk']} rows "
                            "(an interrupted write; resuming the writer drops the rest)")
    for field, spec in part.fields.items():
        if spec.ragged:
            offsets = part.offsets(field)
            if len(offsets) != n + 1 or offsets[0] != 0:
                problems.append(f"{name}: offsets of {field!r} do not start at 0 with {n + 1} entries")
            elif np.any(np.diff(offsets) < 0):
                at = int(np.argmax(np.diff(offsets) < 0))
                problems.append(f"{name}: offsets of {field!r} decrease at key {part.keys[at]!r}")
    non_finite = _NonFiniteRows(part.fields)
    problems += scan_store(part.path, non_finite)
    for field, (bad, first) in non_finite.found.items():
        spec = part.fields[field]
        index = int(np.searchsorted(part.offsets(field), first, side="right") - 1) if spec.ragged else first
        problems.append(f"{name}: field {field!r} has {bad} rows with NaN or Inf, the first in key "
                        f"{part.keys[index]!r}")
    return problems


def _damage_of_unopened(path: Path, error: StoreError) -> list[str]:
    """Why a store did not open, and, when damage stopped it, every damaged chunk of it (or of its parts)."""
    findings = []
    for store in part_paths(path) if is_parts_directory(path) else [path]:
        try:
            findings += scan_store(store)
        except StoreError:
            continue  # this one's own error is `error`, or another part's
    return findings if findings and isinstance(error, DamagedChunkError) else [str(error)] + findings


def verify_store(
    path: str | os.PathLike, manifest: Mapping[str, str] | None = None, expected: TeacherCacheSpec | None = None
) -> list[str]:
    """Every problem found (an empty list: the store is sound): completeness, unique keys, offsets, row counts,
    NaN/Inf, coverage of a manifest (key → split; of the splits a teacher cache records as exported, and none
    of the others), and the attributes `expected` sets (a manifest hash, a teacher fingerprint)."""
    try:
        reader = open_store(path, require_complete=False)
    except StoreError as error:
        return _damage_of_unopened(Path(path), error)
    problems = []
    if not reader.complete:
        problems.append(_not_complete_reason(reader))
    duplicates = [key for key, count in Counter(reader.keys).items() if count > 1]
    if duplicates:
        problems.append(f"{len(duplicates)} keys are stored more than once, e.g. {duplicates[:3]}")
    for part in _parts(reader):
        try:
            problems += _structure_problems(part)
        except StoreError as error:
            problems.append(str(error))
    if manifest is not None:
        problems += coverage_problems(reader, manifest)
    if expected is not None:
        problems += expected.problems(reader)
    reader.close()
    return problems


def _size(n_bytes: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n_bytes < 1024 or unit == "GB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    raise AssertionError


def format_info(info: dict[str, Any]) -> str:
    """`store_info` as a readable table."""
    expected = f" of {info['expected_keys']} expected" if info["expected_keys"] is not None else ""
    lines = [
        f"store     {info['path']}",
        f"backend   {info['backend']}",
        f"checksums {info['checksums'] or 'none: written before format 2, damaged bytes may go unnoticed'}",
        f"complete  {'yes' if info['complete'] else 'NO'}",
        f"keys      {info['keys']}{expected}",
        f"on disk   {_size(info['bytes_on_disk'])} in {info['files']} files",
    ]
    if info["not_complete"]:
        lines += ["", info["not_complete"]]
    if info["parts"]:
        lines += ["", "part                    keys  complete"]
        lines += [f"{Path(p['path']).name:<22}{p['keys']:>6}  {'yes' if p['complete'] else 'NO'}" for p in info["parts"]]
    header = ("field", "kind", "dtype", "row shape", "rows", "chunk rows", "layout", "on disk")
    rows = [(f["name"], f["kind"], f["dtype"], str(tuple(f["row_shape"])), str(f["rows"]), str(f["chunk_rows"]),
             f["layout"], _size(f["bytes"])) for f in info["fields"]]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines += ["", "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    if info.get("layers"):
        lines += ["", "teacher layers (each: per frame, per segment, at the peak frame)"]
        width = max(len(layer["layer"]) for layer in info["layers"])
        lines += [f"  {layer['layer'].ljust(width)}  dim {layer['dim']:<5}  fields {', '.join(layer['fields'])}"
                  for layer in info["layers"]]
    if info["uncommitted_rows"]:
        lines += ["", "rows past the committed state (an interrupted write; the next writer drops them):"]
        lines += [f"  {array}: {rows}" for array, rows in info["uncommitted_rows"].items()]
    if info["partial_files"]:
        lines += ["", f"{info['partial_files']} temporary files of interrupted writes (the next writer removes them)"]
    lines += ["", "attributes"]
    width = max((len(name) for name in info["attrs"]), default=0)
    for name, value in info["attrs"].items():
        text = repr(value)
        lines.append(f"  {name.ljust(width)}  {text if len(text) <= 100 else text[:97] + '...'}")
    return "\n".join(lines)
