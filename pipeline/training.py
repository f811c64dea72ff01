"""What every training stage shares: the config, the loader, Adam with a cyclical learning rate, the epoch
loop with its resumable state, and a readable history."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from pipeline import distributed, runs
from pipeline.datasets.registry import DATASETS
from pipeline.distributed import SINGLE_PROCESS, Distributed, broadcast, gather
from pipeline.errors import UserError

PRECISIONS = ("auto", "bf16", "fp32")


@dataclass(frozen=True)
class TrainingConfig:
    """Settings every training stage shares: where the run lives, the schedule, seed, workers, device."""

    dataset: str = field(default="voxceleb", metadata={
        "help": "Dataset adapter; also names the default run dir runs/<dataset>.", "choices": DATASETS})
    run_dir: Path | None = field(default=None, metadata={
        "help": "Run directory shared by all stages (default: runs/<dataset>)."})
    epochs: int = field(default=50, metadata={"help": "Training epochs.", "min": 1})
    batch_size: int = field(default=32, metadata={
        "help": "Utterances per batch (per process under torchrun).", "min": 1})
    lr_min: float = field(default=1e-4, metadata={"help": "Lowest learning rate of the cyclical schedule.", "above": 0})
    lr_max: float = field(default=1e-3, metadata={
        "help": "Highest learning rate of the cyclical schedule (>= --lr-min).", "above": 0})
    cycle_epochs: float = field(default=4.0, metadata={
        "help": "Epochs per learning-rate cycle (up and down).", "above": 0})
    seed: int = field(default=0, metadata={"help": "Random seed."})
    num_workers: int = field(default=2, metadata={"help": "DataLoader worker processes.", "min": 0})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N or auto."})
    precision: str = field(default="auto", metadata={
        "help": "bf16 (autocast) or fp32; auto: bf16 on CUDA, fp32 on the CPU.", "choices": PRECISIONS})
    channels_last: bool | None = field(default=None, metadata={
        "help": "NHWC convolutions (default: on for CUDA, off on the CPU)."})
    compile: bool = field(default=False, metadata={
        "help": "torch.compile the training step (the saved weights stay uncompiled)."})
    max_steps_per_epoch: int = field(default=0, metadata={
        "help": "Stop every epoch after this many batches (smoke runs, benchmarks); 0: all.", "min": 0})
    resume: bool = field(default=False, metadata={"help": "Continue an interrupted run from its last epoch."})
    overwrite: bool = field(default=False, metadata={
        "help": "Replace a finished or unfinished run of the same name."})

    @property
    def resolved_run_dir(self) -> Path:
        return self.run_dir or runs.default_run_dir(self.dataset)

    def validate_training(self, stage: str) -> None:
        from pipeline import config as config_io

        if self.precision not in PRECISIONS:
            raise config_io.ConfigError(f"{stage}: --precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.lr_min > self.lr_max:
            raise config_io.ConfigError(f"{stage}: --lr-min ({self.lr_min:g}) must not exceed --lr-max "
                                        f"({self.lr_max:g})")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a precision setting on a device (None: plain float32)."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def autocast(dtype: torch.dtype | None, device: torch.device):
    """The autocast context of `autocast_dtype`'s answer (None: a no-op context)."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def speed_settings(module: nn.Module, device: torch.device, channels_last: bool | None = None,
                   compile_forward: bool = False) -> nn.Module:
    """channels-last weights (None: on CUDA only) and an optionally compiled forward; returns `module`.

    `nn.Module.compile` compiles in place, so state_dict keys stay those of the uncompiled model.
    """
    if channels_last if channels_last is not None else device.type == "cuda":
        module.to(memory_format=torch.channels_last)
    if compile_forward:
        module.compile()
    return module


