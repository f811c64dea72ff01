"""Well-known places inside a run directory: each stage finds the previous stage's outputs here."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from cache import locks
from cache.store import DISK_BACKENDS, SUFFIXES
from pipeline.errors import MissingInputError

R = TypeVar("R")


def default_run_dir(dataset: str) -> Path:
    return Path("runs") / dataset


def prepare_dir(run_dir: Path) -> Path:
    return run_dir / "prepare"


def teacher_dir(run_dir: Path) -> Path:
    return run_dir / "teacher"


def teacher_checkpoint(run_dir: Path) -> Path:
    return teacher_dir(run_dir) / "teacher.pt"


def embeddings_dir(run_dir: Path) -> Path:
    return run_dir / "embeddings"


def students_dir(run_dir: Path) -> Path:
    return run_dir / "students"


def write_json(path: Path, payload: dict) -> Path:
    """Write JSON atomically (temp file + rename) so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: two writers never share one
    temporary.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    os.replace(temporary, path)
    return path


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def save_checkpoint(payload: dict, path: Path) -> Path:
    """torch.save atomically, so an interrupted save never replaces a good checkpoint with half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(payload, temporary)
    os.replace(temporary, path)
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def seed_everything(seed: int) -> None:
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; anything else is passed to torch. Under torchrun 'cuda' means this
    process's device, cuda:LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and "LOCAL_RANK" in os.environ:  # torchrun: one device per process on this node
        name = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    device = torch.device(name)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    return device


def rank_and_world_size() -> tuple[int, int]:
    """This process's (rank, world size): torch.distributed's once initialised, else torchrun's RANK and
    WORLD_SIZE environment variables, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


# the file or directory suffix of a store of each backend a stage may write
STORE_SUFFIX = {backend: SUFFIXES[backend] for backend in DISK_BACKENDS}


def find_store(directory: Path, stem: str, reader: str | None = None) -> Path:
    """The store a previous stage wrote, whichever backend it used: one store, or the directory of its parts when
    stage 0 or 2 ran in parts (`open_store` reads that as one store). Missing, the error names `reader` (what
    needs it) and the command that makes it."""
    for suffix in STORE_SUFFIX.values():
        path = directory / f"{stem}{suffix}"
        if path.exists():
            return path
    needs = f", which {reader} reads" if reader else ""
    make = "`avl stage prepare --waveforms` (it adds them to a prepared run)" if stem == "waveforms" else \
        "`avl stage prepare` first"
    raise MissingInputError(f"{directory}: no {stem} store{needs}; run {make}")


def one_writer(lock_file: Callable[[Any], Path], every_rank: bool = False):
    """Decorate a stage's `run(cfg)` to hold the exclusive lock `lock_file(cfg)` (`cache/locks.py`) for its whole
    run, so a second process writing the same outputs is refused at once, naming the holder.

    Under torchrun only rank 0 takes it (the ranks write one output together; if rank 0 is refused, torchrun
    stops the others), unless `every_rank`: each rank then locks its own output (a part of a sharded store)."""
    def decorate(run: Callable[[Any], R]) -> Callable[[Any], R]:
        @functools.wraps(run)
        def locked_run(cfg) -> R:
            if not every_rank and rank_and_world_size()[0] != 0:
                return run(cfg)
            with locks.hold(lock_file(cfg)):
                return run(cfg)
        return locked_run
    return decorate
