"""`avl bench-gpu`: every CUDA path of the pipeline run once in one command, timed; prints one JSON object.

Stage 1 and 3 training steps under torchrun and DistributedDataParallel over nccl with bf16 autocast and
channels-last, the same compiled, stage 2's teacher batches and the stage itself with the full ResNet34 teacher,
batched GPU JPEG decoding of face crops (the codec, and the face store's reader decoding on the GPU), and stages 1
and 3's loaders from the stores to the GPU (`pipeline/bench/gpu_check.py` and `pipeline/bench/gpu_check_local.py` have the
checks). Everything it reads is made in-process: no corpus, no PyAV. Each check records ok or its error, its seconds
and its throughput; any failure makes the command exit non-zero after the JSON is printed. `--timeout-seconds`
(450 by default) bounds the run, so that it ends within 8 minutes on one GPU.

`--device cpu` runs the same checks with gloo at tiny sizes (a test of the code paths, not of speed). Without the
`avl` command (no typer): `python -m stages.bench_gpu [settings.toml]`.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from cache.backends import DISK_BACKENDS
from pipeline import config as config_io
from pipeline import runs
from pipeline.bench import gpu_check
from pipeline.errors import UserError
from pipeline.face_store import FACE_ENCODINGS
from pipeline.bench.gpu_check import SIZES, WORKER_CHECKS, CheckContext, GpuCheckError, run_check
from pipeline.bench.gpu_check_local import LOCAL_CHECKS, face_run, full_teacher_checkpoint
from pipeline.training import PRECISIONS
from stages import export_embeddings


def stage2_export(ctx: CheckContext) -> dict:
    """`avl stage export-embeddings` itself with the full teacher over a synthetic face store: frames/s end to end
    and the shares of reading, the teacher and writing."""
    started = time.perf_counter()
    run_dir, teacher = face_run(ctx), full_teacher_checkpoint(ctx)
    data_seconds = time.perf_counter() - started
    cache = export_embeddings.run(config_io.build(export_embeddings.ExportConfig, {
        "run_dir": run_dir, "teacher": teacher, "store": ctx.store,
        "batch_frames": ctx.sizes.batch_frames, "num_workers": ctx.sizes.num_workers, "device": str(ctx.device),
        "splits": ["train"], "overwrite": True}))
    stats = runs.read_json(cache.parent / f"{cache.name}.export.json")
    teacher_seconds = stats["teacher_share"] * stats["seconds"]
    return {"frames": stats["frames"], "frames_per_second": round(stats["frames_per_second"], 1),
            "teacher_frames_per_second": round(stats["frames"] / teacher_seconds, 1) if teacher_seconds else None,
            **{name: round(stats[name], 3) for name in ("read_share", "teacher_share", "write_share")},
            "face_size": ctx.sizes.face_size, "face_encoding": ctx.face_encoding,
            "batch_frames": ctx.sizes.batch_frames, "store": ctx.store,
            "data_seconds": round(data_seconds, 1)}  # writing the synthetic face store (first use) and teacher


# every check, in the order they run: the ones in this process first (bounded by their budgets), then torchrun's
CHECKS = {"stage2-forward": LOCAL_CHECKS["stage2-forward"], "stage2-export": stage2_export,
          **{name: action for name, action in LOCAL_CHECKS.items() if name != "stage2-forward"}, **WORKER_CHECKS}


@dataclass(frozen=True)
class BenchGpuConfig:
    """GPU check settings."""

    device: str = field(default="cuda", metadata={
        "help": "cuda, cuda:N, or cpu: the same checks with gloo (a test of the code paths, not of speed)."})
    sizes: str = field(default="auto", metadata={
        "help": "Work per check: full (the paper's models and sizes), tiny, or auto: full on CUDA, tiny on the CPU.",
        "choices": ("auto", *SIZES)})
    face_size: int | None = field(default=None, metadata={
        "help": "Face crop side in pixels (default: the sizes' own, 112 for full).", "min": 8})
    checks: tuple[str, ...] = field(default=tuple(CHECKS), metadata={"help": "Checks to run.", "choices": CHECKS})
    processes: int = field(default=0, metadata={
        "help": "torchrun processes of the training checks (0: one per visible GPU; 1 on the CPU).", "min": 0})
    precision: str = field(default="auto", metadata={
        "help": "Training checks: bf16 (autocast) or fp32; auto: bf16 on CUDA, fp32 on the CPU, as the stages.",
        "choices": PRECISIONS})
    channels_last: bool | None = field(default=None, metadata={
        "help": "Training checks: NHWC convolutions (default: on for CUDA, off on the CPU, as the stages)."})
    budget_seconds: float = field(default=15.0, metadata={
        "help": "Time limit of each timed loop (after its warm-up).", "above": 0})
    timeout_seconds: float = field(default=450.0, metadata={
        "help": "The torchrun part is stopped this long after the start; checks it had not finished fail.",
        "above": 0})
    store: str = field(default="zarr", metadata={"help": "Backend of the synthetic stores.", "choices": DISK_BACKENDS})
    face_encoding: str = field(default="jpeg", metadata={
        "help": "Encoding of the synthetic face store (stage 0's --face-encoding).", "choices": FACE_ENCODINGS})
    work: Path | None = field(default=None, metadata={
        "help": "Scratch directory (default: a temporary one, removed after)."})
    seed: int = field(default=0, metadata={"help": "Random seed of the synthetic data."})
    out: Path | None = field(default=None, metadata={"help": "Also write the JSON object here."})

    def validate(self) -> None:
        unknown = sorted(set(self.checks) - set(CHECKS))
        if unknown or not self.checks or len(set(self.checks)) != len(self.checks):
            raise config_io.ConfigError(f"bench-gpu: --checks must be distinct names among {list(CHECKS)}, got "
                                        f"{list(self.checks)}")
        if self.sizes not in ("auto", *SIZES):
            raise config_io.ConfigError(f"bench-gpu: --sizes must be one of {['auto', *SIZES]}, got {self.sizes!r}")
        if self.precision not in PRECISIONS:
            raise config_io.ConfigError(f"bench-gpu: --precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.store not in DISK_BACKENDS:
            raise config_io.ConfigError(f"bench-gpu: --store must be one of {DISK_BACKENDS}, got {self.store!r}")
        if self.face_encoding not in FACE_ENCODINGS:
            raise config_io.ConfigError(f"bench-gpu: --face-encoding must be one of {sorted(FACE_ENCODINGS)}, got "
                                        f"{self.face_encoding!r}")
        if self.processes > 1 and ":" in self.device:
            raise config_io.ConfigError(f"bench-gpu: --processes {self.processes} takes --device cuda (one GPU per "
                                        f"process), not {self.device}")


def resolve_device(name: str) -> torch.device:
    """The device to check; CUDA asked for where torch sees none is a GpuCheckError saying what torch sees."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GpuCheckError(f"bench-gpu: --device {name}, but torch {torch.__version__} sees no CUDA device (built for "
                            f"CUDA {torch.version.cuda or 'none'}); run it on a GPU machine, or pass --device cpu to "
                            "run the same code paths on the CPU")
    if device.type not in ("cuda", "cpu"):
        raise GpuCheckError(f"bench-gpu: --device takes cuda, cuda:N or cpu, got {name!r}")
    return runs.resolve_device(name)


