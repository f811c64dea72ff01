"""The GPU check (`avl bench-gpu`): every CUDA path of the pipeline run once, timed, on data made in-process.

This module holds what every check shares (sizes, context, timing, recording a failure) and the training checks,
which run under torchrun (`python -m pipeline.bench.gpu_check`, WORKER_CHECKS): stage 1's teacher and stage 3's student
steps through the stages' own pieces (`training.train_epoch`, `TeacherStep` / `StudentStep`, `speed_settings`:
bf16 autocast and channels-last on CUDA), DistributedDataParallel over nccl (gloo on the CPU), one process per GPU;
then the same compiled (`--compile`). `pipeline/bench/gpu_check_local.py` has the checks that run in the calling process
(stage 2's teacher batches, GPU JPEG decoding, the loaders) and `stages/bench_gpu.py` runs them all. Each check
records ok or its error, its seconds and its throughput; timed loops stop after `steps` or the budget. On the CPU
the same checks run at tiny sizes: that is how the tests exercise the code paths.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from pipeline import distributed, runs
from pipeline.bench.data import EMBED_DIM
from pipeline.distill import build_method
from pipeline.distributed import SINGLE_PROCESS, Distributed
from pipeline.errors import UserError
from pipeline.models.spec import ModelSpec
from pipeline.models.students import build_student
from pipeline.models.teachers import build_teacher
from pipeline.steps import StudentStep, TeacherStep
from pipeline.training import adam_with_cyclic_lr, autocast_dtype, speed_settings, train_epoch


class GpuCheckError(UserError, RuntimeError):
    """The GPU check cannot run here, or some of its checks failed; the message names them."""


@dataclass(frozen=True)
class Sizes:
    """How much work each check does."""

    tiny_models: bool  # the small teacher and student variants
    face_size: int
    num_classes: int
    teacher_batch: int  # utterances per stage-1 batch, each `frames_per_utterance` frames
    frames_per_utterance: int
    student_batch: int  # crops per stage-3 batch
    crop_seconds: int
    warmup_steps: int  # untimed: compilation, cuDNN autotuning, allocator, DataLoader workers
    steps: int  # timed steps at most (the budget may stop them sooner)
    batch_frames: int  # stage 2's teacher batch
    face_utterances: int  # the synthetic face store of stage 2 and the stage-1 loader
    face_frames: int  # frames per utterance of that store
    jpeg_frames: int
    jpeg_sizes: tuple[int, ...]
    loader_utterances: int  # the synthetic spectrogram store and teacher cache of the stage-3 loader
    loader_epochs: int  # timed epochs after one warm-up epoch
    num_workers: int


SIZES = {
    # VoxCeleb1's 1,211 identification speakers, 5 s crops (the paper's), stage 1's and 2's default batches
    "full": Sizes(tiny_models=False, face_size=112, num_classes=1211, teacher_batch=32, frames_per_utterance=8,
                  student_batch=32, crop_seconds=5, warmup_steps=3, steps=40, batch_frames=512, face_utterances=256,
                  face_frames=50, jpeg_frames=512, jpeg_sizes=(64, 112, 224), loader_utterances=512, loader_epochs=2,
                  num_workers=4),
    "tiny": Sizes(tiny_models=True, face_size=32, num_classes=8, teacher_batch=2, frames_per_utterance=2,
                  student_batch=2, crop_seconds=1, warmup_steps=1, steps=2, batch_frames=16, face_utterances=6,
                  face_frames=10, jpeg_frames=4, jpeg_sizes=(32,), loader_utterances=24, loader_epochs=1,
                  num_workers=0),
}


@dataclass
class CheckContext:
    """What every check gets: its sizes, device and time budget, a scratch directory, the store backend."""

    sizes: Sizes
    device: torch.device
    budget_seconds: float
    work: Path
    store: str = "zarr"
    face_encoding: str = "jpeg"  # stage 0's default
    precision: str = "auto"
    channels_last: bool | None = None
    seed: int = 0
    job: Distributed = field(default=SINGLE_PROCESS)

    def settings(self) -> dict:
        """JSON of everything but the job, for the torchrun worker."""
        return {"sizes": asdict(self.sizes), "device": str(self.device), "budget_seconds": self.budget_seconds,
                "work": str(self.work), "store": self.store, "face_encoding": self.face_encoding,
                "precision": self.precision, "channels_last": self.channels_last, "seed": self.seed}

    @staticmethod
    def from_settings(settings: dict, device: torch.device, job: Distributed) -> CheckContext:
        sizes = Sizes(**{**settings["sizes"], "jpeg_sizes": tuple(settings["sizes"]["jpeg_sizes"])})
        return CheckContext(sizes, device, settings["budget_seconds"], Path(settings["work"]), settings["store"],
                            settings["face_encoding"], settings["precision"], settings["channels_last"],
                            settings["seed"], job)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_check(action, ctx: CheckContext) -> dict:
    """`action(ctx)`'s measurements with ok: true, or ok: false and the error; seconds either way."""
    started = time.perf_counter()
    try:
        if ctx.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(ctx.device)
        result = {"ok": True, **action(ctx)}
        if ctx.device.type == "cuda":
            result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(ctx.device) / 2**30, 2)
    except Exception as error:  # noqa: BLE001 — a failed check is a result: the others still run
        result = {"ok": False, "error": f"{type(error).__name__}: {error}"[:2000],
                  "traceback": traceback.format_exc()[-3000:]}
    result["seconds"] = round(time.perf_counter() - started, 2)
    if ctx.device.type == "cuda":
        with contextlib.suppress(Exception):  # a broken CUDA context fails the next check, with its own message
            torch.cuda.empty_cache()
    return result


