"""The multi-node path run once: two torchrun launches (`--nnodes 2`, one per "node") meet on the loopback address,
and train one teacher together as a world of 2 (gloo, CPU) that checkpoints once."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import runs

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def node_command(node_rank: int, port: int, *stage: str) -> list[str]:
    """torchrun as it runs on machine `node_rank` of 2, with node 0 (here: this machine) at 127.0.0.1:port."""
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
            "--node-rank", str(node_rank), "--master-addr", "127.0.0.1", "--master-port", str(port),
            "-m", "pipeline.cli", "stage", *stage]


def test_two_nodes_train_one_teacher_on_the_loopback_address(tiny_run, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"  # "shared filesystem": both nodes see the tiny run's prepared data through it
    runs.prepare_dir(run_dir).parent.mkdir(parents=True)
    runs.prepare_dir(run_dir).symlink_to(runs.prepare_dir(tiny_run / "run").resolve())
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    port = _free_port()
    stage = ("train-teacher", "--run-dir", str(run_dir), "--tiny", "--epochs", "1", "--batch-size", "2",
             "--num-workers", "0", "--device", "cpu")
    nodes = [subprocess.Popen(node_command(rank, port, *stage), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=env) for rank in (0, 1)]
    try:
        outputs = [node.communicate(timeout=300)[0] for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    assert [node.returncode for node in nodes] == [0, 0], "\n-----\n".join(output[-3000:] for output in outputs)
    assert "torch.distributed: world size 2 (gloo), 1 process(es) on this node" in outputs[0]
    teacher = runs.teacher_dir(run_dir)
    assert runs.read_json(teacher / "metrics.json")["processes"] == 2
    assert sorted(path.name for path in teacher.glob("*.pt")) == ["teacher.pt"]  # written once, by rank 0