def environment(device: torch.device) -> dict:
    """Versions and hardware the numbers belong to."""
    import torchvision

    info = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "cuda": torch.version.cuda, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        try:  # the numbers matter more than the labels: a library that answers otherwise costs only the labels
            properties = torch.cuda.get_device_properties(device)
            nccl = torch.cuda.nccl.version()
            info.update(gpu=properties.name, gpu_memory_gib=round(properties.total_memory / 2**30, 1),
                        gpus_visible=torch.cuda.device_count(), cudnn=torch.backends.cudnn.version(),
                        compute_capability=f"{properties.major}.{properties.minor}",
                        nccl=".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl))
        except Exception as error:  # noqa: BLE001
            info["gpu_error"] = f"{type(error).__name__}: {error}"
    return info


def run_worker(ctx: CheckContext, processes: int, names: list[str], timeout: float) -> dict:
    """The training checks under torchrun, its output passed on to stderr; each check it did not finish fails
    with why (torchrun's exit status and last lines, or the timeout), and so does `torchrun` if it failed after
    them (tearing down the process group)."""
    if timeout <= 0:
        return {name: {"ok": False, "error": "not started: --timeout-seconds ran out first", "seconds": 0.0}
                for name in names}
    out = ctx.work / "worker.json"
    out.unlink(missing_ok=True)
    root = str(Path(gpu_check.__file__).resolve().parent.parent)  # the worker imports avl even where not installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    # its own session, so a timeout stops torchrun and every worker it started
    child = subprocess.Popen(gpu_check.worker_command(processes, ctx.settings(), names, out), env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    tail = collections.deque(maxlen=30)

    def relay() -> None:
        for line in child.stdout:
            sys.stderr.write(line)
            tail.append(line.rstrip())

    relaying = threading.Thread(target=relay, daemon=True)
    relaying.start()
    try:
        child.wait(timeout=timeout)
        problem = f"torchrun exited with status {child.returncode}: " + " | ".join(list(tail)[-8:])
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGTERM)
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        problem = f"stopped: --timeout-seconds ran out ({timeout:.0f} s left for the torchrun checks)"
    relaying.join(timeout=5)
    results = runs.read_json(out) if out.exists() else {}
    checks = {name: results.get(name) or {"ok": False, "error": problem, "seconds": 0.0} for name in names}
    if child.returncode != 0 and all(name in results for name in names):
        checks["torchrun"] = {"ok": False, "error": problem, "seconds": 0.0}
    return checks


def run(cfg: BenchGpuConfig) -> dict:
    """Run the checks, print and return the JSON object; a GpuCheckError after it if any check failed."""
    began = time.perf_counter()
    device = resolve_device(cfg.device)
    sizes_name = cfg.sizes if cfg.sizes != "auto" else ("full" if device.type == "cuda" else "tiny")
    sizes = SIZES[sizes_name]
    if cfg.face_size is not None:
        sizes = replace(sizes, face_size=cfg.face_size)
    processes = cfg.processes or (torch.cuda.device_count() if device.type == "cuda" and ":" not in cfg.device else 1)
    with contextlib.redirect_stdout(sys.stderr), contextlib.ExitStack() as stack:
        work = cfg.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="avl-bench-gpu-")))
        for scratch in ("faces-run", "spectrograms-run", "teacher"):  # this command's own, rebuilt every time
            shutil.rmtree(work / scratch, ignore_errors=True)
        ctx = CheckContext(sizes, device, cfg.budget_seconds, work, cfg.store, cfg.face_encoding, cfg.precision,
                           cfg.channels_last, cfg.seed)
        checks = {}
        for name in (name for name in CHECKS if name in cfg.checks and name not in WORKER_CHECKS):
            print(f"bench-gpu: {name}", file=sys.stderr, flush=True)
            checks[name] = run_check(CHECKS[name], ctx)
        in_worker = [name for name in CHECKS if name in cfg.checks and name in WORKER_CHECKS]
        if in_worker:
            if device.type == "cuda":
                torch.cuda.empty_cache()  # the workers get the memory this process no longer uses
            checks.update(run_worker(ctx, processes, in_worker, cfg.timeout_seconds - (time.perf_counter() - began)))
    failed = [name for name, check in checks.items() if not check["ok"]]
    result = {"ok": not failed, "failed": failed, "device": str(device), "environment": environment(device),
              "sizes": {"name": sizes_name, **vars(sizes), "processes": processes,
                        "budget_seconds": cfg.budget_seconds},
              "checks": checks, "seconds": round(time.perf_counter() - began, 1)}
    print(json.dumps(result, indent=2))
    if cfg.out is not None:
        runs.write_json(cfg.out, result)
    if failed:
        raise GpuCheckError(f"bench-gpu: {len(failed)} of {len(checks)} checks failed: " + "; ".join(
            f"{name}: {checks[name]['error'][:200]}" for name in failed))
    return result


if __name__ == "__main__":  # the GPU check where the `avl` command is not installed (no typer)
    try:
        run(config_io.load(BenchGpuConfig, Path(sys.argv[1]) if len(sys.argv) > 1 else None, {}, table="bench-gpu"))
    except UserError as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        sys.exit(2)