def train_epoch(step: nn.Module, loader, optimiser, scheduler, device: torch.device, dtype: torch.dtype | None,
                max_steps: int = 0, progress: str | None = None) -> dict[str, float]:
    """One pass over `loader`, whose batches are (inputs, labels, *more) and whose `step(inputs, labels, *more)`
    returns `pipeline.distill.Losses`. Returns this rank's sums: loss, cross_entropy and distance weighted by
    items, hits and items seen (the callers reduce them over ranks)."""
    sums = {"loss": 0.0, "cross_entropy": 0.0, "distance": 0.0, "hits": 0.0, "seen": 0.0}
    step.train()
    batches = tqdm(loader, desc=progress, unit="batch", leave=False, disable=progress is None)
    for index, batch in enumerate(batches):
        if max_steps and index >= max_steps:
            break
        inputs, labels, *more = (tensor.to(device, non_blocking=True) for tensor in batch)
        with autocast(dtype, device):
            losses = step(inputs, labels, *more)
        optimiser.zero_grad(set_to_none=True)
        losses.total.backward()
        optimiser.step()
        scheduler.step()
        n = len(labels)
        sums["loss"] += losses.total.item() * n
        sums["cross_entropy"] += losses.cross_entropy.item() * n
        sums["distance"] += losses.distance.item() * n
        sums["hits"] += int((losses.logits.argmax(1) == labels).sum())
        sums["seen"] += n
    return sums


def adam_with_cyclic_lr(
    model: nn.Module, lr_min: float, lr_max: float, steps_per_epoch: int, cycle_epochs: float
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.CyclicLR]:
    """Adam and torch's triangular CyclicLR, stepped once per batch (half a cycle up, half down)."""
    optimiser = torch.optim.Adam(model.parameters(), lr=lr_min)
    half_cycle = max(1, math.ceil(steps_per_epoch * cycle_epochs / 2))
    scheduler = torch.optim.lr_scheduler.CyclicLR(
        optimiser, base_lr=lr_min, max_lr=lr_max, step_size_up=half_cycle, mode="triangular", cycle_momentum=False
    )
    return optimiser, scheduler


def build_loader(dataset, cfg: TrainingConfig, job: Distributed, device: torch.device, seed: int, collate=None):
    """The training DataLoader: a seeded shuffle in one process, a DistributedSampler under torchrun.

    Workers are re-created each epoch from the returned generator, so a resumed run draws the same crops;
    each rank seeds its own, so ranks draw different crops."""
    generator = torch.Generator().manual_seed(seed + 1_000_003 * job.rank)
    # under torchrun every rank gets the same number of items (the remainder is dropped, as in one process)
    sampler = (torch.utils.data.DistributedSampler(dataset, job.world_size, job.rank, shuffle=True, seed=seed,
                                                   drop_last=len(dataset) >= job.world_size)
               if job.enabled else None)
    per_rank = len(dataset) // job.world_size if job.enabled else len(dataset)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=per_rank > cfg.batch_size,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        prefetch_factor=4 if cfg.num_workers > 0 else None,
        collate_fn=collate,
        generator=generator,
    )
    return loader, generator


