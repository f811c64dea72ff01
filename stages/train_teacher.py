"""Stage 1: train a video teacher on the face-crop frame store.

Non-sequential: random frames of each utterance, CE per frame. Sequential: a random window of
`window_seconds` on the 1 s grid; each segment is represented by the mean embedding of
`frames_per_segment` random frames of it (export uses all 25), the aggregator pools the segments,
CE per window. Subsampling frames keeps a training batch at B·S·k frames instead of B·S·25.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from cache.store import open_store
from pipeline import config as config_io
from pipeline import distributed, runs
from pipeline.distill import Losses
from pipeline.distributed import SINGLE_PROCESS, Distributed
from pipeline.features import (
    SEGMENT_VIDEO_FRAMES,
    n_segments,
    random_crop,
    segment_means,
)
from pipeline.manifest import read_classes, read_manifest
from pipeline.models.teachers import (
    TEACHERS,
    TeacherSpec,
    build_teacher,
    load_initial_weights,
)
from pipeline.runs import find_store
from pipeline.training import (
    LAST_CHECKPOINT,
    TrainingConfig,
    adam_with_cyclic_lr,
    autocast_dtype,
    build_loader,
    load_training_state,
    plot_history,
    save_training_state,
    speed_settings,
    start_distributed_run,
    train_epoch,
)


@dataclass(frozen=True)
class TeacherConfig(TrainingConfig):
    """Stage 1 settings."""

    arch: str = "resnet34"
    tiny: bool = False
    embed_dim: int = 512
    batch_size: int = 32  # utterances per batch; each contributes frames_per_utterance frames
    frames_per_utterance: int = 8
    sequential: bool = False  # add the 2×BiLSTM + attention aggregator and train on windows
    window_seconds: int = 5  # sequential: training window; export caches aggregator rows of this length
    frames_per_segment: int = 4  # sequential: random frames per 1 s segment in training
    init_weights: Path | None = None

    def validate(self) -> None:
        self.validate_training("train-teacher")
        if self.arch not in TEACHERS:
            raise config_io.ConfigError(f"train-teacher: unknown arch {self.arch!r}; registered: {sorted(TEACHERS)}")
        counts = ("epochs", "batch_size", "frames_per_utterance", "window_seconds", "frames_per_segment")
        if any(getattr(self, name) < 1 for name in counts):
            raise config_io.ConfigError(f"train-teacher: {', '.join(counts)} must be >= 1")


class _RandomFrames(torch.utils.data.Dataset):
    """Item = k random face frames of one utterance (fresh draw every epoch) and its class."""

    def __init__(self, store_path: Path, keys: list[str], labels: list[int], frames_per_utterance: int):
        self.store_path, self.keys, self.labels, self.k = store_path, keys, labels, frames_per_utterance
        self.store = None  # opened lazily, once per DataLoader worker

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int):
        if self.store is None:
            self.store = open_store(self.store_path)
        key = self.keys[index]
        n_frames = self.store.length(key, "frames")
        picks = torch.randint(0, n_frames, (self.k,)).numpy()
        frames = self.store.read(key, "frames")[picks]  # (k, H, W, 3)
        if torch.rand(()) < 0.5:
            frames = frames[:, :, ::-1]  # horizontal flip
        return torch.from_numpy(np.ascontiguousarray(frames)), self.labels[index]


def _collate(items):
    frames = torch.cat([frames for frames, _ in items])  # (B·k, H, W, 3)
    labels = torch.tensor([label for _, label in items]).repeat_interleave(items[0][0].shape[0])
    return frames, labels


class _RandomWindows(_RandomFrames):
    """Item = a random window on the 1 s grid: k random frames of each of its S segments, (S, k, H, W, 3).

    Utterances shorter than the window repeat their segments (as student crops repeat-pad)."""

    def __init__(self, store_path: Path, keys: list[str], labels: list[int], window_seconds: int, frames_per_segment: int):
        super().__init__(store_path, keys, labels, frames_per_segment)
        self.window_seconds = window_seconds

    def __getitem__(self, index: int):
        if self.store is None:
            self.store = open_store(self.store_path)
        key = self.keys[index]
        n_frames = self.store.length(key, "frames")
        crop = random_crop(n_frames, self.window_seconds)
        segments = (crop.start_segment + torch.arange(crop.n_segments)) % n_segments(n_frames)  # (S,)
        first = segments * SEGMENT_VIDEO_FRAMES
        length = torch.clamp(n_frames - first, max=SEGMENT_VIDEO_FRAMES)  # a partial last segment is shorter
        picks = first[:, None] + (torch.rand(len(segments), self.k) * length[:, None]).long()  # (S, k)
        start, stop = int(picks.min()), int(picks.max()) + 1
        frames = self.store.read(key, "frames", start, stop)[(picks - start).numpy()]  # (S, k, H, W, 3)
        if torch.rand(()) < 0.5:
            frames = frames[:, :, :, ::-1]  # horizontal flip
        return torch.from_numpy(np.ascontiguousarray(frames)), self.labels[index]


def _collate_windows(items):
    return torch.stack([frames for frames, _ in items]), torch.tensor([label for _, label in items])


@torch.inference_mode()
def evaluate_teacher(model, store, keys: list[str], labels: list[int], device, batch_frames: int = 256,
                     job: Distributed = SINGLE_PROCESS) -> dict:
    """Frame accuracy and utterance accuracy: the mean of frame logits over every frame of the utterance, or
    for a sequential teacher the aggregator over all its segment means (Eq. 5, 6). Under torchrun each rank
    scores every world_size-th utterance and the counts are summed."""
    model.eval()
    counts = {"frame_hits": 0, "frames": 0, "utterance_hits": 0, "utterances": 0}
    for key, label in zip(distributed.shard(keys, job), distributed.shard(labels, job)):
        frames = torch.from_numpy(store.read(key, "frames"))
        outputs = [model(frames[i : i + batch_frames].to(device)) for i in range(0, len(frames), batch_frames)]
        logits = torch.cat([logit.float().cpu() for _, logit in outputs])
        counts["frame_hits"] += int((logits.argmax(1) == label).sum())
        counts["frames"] += len(logits)
        if model.aggregator is None:
            utterance_logits = logits.mean(0)
        else:
            embeddings = torch.cat([embedding.float().cpu() for embedding, _ in outputs]).numpy()
            segments = torch.from_numpy(segment_means(embeddings))[None].to(device)  # (1, S, D)
            utterance_logits = model.head(model.aggregate(segments))[0]
        counts["utterance_hits"] += int(utterance_logits.argmax() == label)
        counts["utterances"] += 1
    counts = distributed.sum_over_ranks(job, counts)
    return {"frame_accuracy": counts["frame_hits"] / max(counts["frames"], 1),
            "utterance_accuracy": counts["utterance_hits"] / max(counts["utterances"], 1)}


class TeacherStep(nn.Module):
    """One training step's forward: frame logits (or window logits for a sequential teacher) and the CE loss.
    The module DistributedDataParallel wraps and torch.compile compiles; `teacher` is what gets saved."""

    def __init__(self, teacher: nn.Module, sequential: bool):
        super().__init__()
        self.teacher, self.sequential = teacher, sequential

    def forward(self, frames: torch.Tensor, labels: torch.Tensor) -> Losses:
        _, logits = self.teacher.forward_window(frames) if self.sequential else self.teacher(frames)
        loss = F.cross_entropy(logits, labels)
        return Losses(loss, loss, loss.new_zeros(()), logits)


def run(cfg: TeacherConfig) -> Path:
    """Train the teacher; writes teacher.pt, metrics.json, history.png and config.toml."""
    run_dir = cfg.resolved_run_dir
    prepared = runs.prepare_dir(run_dir)
    out = runs.teacher_dir(run_dir)
    device = runs.resolve_device(cfg.device)
    job = distributed.setup(device)
    resume_from = start_distributed_run(out, cfg, job)
    runs.seed_everything(cfg.seed + job.rank)  # ranks draw different frames; DDP gives them rank 0's weights

    entries = read_manifest(prepared)
    classes = read_classes(prepared)
    class_index = {name: i for i, name in enumerate(classes)}
    by_split = {split: [e for e in entries if e.split == split] for split in ("train", "val", "test")}
    if not by_split["train"]:
        raise RuntimeError(f"{prepared}: the manifest has no training utterances")
    store_path = find_store(prepared, "faces")

    spec = TeacherSpec(cfg.arch, cfg.tiny, len(classes), cfg.embed_dim, cfg.sequential)
    model = build_teacher(spec)
    if cfg.init_weights is not None:
        state = torch.load(cfg.init_weights, map_location="cpu", weights_only=True)
        report = load_initial_weights(model, state)
        if job.is_main:
            tqdm.write(f"train-teacher: initialised {len(report['loaded'])} tensors from {cfg.init_weights} "
                       f"(missing {len(report['missing'])}, skipped {len(report['skipped'])})")
    model.to(device)

    train = by_split["train"]
    train_keys, train_labels = [e.key for e in train], [class_index[e.label] for e in train]
    if cfg.sequential:
        dataset = _RandomWindows(store_path, train_keys, train_labels, cfg.window_seconds, cfg.frames_per_segment)
    else:
        dataset = _RandomFrames(store_path, train_keys, train_labels, cfg.frames_per_utterance)
    step = speed_settings(TeacherStep(model, cfg.sequential), device, cfg.channels_last, cfg.compile)
    trained_step = distributed.wrap(step, job, device)
    loader, loader_generator = build_loader(dataset, cfg, job, device, cfg.seed,
                                            collate=_collate_windows if cfg.sequential else _collate)
    steps_per_epoch = min(len(loader), cfg.max_steps_per_epoch or len(loader))
    optimiser, scheduler = adam_with_cyclic_lr(model, cfg.lr_min, cfg.lr_max, steps_per_epoch, cfg.cycle_epochs)
    autocast = autocast_dtype(cfg.precision, device)
    store = open_store(store_path)
    val = by_split["val"] or by_split["test"]
    history, first_epoch = [], 1
    if resume_from is not None:
        finished_epoch, history = load_training_state(resume_from, model, optimiser, scheduler, loader_generator, job)
        first_epoch = finished_epoch + 1
        if job.is_main:
            tqdm.write(f"{out}: resuming after epoch {finished_epoch}")
    for epoch in range(first_epoch, cfg.epochs + 1):
        epoch_started = time.perf_counter()
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        sums = train_epoch(trained_step, loader, optimiser, scheduler, device, autocast, cfg.max_steps_per_epoch,
                           f"teacher epoch {epoch}/{cfg.epochs}" if job.is_main else None)
        sums = distributed.sum_over_ranks(job, sums)
        # per frame (or window), over every rank's batches
        row = {"epoch": epoch, "loss": sums["loss"] / max(sums["seen"], 1),
               "train_accuracy": sums["hits"] / max(sums["seen"], 1)}
        distributed.sync_buffers(model, job)  # evaluate (and save) rank 0's BatchNorm statistics everywhere
        row.update({f"val_{k}": v for k, v in evaluate_teacher(
            model, store, [e.key for e in val], [class_index[e.label] for e in val], device, job=job).items()})
        row["seconds"] = time.perf_counter() - epoch_started
        history.append(row)
        save_training_state(out / LAST_CHECKPOINT, model, optimiser, scheduler, loader_generator, epoch, history, job)
        if job.is_main:
            tqdm.write(f"teacher epoch {epoch}: loss {row['loss']:.3f}  val utterance acc {row['val_utterance_accuracy']:.3f}")

    test = by_split["test"]
    test_metrics = evaluate_teacher(model, store, [e.key for e in test], [class_index[e.label] for e in test], device,
                                    job=job)
    face_size = int(store.attrs["face_size"])
    store.close()
    if not job.is_main:
        distributed.teardown(job)
        return out
    checkpoint = runs.save_checkpoint(
        {"spec": asdict(spec), "class_names": classes, "face_size": face_size,
         "window_seconds": cfg.window_seconds if cfg.sequential else None,
         "state_dict": {k: v.cpu() for k, v in model.state_dict().items()}},
        runs.teacher_checkpoint(run_dir),
    )
    fingerprint = runs.file_sha256(checkpoint)
    metrics = {
        "teacher_fingerprint": fingerprint,
        "arch": cfg.arch,
        "tiny": cfg.tiny,
        "sequential": cfg.sequential,
        "parameters": sum(p.numel() for p in model.parameters()),
        "test": test_metrics,
        "processes": job.world_size,
        "train_seconds": sum(row["seconds"] for row in history),
        "history": history,
    }
    runs.write_json(out / "metrics.json", metrics)
    (out / LAST_CHECKPOINT).unlink()  # the run is finished: its weights live in the final checkpoint
    plot_history(history, ("loss", "train_accuracy", "val_utterance_accuracy"), out / "history.png", "teacher")
    tqdm.write(
        f"train-teacher: test utterance accuracy {test_metrics['utterance_accuracy']:.3f}, "
        f"frame accuracy {test_metrics['frame_accuracy']:.3f} → {checkpoint}"
    )
    distributed.teardown(job)
    return out