def timed_loop(once, ctx: CheckContext, budget_seconds: float | None = None) -> tuple[int, float, float]:
    """`once()` warmup_steps times, then until `steps` calls or the budget; (calls timed, their seconds, warm-up
    seconds)."""
    budget = ctx.budget_seconds if budget_seconds is None else budget_seconds
    started = time.perf_counter()
    for _ in range(ctx.sizes.warmup_steps):
        once()
    sync(ctx.device)
    begun = time.perf_counter()
    calls = 0
    while _keep_going(ctx, calls < ctx.sizes.steps and (calls == 0 or time.perf_counter() - begun < budget)):
        once()
        calls += 1
    sync(ctx.device)
    return calls, time.perf_counter() - begun, begun - started


def _keep_going(ctx: CheckContext, here: bool) -> bool:
    """Whether every rank goes on: one stopping for its budget while another steps would leave DDP waiting."""
    if not ctx.job.enabled:
        return here
    return distributed.sum_over_ranks(ctx.job, {"stop": float(not here)})["stop"] == 0


def pinned(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    return tensor.pin_memory() if device.type == "cuda" else tensor


def _teacher_batches(ctx: CheckContext) -> list[tuple[torch.Tensor, ...]]:
    """Two stage-1 batches as `collate_frames` makes them: (B·k, S, S, 3) uint8 frames, a label per frame."""
    sizes, generator = ctx.sizes, torch.Generator().manual_seed(ctx.seed)
    n = sizes.teacher_batch * sizes.frames_per_utterance
    return [(pinned(torch.randint(0, 256, (n, sizes.face_size, sizes.face_size, 3), dtype=torch.uint8,
                                   generator=generator), ctx.device),
             pinned(torch.randint(0, sizes.num_classes, (n,), generator=generator), ctx.device)) for _ in range(2)]


def _student_batches(ctx: CheckContext) -> list[tuple[torch.Tensor, ...]]:
    """Two stage-3 batches as `Crops` makes them: (B, 100·crop, 257) spectrograms, labels, (B, D) targets."""
    sizes, generator = ctx.sizes, torch.Generator().manual_seed(ctx.seed)
    rows = 100 * sizes.crop_seconds
    return [(pinned(torch.randn((sizes.student_batch, rows, 257), generator=generator), ctx.device),
             pinned(torch.randint(0, sizes.num_classes, (sizes.student_batch,), generator=generator), ctx.device),
             pinned(torch.randn((sizes.student_batch, EMBED_DIM), generator=generator), ctx.device))
            for _ in range(2)]


def _ddp(step: torch.nn.Module, job: Distributed, device: torch.device, find_unused: bool) -> torch.nn.Module:
    """DistributedDataParallel as the stages wrap it, a world of one included: the stages skip DDP in one process,
    so on one GPU only this reaches nccl."""
    if job.enabled:
        return distributed.wrap(step, job, device, find_unused)
    device_ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(step, device_ids=device_ids, find_unused_parameters=find_unused)


def train_steps(ctx: CheckContext, stage: int, compiled: bool) -> dict:
    """Training steps of stage 1 (teacher) or 3 (student) as the stage builds them, through `train_epoch`."""
    sizes, device = ctx.sizes, ctx.device
    if stage == 1:
        model = build_teacher(ModelSpec("resnet34", sizes.tiny_models, sizes.num_classes, EMBED_DIM)).to(device)
        step, trained_module, batches, find_unused = TeacherStep(model, False), model, _teacher_batches(ctx), False
        items, unit = sizes.teacher_batch * sizes.frames_per_utterance, "frames"
    else:
        model = build_student(ModelSpec("resnet", sizes.tiny_models, sizes.num_classes, EMBED_DIM)).to(device)
        method = build_method("proposed", "non-sequential", "mse", 1.0, EMBED_DIM).to(device)
        step = StudentStep(model, method, 0.4)
        trained_module, batches, find_unused = step, _student_batches(ctx), any(True for _ in method.parameters())
        items, unit = sizes.student_batch, "crops"
    trained = _ddp(speed_settings(step, device, ctx.channels_last, compiled), ctx.job, device, find_unused)
    optimiser, scheduler = adam_with_cyclic_lr(trained_module, 1e-4, 1e-3, sizes.steps, 4.0)
    dtype = autocast_dtype(ctx.precision, device)
    losses, calls = [], [0]

    def once() -> None:
        sums = train_epoch(trained, [batches[calls[0] % len(batches)]], optimiser, scheduler, device, dtype)
        losses.append(sums["loss"] / sums["seen"])
        calls[0] += 1

    n, seconds, warmup = timed_loop(once, ctx)
    if not np.isfinite(losses).all():
        raise FloatingPointError(f"stage {stage}: non-finite training loss {losses}")
    return {"steps_per_second": round(n / seconds, 2), f"{unit}_per_second_per_process": round(n * items / seconds, 1),
            f"{unit}_per_second": round(n * items * ctx.job.world_size / seconds, 1), "steps_timed": n,
            "warmup_seconds": round(warmup, 2), f"{unit}_per_step": items, "last_loss": round(losses[-1], 4),
            "processes": ctx.job.world_size, "backend": str(dist.get_backend()) if dist.is_initialized() else None,
            "precision": str(dtype).removeprefix("torch.") if dtype else "float32",
            "channels_last": ctx.channels_last if ctx.channels_last is not None else device.type == "cuda",
            "compiled": compiled, "parameters": sum(p.numel() for p in model.parameters())}


# run under torchrun by `worker_command`, in this order
WORKER_CHECKS = {
    "stage1-steps": partial(train_steps, stage=1, compiled=False),
    "stage3-steps": partial(train_steps, stage=3, compiled=False),
    "stage1-steps-compiled": partial(train_steps, stage=1, compiled=True),
    "stage3-steps-compiled": partial(train_steps, stage=3, compiled=True),
}


def worker_command(processes: int, settings: dict, checks: list[str], out: Path) -> list[str]:
    """torchrun running `checks` of WORKER_CHECKS in `processes` processes; rank 0 writes results to `out`."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
            "-m", "pipeline.bench.gpu_check", json.dumps({**settings, "checks": checks}), str(out)]


def _join(device: torch.device) -> Distributed:
    """torchrun's process group as the stages join it (`distributed.setup`), a world of one included."""
    distributed.setup(device)
    if not dist.is_initialized():  # distributed.setup joins only a world of several
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def worker_main(argv: list[str]) -> None:
    """The torchrun worker: WORKER_CHECKS named in the settings; rank 0 rewrites the results file after each."""
    settings, out = json.loads(argv[0]), Path(argv[1])
    device = runs.resolve_device(settings["device"].split(":")[0] if int(os.environ.get("WORLD_SIZE", 1)) > 1
                                 else settings["device"])  # several processes: cuda → cuda:LOCAL_RANK
    job = _join(device)
    ctx = CheckContext.from_settings(settings, device, job)
    results = {}
    for name in settings["checks"]:
        if job.is_main:
            print(f"bench-gpu: {name} ({job.world_size} process(es), {dist.get_backend()})", file=sys.stderr,
                  flush=True)
        results[name] = run_check(WORKER_CHECKS[name], ctx)
        if job.is_main:
            runs.write_json(out, results)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    worker_main(sys.argv[1:])