def plot_history(history: list[dict], keys: tuple[str, ...], path, title: str) -> None:
    """One PNG with a panel per metric against epoch; people look at curves, not columns."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [key for key in keys if any(key in row for row in history)]
    if not present:
        return
    figure, axes = plt.subplots(1, len(present), figsize=(4 * len(present), 3), squeeze=False)
    for axis, key in zip(axes[0], present):
        rows = [row for row in history if key in row]
        axis.plot([row["epoch"] for row in rows], [row[key] for row in rows], marker="o", markersize=3)
        axis.set_xlabel("epoch")
        axis.set_title(key)
        axis.grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


LAST_CHECKPOINT = "last.pt"
# settings a resumed run may change: they decide how fast, not what, it computes
INCIDENTAL_SETTINGS = {"resume", "overwrite", "num_workers", "device", "compile", "channels_last"}
FINISHED_MARKER = "metrics.json"


def claim_output_dir(out: Path, resume: bool, overwrite: bool) -> Path | None:
    """Decide what to do with a training run directory; returns the checkpoint to resume from, if any.

    A finished run is never silently replaced and an unfinished one never silently restarted.
    """
    last = out / LAST_CHECKPOINT
    if overwrite:
        for name in (LAST_CHECKPOINT, FINISHED_MARKER):
            (out / name).unlink(missing_ok=True)
        return None
    if (out / FINISHED_MARKER).exists():
        raise TrainingStateError(
            f"{out}: holds a finished run ({FINISHED_MARKER}); pass --overwrite to replace it or --name for a new one"
        )
    if last.exists():
        if resume:
            return last
        epoch = read_training_state(last)["epoch"]
        raise TrainingStateError(
            f"{out}: holds an unfinished run (stopped after epoch {epoch}); pass --resume to continue it "
            "or --overwrite to start again"
        )
    if resume:
        raise TrainingStateError(f"{out}: nothing to resume ({LAST_CHECKPOINT} not found)")
    return None


def start_run(out: Path, cfg, resume: bool, overwrite: bool) -> Path | None:
    """Claim `out` for a training run and write its resolved config; a resume must use the same settings."""
    from pipeline import config as config_io

    out.mkdir(parents=True, exist_ok=True)
    resume_from = claim_output_dir(out, resume, overwrite)
    saved = out / "config.toml"
    if resume_from is not None and saved.exists():
        ignored = INCIDENTAL_SETTINGS
        before = {k: v for k, v in config_io.load_saved(type(cfg), saved).__dict__.items() if k not in ignored}
        now = {k: v for k, v in cfg.__dict__.items() if k not in ignored}
        changed = sorted(k for k in now if before.get(k) != now[k])
        if changed:
            raise TrainingStateError(f"{out}: cannot resume with changed settings {changed}; use the saved config.toml")
    config_io.save(cfg, saved)
    return resume_from


class TrainingStateError(UserError, RuntimeError):
    """A run directory is in a state the requested action would damage; the message says what to do."""


def read_training_state(path: Path) -> dict:
    """An epoch checkpoint (last.pt); one that torch cannot read is a TrainingStateError naming it."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 — torch raises many kinds for a damaged or foreign file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TrainingStateError(f"{path}: not a readable epoch checkpoint ({reason}); pass --overwrite to start "
                                 "the run again") from None
    if not isinstance(state, dict) or "epoch" not in state:
        raise TrainingStateError(f"{path}: not an epoch checkpoint of avl; pass --overwrite to start the run again")
    return state


def save_training_state(path: Path, model: nn.Module, optimiser, scheduler, loader_generator: torch.Generator,
                        epoch: int, history: list[dict], job: Distributed = SINGLE_PROCESS) -> None:
    """Everything an interrupted run needs to continue exactly: weights, optimiser, schedule, epoch, and
    every rank's random state (each rank draws its own crops). Called on every rank; rank 0 writes."""
    rng = gather(job, {"torch_rng": torch.get_rng_state(), "loader_rng": loader_generator.get_state()})
    if not job.is_main:
        return
    runs.save_checkpoint(
        {
            "epoch": epoch,
            "history": history,
            "model": model.state_dict(),
            "optimiser": optimiser.state_dict(),
            "scheduler": scheduler.state_dict(),
            "world_size": job.world_size,
            "torch_rng": rng[0]["torch_rng"],
            "loader_rng": rng[0]["loader_rng"],
            "rank_rng": rng,
        },
        path,
    )


def load_training_state(path: Path, model: nn.Module, optimiser, scheduler, loader_generator: torch.Generator,
                        job: Distributed = SINGLE_PROCESS) -> tuple[int, list[dict]]:
    """Restore a state saved by save_training_state; returns (last finished epoch, history so far)."""
    state = read_training_state(path)
    saved_world = state.get("world_size", 1)
    if saved_world != job.world_size:
        raise TrainingStateError(f"{path}: saved by {saved_world} process(es), resumed with {job.world_size}; "
                                 f"resume with --nproc-per-node {saved_world} (the crops each rank draws depend on it)")
    model.load_state_dict(state["model"])
    optimiser.load_state_dict(state["optimiser"])
    scheduler.load_state_dict(state["scheduler"])
    rng = state.get("rank_rng", [{"torch_rng": state["torch_rng"], "loader_rng": state["loader_rng"]}])[job.rank]
    torch.set_rng_state(rng["torch_rng"])
    loader_generator.set_state(rng["loader_rng"])
    return state["epoch"], state["history"]


