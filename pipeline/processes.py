"""Processes as Linux's /proc shows them: a process tree and the memory of each process.

Kept apart from the benchmark so a measured child process can import it without importing anything else."""

from __future__ import annotations

from pathlib import Path


def read_proc(pid: int | str, name: str) -> str | None:
    """The text of /proc/PID/NAME; None once the process has gone (it may end while we look)."""
    try:
        return Path(f"/proc/{pid}/{name}").read_text()
    except OSError:
        return None


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants (DataLoader workers, torchrun's workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        stat = read_proc(entry.name, "stat")
        if stat is not None:  # the fields after the command name, which may hold spaces and ')'
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
    tree, queue = [], [root]
    while queue:
        pid = queue.pop()
        tree.append(pid)
        queue.extend(children.get(pid, []))
    return tree


def status_kb(pid: int | str, field: str) -> int:
    """A kB field of /proc/PID/status (VmRSS, VmHWM); 0 once the process has gone."""
    for line in (read_proc(pid, "status") or "").splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0
