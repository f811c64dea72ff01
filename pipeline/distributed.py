"""torchrun support for the stages: one process per device, DistributedDataParallel, rank-0 outputs; stages 0
and 2 write one part of their stores per rank.

Launch with `torchrun --nproc_per_node N -m pipeline.cli stage train-student …` (or `avl … --nproc-per-node N`,
which re-executes itself under torchrun on this machine). On several machines, run torchrun on each with
`--nnodes M --node-rank K --master-addr HOST --master-port PORT` (the run directory on a filesystem they share).
Without torchrun's environment every helper here is the identity of a single process, so the stages have one code
path. `batch_size` is per process: N processes train on N×B utterances per step.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from tqdm import tqdm

from pipeline.config import ConfigError

DISTRIBUTED_STAGES = ("prepare", "train-teacher", "export-embeddings", "train-student")


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE_PROCESS = Distributed()


def torchrun_command(argv: list[str]) -> list[str] | None:
    """`avl stage S … --nproc-per-node N` → the torchrun command that runs `avl stage S …` in N processes."""
    for index, arg in enumerate(argv):
        if arg == "--nproc-per-node" or arg.startswith("--nproc-per-node="):
            value = arg.partition("=")[2] if "=" in arg else (argv[index + 1] if index + 1 < len(argv) else "")
            rest = argv[:index] + argv[index + (1 if "=" in arg else 2):]
            break
    else:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"--nproc-per-node takes a positive process count, got {value!r}")
    if not (len(rest) >= 2 and rest[0] == "stage" and rest[1] in DISTRIBUTED_STAGES):
        raise ConfigError(f"--nproc-per-node applies to `avl stage` {', '.join(DISTRIBUTED_STAGES)}")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={value}",
            "-m", "pipeline.cli", *rest]


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device, timeout: timedelta | None = None) -> Distributed:
    """Join the process group torchrun describes (nccl on CUDA, gloo on the CPU); a no-op in a single process.

    timeout: how long a collective (a barrier) may wait for the slowest rank (default: torch's)."""
    if not launched_by_torchrun():
        return Distributed()
    if not dist.is_initialized():
        # gloo for the CPU-side counters and objects, nccl for CUDA tensors (gradients, buffers)
        backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, **({} if timeout is None else {"timeout": timeout}))
        if dist.get_rank() == 0:  # every node has joined: say how many processes, so a multi-node launch shows it
            tqdm.write(f"torch.distributed: world size {dist.get_world_size()} ({backend}), "
                       f"{os.environ.get('LOCAL_WORLD_SIZE', '?')} process(es) on this node")
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def teardown(job: Distributed) -> None:
    if job.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def broadcast(job: Distributed, value):
    """Rank 0's `value` on every rank (any picklable object)."""
    if not job.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(job: Distributed, value) -> list:
    """Every rank's `value`, in rank order, on every rank."""
    if not job.enabled:
        return [value]
    gathered = [None] * job.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def sum_over_ranks(job: Distributed, values: dict[str, float]) -> dict[str, float]:
    """Element-wise sums of per-rank counters (loss sums, hits, items seen), in float64."""
    if not job.enabled:
        return values
    names = sorted(values)
    tensor = torch.tensor([float(values[name]) for name in names], dtype=torch.float64)
    dist.all_reduce(tensor)
    return dict(zip(names, tensor.tolist()))


def sync_buffers(module: torch.nn.Module, job: Distributed) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank: DDP broadcasts them only at the start of
    a forward, so after the last step each rank's include its own last batch. Evaluation, sharded over ranks,
    must use the statistics of the model rank 0 saves."""
    if job.enabled:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def barrier(job: Distributed) -> None:
    if job.enabled:
        dist.barrier()


def shard(items: list, job: Distributed) -> list:
    """This rank's share of an evaluation list (every `world_size`-th item); `unshard` restores the order."""
    return items[job.rank :: job.world_size]


def unshard(parts: list[list], n_items: int) -> list:
    """Interleave per-rank shards made by `shard` back into the original order."""
    merged = [None] * n_items
    for rank, part in enumerate(parts):
        merged[rank :: len(parts)] = part
    return merged


def wrap(module: torch.nn.Module, job: Distributed, device: torch.device, find_unused: bool = False) -> torch.nn.Module:
    """DistributedDataParallel around `module` when running under torchrun; the module itself otherwise.

    find_unused: some parameters may get no gradient in a step (DDP must then not wait for them)."""
    if not job.enabled:
        return module
    device_ids = [device.index if device.index is not None else job.local_rank] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=find_unused)
