"""The backend registry, and what is at a path: which backend wrote the store there, or a directory of parts."""

from __future__ import annotations

import os
import re
from pathlib import Path

from cache.base import Backend, StoreError
from cache.hdf5_store import Hdf5Backend
from cache.memory_store import MemoryBackend
from cache.zarr_store import ZarrBackend

BACKENDS: dict[str, type[Backend]] = {"zarr": ZarrBackend, "hdf5": Hdf5Backend, "memory": MemoryBackend}
SUFFIXES = {"zarr": ".zarr", "hdf5": ".h5", "memory": ".mem"}  # what a store of each backend is named
# the backends a stage may write: an in-memory store ends with the process that made it
DISK_BACKENDS = ("zarr", "hdf5")
PART_NAME = re.compile(r"part-(\d{5})(" + "|".join(re.escape(SUFFIXES[name]) for name in DISK_BACKENDS) + r")")


def part_path(directory: str | os.PathLike, index: int, backend: str) -> Path:
    """Where part `index` of a sharded store lives."""
    return Path(directory) / f"part-{index:05d}{SUFFIXES[backend]}"


def part_paths(directory: Path) -> list[Path]:
    """The part stores in `directory`, by part index."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if PART_NAME.fullmatch(p.name))


def is_parts_directory(path: Path) -> bool:
    """True for a directory holding store parts (and not itself a zarr store)."""
    return path.is_dir() and not (path / "zarr.json").exists() and bool(part_paths(path))


def detect_backend(path: str | os.PathLike) -> str:
    """Name of the backend that wrote the store at `path`, from what is there."""
    path = Path(path)
    for name, backend in BACKENDS.items():
        if backend.detect(path):
            return name
    if is_parts_directory(path):
        raise StoreError(f"{path}: a directory of store parts, not one store (open it with open_store)")
    problem = "nothing exists there" if not path.exists() else "neither a zarr group directory nor an HDF5 file"
    raise StoreError(f"{path}: not an avl store ({problem})")