def start_training(cfg: TrainingConfig, out: Path) -> tuple[torch.device, Distributed, Path | None]:
    """Resolve the device, join torchrun's group, claim `out`, seed this rank → (device, job, checkpoint to resume)."""
    device = runs.resolve_device(cfg.device)
    job = distributed.setup(device)
    resume_from = start_distributed_run(out, cfg, job)
    runs.seed_everything(cfg.seed + job.rank)  # ranks draw different items; DDP gives them rank 0's weights
    return device, job, resume_from


def start_distributed_run(out: Path, cfg, job: Distributed) -> Path | None:
    """`start_run` on rank 0; every rank gets its answer, or the same error, so none waits forever."""
    outcome, failure = None, None
    if job.is_main:
        try:
            outcome = ("ok", start_run(out, cfg, cfg.resume, cfg.overwrite))
        except Exception as error:  # noqa: BLE001 — every rank must learn of it, or they wait forever
            outcome, failure = ("error", isinstance(error, TrainingStateError), str(error)), error
    outcome = broadcast(job, outcome)
    if failure is not None:
        raise failure
    if outcome[0] == "error":
        state_error, message = outcome[1], outcome[2]
        if state_error:
            raise TrainingStateError(message)
        raise RuntimeError(f"rank 0 could not start the run: {message}")
    return outcome[1]


def fit(cfg: TrainingConfig, job: Distributed, device: torch.device, out: Path, resume_from: Path | None,
        module: nn.Module, step: nn.Module, dataset, name: str, evaluate: Callable[[], dict],
        describe: Callable[[dict], str], losses: tuple[str, ...] = ("loss",), collate=None) -> list[dict]:
    """Train `module` through `step` (its forward returning Losses, DDP-wrapped under torchrun); returns the history."""
    loader, loader_generator = build_loader(dataset, cfg, job, device, cfg.seed, collate=collate)
    steps_per_epoch = min(len(loader), cfg.max_steps_per_epoch or len(loader))
    optimiser, scheduler = adam_with_cyclic_lr(module, cfg.lr_min, cfg.lr_max, steps_per_epoch, cfg.cycle_epochs)
    dtype = autocast_dtype(cfg.precision, device)
    history, first_epoch = [], 1
    if resume_from is not None:
        finished_epoch, history = load_training_state(resume_from, module, optimiser, scheduler, loader_generator, job)
        first_epoch = finished_epoch + 1
        if job.is_main:
            tqdm.write(f"{out}: resuming after epoch {finished_epoch}")
    for epoch in range(first_epoch, cfg.epochs + 1):
        epoch_started = time.perf_counter()
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        sums = train_epoch(step, loader, optimiser, scheduler, device, dtype, cfg.max_steps_per_epoch,
                           f"{name} epoch {epoch}/{cfg.epochs}" if job.is_main else None)
        sums = distributed.sum_over_ranks(job, sums)  # every rank's batches count once
        seen = max(sums["seen"], 1.0)
        # per item: the means of `losses` and the train accuracy, then `evaluate()`'s entries
        row = {"epoch": epoch, **{key: sums[key] / seen for key in losses}, "train_accuracy": sums["hits"] / seen}
        distributed.sync_buffers(module, job)  # evaluate (and save) rank 0's BatchNorm statistics everywhere
        row.update(evaluate())
        row["seconds"] = time.perf_counter() - epoch_started
        history.append(row)
        save_training_state(out / LAST_CHECKPOINT, module, optimiser, scheduler, loader_generator, epoch, history, job)
        if job.is_main:
            tqdm.write(describe(row))
    return history


def finish_run(out: Path, metrics: dict, plotted: tuple[str, ...], title: str) -> None:
    """Mark a training run finished (rank 0): its metrics, its curves, and no epoch checkpoint left over."""
    runs.write_json(out / FINISHED_MARKER, metrics)
    (out / LAST_CHECKPOINT).unlink()  # the run is finished: its weights live in the final checkpoint
    plot_history(metrics["history"], plotted, out / "history.png", title)
