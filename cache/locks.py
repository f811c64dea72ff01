"""One writer at a time: an exclusive OS-level lock (`fcntl.flock`) on a lock file beside what is written.

A writer holds the lock for its whole run and records in the lock file who it is (PID, host, command,
start time), so a second writer is refused at once with a message naming the holder. The kernel drops a
flock when its holder dies, however it dies, so a lock left by a killed process never blocks the next
run: its stale record is overwritten. The lock file itself is never removed (removing it would let two
processes lock two different files of the same name).

A process may take a lock it already holds again (a sweep holds a cell's lock around stage 3, which takes
it too); forked children (DataLoader workers) close their copy of the lock file, so a killed writer's
lock is released with the writer itself, not when its last worker exits.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cache.errors import UserError

LOCK_NAME = ".lock"  # the lock file of a directory a writer fills (a run directory, a student's directory)
LOCK_SUFFIX = ".lock"  # appended to a store's name for the lock file beside it
POLL_SECONDS = 0.1  # how often a waiting lock tries again


class LockedError(UserError):
    """Another process holds the lock on what this one would write; the message names it and the holder."""

    def __init__(self, target: Path, holder: dict) -> None:
        self.target, self.holder = target, holder
        super().__init__(f"{target}: another process is writing it ({describe_holder(holder)}); wait for it to "
                         "finish or stop it, then run again (a stopped or killed writer leaves no lock behind)")


def inside(directory: str | os.PathLike) -> Path:
    """The lock file of a directory that a writer fills: `<directory>/.lock`."""
    return Path(directory) / LOCK_NAME


def beside(store: str | os.PathLike) -> Path:
    """The lock file of a store (a file, or a directory replaced as a whole): `<store>.lock` next to it."""
    store = Path(store)
    return store.with_name(store.name + LOCK_SUFFIX)


def describe_holder(holder: dict) -> str:
    """'pid 123 on host h since 2025-01-01 12:00:00, `avl stage prepare ...`' (what the record holds)."""
    if not holder.get("pid"):
        return "its process has not recorded itself yet"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["started"])) if holder.get("started") else "?"
    command = f", `{holder['command']}`" if holder.get("command") else ""
    return f"pid {holder['pid']} on host {holder.get('host', '?')} since {since}{command}"


def read_holder(lock_file: str | os.PathLike) -> dict:
    """The record a lock's holder wrote ({} when there is none or it cannot be read)."""
    try:
        text = Path(lock_file).read_text()
        return json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {}


class _Held:
    """An open, flocked lock file and how many nested `hold`s of this process use it."""

    def __init__(self, descriptor: int) -> None:
        self.descriptor, self.depth = descriptor, 0


_HELD: dict[Path, _Held] = {}  # lock file (absolute) → this process's hold on it


def _close_in_child() -> None:
    # a forked child must not keep the writer's lock alive after the writer dies; closing (not unlocking,
    # which would release the parent's lock too) drops only the child's reference
    for held in _HELD.values():
        try:
            os.close(held.descriptor)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


def _record() -> str:
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else ""
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command, "started": time.time()})


def _try_lock(descriptor: int) -> bool:
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _refusal(lock_file: Path, target: Path) -> LockedError:
    """The error naming the holder; its record is read a few times, as a holder writes it just after locking."""
    for _ in range(20):
        holder = read_holder(lock_file)
        if holder.get("pid"):
            break
        time.sleep(0.01)
    return LockedError(target, holder)


@contextmanager
def hold(lock_file: str | os.PathLike, target: str | os.PathLike | None = None,
         wait_seconds: float = 0.0) -> Iterator[Path]:
    """Hold the lock `lock_file` while the block runs; refused at once with LockedError (naming `target`, by
    default the lock's directory or store) if another process holds it, unless it is freed within
    `wait_seconds`."""
    lock_file = Path(lock_file).absolute()
    target = Path(target) if target is not None else (
        lock_file.parent if lock_file.name == LOCK_NAME else lock_file.with_name(lock_file.name[: -len(LOCK_SUFFIX)]))
    held = _HELD.get(lock_file)
    if held is None:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + wait_seconds
        while not _try_lock(descriptor):
            if time.monotonic() >= deadline:
                os.close(descriptor)
                raise _refusal(lock_file, target)
            time.sleep(POLL_SECONDS)
        os.ftruncate(descriptor, 0)  # a killed holder's record is replaced
        os.pwrite(descriptor, _record().encode(), 0)
        held = _HELD[lock_file] = _Held(descriptor)
    held.depth += 1
    try:
        yield lock_file
    finally:
        held.depth -= 1
        if held.depth == 0:
            del _HELD[lock_file]
            os.ftruncate(held.descriptor, 0)  # an empty record: nobody holds it
            fcntl.flock(held.descriptor, fcntl.LOCK_UN)
            os.close(held.descriptor)


def holder_of(lock_file: str | os.PathLike) -> dict | None:
    """The record of the process holding `lock_file` now, or None when nobody holds it (tests, messages)."""
    lock_file = Path(lock_file)
    if not lock_file.exists():
        return None
    descriptor = os.open(lock_file, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _try_lock(descriptor):
            fcntl.flock(descriptor, fcntl.LOCK_UN)
            return None
        return read_holder(lock_file)
    finally:
        os.close(descriptor)


def writer_of(store: str | os.PathLike) -> str:
    """'pid … on host …' of the avl writer holding a lock on `store` (its own, or its directory's), or a plain
    'another process' when none does (a process outside avl may hold the file)."""
    store = Path(store)
    for lock_file in (beside(store), inside(store.parent)):
        holder = holder_of(lock_file)
        if holder is not None:
            return f"another process ({describe_holder(holder)})"
    return "another process"
