"""Stage 3: train an audio student from spectrogram shards and cached teacher targets (no video, no teacher).

`--method` (proposed, soft-label, multitask; pipeline/distill.py) and `--level` (non-sequential, encoder = EM,
aggregator = AGG) pick the loss, its gradient routing and the cached target each crop needs.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from cache.store import StoreError, open_store
from pipeline import config as config_io
from pipeline import distributed, runs
from pipeline import metrics as metric_fns
from pipeline.distill import LEVELS, METHODS, build_method
from pipeline.distributed import SINGLE_PROCESS, Distributed
from pipeline.features import (
    SEGMENT_SECONDS,
    SEGMENT_SPEC_FRAMES,
    SEGMENT_VIDEO_FRAMES,
    SPEC_FRAMES_PER_SECOND,
    VIDEO_FPS,
    Crop,
    random_crop,
    repeat_pad,
    segment_means,
)
from pipeline.manifest import Entry, read_classes, read_manifest, read_trials
from pipeline.models.students import STUDENTS, StudentSpec, build_student
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

TARGETS = ("crop-peak", "utterance-peak")


@dataclass(frozen=True)
class StudentConfig(TrainingConfig):
    """Stage 3 settings."""

    cache: Path | None = None  # default: the run's embeddings/<dataset>.<zarr|h5>
    arch: str = "resnet"
    tiny: bool = False
    method: str = "proposed"
    level: str = "non-sequential"  # encoder (EM, Eq. 12) and aggregator (AGG, Eq. 13) train a sequential student
    lam: float = 0.4
    distance: str = "mse"
    target: str = "crop-peak"  # non-sequential level: the peak frame inside the crop, or of the whole utterance
    temperature: float = 2.0  # soft-label baseline: T of Eq. 1
    crop_seconds: int = 5
    name: str | None = None
    expect_teacher: str | None = None  # fingerprint (or prefix) the cache must have been made by

    def validate(self) -> None:
        self.validate_training("train-student")
        if self.arch not in STUDENTS:
            raise config_io.ConfigError(f"train-student: unknown arch {self.arch!r}; registered: {sorted(STUDENTS)}")
        if self.method not in METHODS:
            raise config_io.ConfigError(f"train-student: unknown method {self.method!r}; known: {sorted(METHODS)}")
        if self.level not in LEVELS:
            raise config_io.ConfigError(f"train-student: unknown level {self.level!r}; known: {LEVELS}")
        if self.temperature <= 0:
            raise config_io.ConfigError(f"train-student: temperature must be > 0, got {self.temperature}")
        if self.target not in TARGETS:
            raise config_io.ConfigError(f"train-student: unknown target {self.target!r}; known: {TARGETS}")
        if self.distance not in ("mse", "cosine"):
            raise config_io.ConfigError(f"train-student: distance must be 'mse' or 'cosine', got {self.distance!r}")
        if not 0.0 <= self.lam <= 1.0:
            raise config_io.ConfigError(f"train-student: lambda must lie in [0, 1], got {self.lam}")
        if self.crop_seconds < 1:
            raise config_io.ConfigError("train-student: crop_seconds must be >= 1")

    @property
    def sequential(self) -> bool:
        return self.level != "non-sequential"

    @property
    def run_name(self) -> str:
        """`[arch-][level-]method-lambdaλ-seedS`; the arch and level appear when they are not the defaults."""
        if self.name:
            return self.name
        variant = [part for part, default in ((self.arch, "resnet"), (self.level, "non-sequential")) if part != default]
        return "-".join([*variant, self.method, f"lambda{self.lam:g}", f"seed{self.seed}"])


def _crop_peak(cache, key: str, crop: Crop, n_video_frames: int) -> np.ndarray:
    first, last = crop.video_range
    frame_prob = cache.read(key, "frame_prob", first, last)
    peak = first + int(frame_prob.argmax())  # Eq. 4 restricted to the frames the crop covers
    return cache.read(key, "frames", peak, peak + 1)[0]


def _crop_segments(cache, key: str, crop: Crop, n_video_frames: int) -> np.ndarray:
    """The teacher's segment means of the crop's segments, (S, D) (Eq. 6)."""
    first, stop = crop.start_segment, crop.start_segment + crop.n_segments
    if stop * SEGMENT_VIDEO_FRAMES <= n_video_frames:
        return cache.read(key, "segments", first, stop)
    # a repeat-padded crop: the frames tiled as its spectrogram rows are (4 rows per frame), then averaged
    frames = repeat_pad(cache.read(key, "frames").astype(np.float32), crop.n_segments * SEGMENT_VIDEO_FRAMES)
    return segment_means(frames)


def _window_row(field: str):
    def read(cache, key: str, crop: Crop, n_video_frames: int) -> np.ndarray:
        return cache.read(key, field, crop.start_segment, crop.start_segment + 1)[0]  # window w starts at segment w
    return read


# The cached target of a crop, by kind (what a method and level need: Method.target_kind).
TARGET_READERS = {
    "crop-peak": _crop_peak,
    "utterance-peak": lambda cache, key, crop, n_video_frames: cache.read(key, "peak"),
    "segments": _crop_segments,
    "aggregator": _window_row("aggregator"),
    "soft": lambda cache, key, crop, n_video_frames: cache.read(key, "soft"),
    "window-soft": _window_row("window_soft"),
}
TARGET_FIELDS = {"crop-peak": "frame_prob", "utterance-peak": "peak", "segments": "segments",
                 "aggregator": "aggregator", "soft": "soft", "window-soft": "window_soft"}
WINDOW_TARGETS = ("aggregator", "window-soft")  # written only by a sequential teacher, one row per window


class _Crops(torch.utils.data.Dataset):
    """Item = a random crop on the 1 s grid (repeat-padded), its class, and its cached target (TARGET_READERS).

    `spectrograms` and `cache` are store paths, opened lazily once per DataLoader worker, or objects with the
    store's `read` (the benchmark's in-memory copies).
    """

    def __init__(self, entries: list[Entry], labels: list[int], spectrograms, cache, crop_seconds: int,
                 target: str | None):
        self.entries, self.labels, self.crop_seconds, self.target = entries, labels, crop_seconds, target
        self.sources = (spectrograms, cache)
        self.spectrograms = self.cache = None

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int):
        if self.spectrograms is None:
            self.spectrograms, self.cache = (open_store(source) if isinstance(source, (str, Path)) else source
                                             for source in self.sources)
        entry = self.entries[index]
        crop = random_crop(entry.n_video_frames, self.crop_seconds)
        spectrogram = self.spectrograms.read(entry.key, "spectrogram", *crop.spec_range)
        spectrogram = repeat_pad(spectrogram, self.crop_seconds * SPEC_FRAMES_PER_SECOND).astype(np.float32)
        if self.cache is None:
            target = np.zeros(0, dtype=np.float32)
        else:
            target = TARGET_READERS[self.target](self.cache, entry.key, crop, entry.n_video_frames).astype(np.float32)
        return torch.from_numpy(spectrogram), self.labels[index], torch.from_numpy(target)


def _check_targets(path: Path, cache, target: str, crop_seconds: int, entries: list[Entry]) -> None:
    """Refuse a cache without the target this method and level read, or with windows of another length."""
    attrs = cache.attrs
    if TARGET_FIELDS[target] not in cache.fields:
        made_by = f"a {'sequential' if attrs.get('teacher_sequential') else 'non-sequential'} teacher"
        raise StoreError(f"{path}: cache has no {TARGET_FIELDS[target]!r} rows (made by {made_by}, "
                         f"{attrs.get('teacher_arch')}); this method and level read {target!r} targets, which only "
                         "a sequential teacher's cache holds: `avl stage train-teacher --sequential`, then export it")
    if target not in WINDOW_TARGETS:
        return
    if attrs.get("window_seconds") != crop_seconds:
        raise StoreError(f"{path}: cache windows are window_seconds={attrs.get('window_seconds')} s, this run's "
                         f"crops are crop_seconds={crop_seconds} s; they must match (export again with "
                         f"window_seconds={crop_seconds}, or pass --crop-seconds {attrs.get('window_seconds')})")
    crop_segments = crop_seconds // SEGMENT_SECONDS
    for entry in entries:  # one window per crop start: max(0, S_whole − crop) + 1
        expected = max(0, entry.n_video_frames // SEGMENT_VIDEO_FRAMES - crop_segments) + 1
        if cache.length(entry.key, TARGET_FIELDS[target]) != expected:
            raise StoreError(f"{path}: {entry.key!r} has {cache.length(entry.key, TARGET_FIELDS[target])} "
                             f"window rows, {crop_seconds} s crops need {expected}")


def open_checked_cache(path: Path, classes: list[str], entries: list[Entry], expect_teacher: str | None,
                       target: str = "crop-peak", crop_seconds: int = 5):
    """Open the teacher cache and refuse it, naming what differs, if it does not fit this training run."""
    cache = open_store(path)  # an incomplete store is refused with the command that finishes it
    attrs = cache.attrs
    expected = {"video_fps": VIDEO_FPS, "segment_frames": SEGMENT_VIDEO_FRAMES, "class_names": classes}
    for name, value in expected.items():
        if attrs.get(name) != value:
            raise StoreError(f"{path}: cache has {name}={attrs.get(name)!r}, this run needs {value!r}")
    if expect_teacher and not str(attrs.get("teacher_fingerprint", "")).startswith(expect_teacher):
        raise StoreError(
            f"{path}: cache was made by teacher {attrs.get('teacher_fingerprint')}, expected {expect_teacher}"
        )
    missing = [e.key for e in entries if e.key not in cache]
    if missing:
        raise StoreError(f"{path}: {len(missing)} training utterances have no cached targets, e.g. {missing[:3]}")
    _check_targets(path, cache, target, crop_seconds, entries)
    return cache


@torch.inference_mode()
def embed_utterances(model, spectrograms, keys: list[str], device, job: Distributed = SINGLE_PROCESS
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings and logits of full-length utterances (shorter than 1 s: repeat-padded to 1 s).

    Under torchrun each rank embeds every world_size-th key and all ranks get every row, in `keys` order."""
    model.eval()
    rows = []
    for key in distributed.shard(keys, job):
        spectrogram = repeat_pad(spectrograms.read(key, "spectrogram"), SEGMENT_SPEC_FRAMES)
        spectrogram = torch.from_numpy(spectrogram.astype(np.float32))[None].to(device)
        embedding, logit = model(spectrogram)
        rows.append((embedding[0].float().cpu().numpy(), logit[0].float().cpu().numpy()))
    rows = distributed.unshard(distributed.gather(job, rows), len(keys))
    if not keys:
        return np.zeros((0, model.spec.embed_dim)), np.zeros((0, model.spec.num_classes))
    return np.stack([embedding for embedding, _ in rows]), np.stack([logit for _, logit in rows])


def identification(model, spectrograms, entries: list[Entry], class_index: dict, device,
                   job: Distributed = SINGLE_PROCESS) -> dict:
    """Top-1/top-5, UA, WA, per-class recall and the confusion matrix on full-length utterances."""
    _, logits = embed_utterances(model, spectrograms, [e.key for e in entries], device, job)
    labels = np.array([class_index[e.label] for e in entries], dtype=np.int64)
    return metric_fns.classification_metrics(logits, labels, list(class_index))


def verification(model, spectrograms, trials, device, job: Distributed = SINGLE_PROCESS) -> dict | None:
    if not trials:
        return None
    keys = sorted({key for trial in trials for key in (trial.enrol, trial.test)})
    embeddings, _ = embed_utterances(model, spectrograms, keys, device, job)
    scores = metric_fns.cosine_scores(dict(zip(keys, embeddings)), [(t.enrol, t.test) for t in trials])
    labels = np.array([t.label for t in trials])
    return {"eer": metric_fns.equal_error_rate(scores, labels), "min_dcf": metric_fns.min_dcf(scores, labels),
            "trials": len(trials)}


class StudentStep(nn.Module):
    """One training step's forward: the method's losses for a batch. The student and the method's own trained
    parts (multitask's decoder, discarded at inference) are its children, so one module is what the optimiser
    trains, DistributedDataParallel wraps, torch.compile compiles and a resumed run restores."""

    def __init__(self, student: nn.Module, method: nn.Module, lam: float):
        super().__init__()
        self.student, self.method, self.lam = student, method, lam

    def forward(self, spectrogram: torch.Tensor, labels: torch.Tensor, target: torch.Tensor):
        # a run without a cache (λ = 0) batches empty targets: (B, 0)
        return self.method(self.student, spectrogram, labels, target if target.shape[-1] else None, self.lam)


def run(cfg: StudentConfig) -> Path:
    """Train the student; writes student.pt (self-contained), metrics.json, history.png, config.toml.

    Under torchrun every rank trains on its DistributedSampler share; rank 0 writes the outputs."""
    run_dir = cfg.resolved_run_dir
    prepared = runs.prepare_dir(run_dir)
    out = runs.students_dir(run_dir) / cfg.run_name
    device = runs.resolve_device(cfg.device)
    job = distributed.setup(device)
    resume_from = start_distributed_run(out, cfg, job)
    runs.seed_everything(cfg.seed + job.rank)  # ranks draw different crops; DDP gives them rank 0's weights

    entries = read_manifest(prepared)
    classes = read_classes(prepared)
    class_index = {name: i for i, name in enumerate(classes)}
    by_split = {split: [e for e in entries if e.split == split] for split in ("train", "val", "test")}
    train = by_split["train"]
    spectrogram_path = find_store(prepared, "spectrograms")
    spectrograms = open_store(spectrogram_path)

    cache_path, cache, fingerprint, embed_dim = None, None, None, 512
    target_kind = METHODS[cfg.method].target_for(cfg.level, cfg.target) if cfg.lam > 0 else None
    if cfg.lam > 0:
        cache_path = cfg.cache or find_store(runs.embeddings_dir(run_dir), cfg.dataset)
        cache = open_checked_cache(cache_path, classes, train, cfg.expect_teacher, target_kind, cfg.crop_seconds)
        fingerprint, embed_dim = cache.attrs["teacher_fingerprint"], int(cache.attrs["embed_dim"])
        cache.close()

    spec = StudentSpec(cfg.arch, cfg.tiny, len(classes), embed_dim, cfg.sequential)
    model = build_student(spec).to(device)
    method = build_method(cfg.method, cfg.level, cfg.distance, cfg.temperature, embed_dim).to(device)
    step = speed_settings(StudentStep(model, method, cfg.lam), device, cfg.channels_last, cfg.compile)
    # multitask's decoder gets no gradient at λ = 0: DDP must then look for unused parameters
    trained_step = distributed.wrap(step, job, device, find_unused=any(True for _ in method.parameters()))
    dataset = _Crops(train, [class_index[e.label] for e in train], spectrogram_path, cache_path, cfg.crop_seconds,
                     target_kind)
    loader, loader_generator = build_loader(dataset, cfg, job, device, cfg.seed)
    steps_per_epoch = min(len(loader), cfg.max_steps_per_epoch or len(loader))
    optimiser, scheduler = adam_with_cyclic_lr(step, cfg.lr_min, cfg.lr_max, steps_per_epoch, cfg.cycle_epochs)
    autocast = autocast_dtype(cfg.precision, device)
    val = by_split["val"] or by_split["test"]
    history, first_epoch = [], 1
    if resume_from is not None:
        finished_epoch, history = load_training_state(resume_from, step, optimiser, scheduler, loader_generator, job)
        first_epoch = finished_epoch + 1
        if job.is_main:
            tqdm.write(f"{out}: resuming after epoch {finished_epoch}")
    for epoch in range(first_epoch, cfg.epochs + 1):
        epoch_started = time.perf_counter()
        if loader.sampler is not None and hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        sums = train_epoch(trained_step, loader, optimiser, scheduler, device, autocast, cfg.max_steps_per_epoch,
                           f"student epoch {epoch}/{cfg.epochs}" if job.is_main else None)
        sums = distributed.sum_over_ranks(job, sums)  # every rank's batches count once
        seen = max(sums["seen"], 1.0)
        row = {"epoch": epoch, **{name: sums[name] / seen for name in ("loss", "cross_entropy", "distance")},
               "train_accuracy": sums["hits"] / seen}
        distributed.sync_buffers(step, job)  # evaluate (and save) rank 0's BatchNorm statistics everywhere
        row["val_accuracy"] = identification(model, spectrograms, val, class_index, device, job)["top1"]
        row["seconds"] = time.perf_counter() - epoch_started
        history.append(row)
        save_training_state(out / LAST_CHECKPOINT, step, optimiser, scheduler, loader_generator, epoch, history, job)
        if job.is_main:
            tqdm.write(f"student {cfg.run_name} epoch {epoch}: loss {row['loss']:.3f} "
                       f"(CE {row['cross_entropy']:.3f}, D {row['distance']:.4f}) val acc {row['val_accuracy']:.3f}")

    trials = read_trials(prepared)
    metrics = {
        "name": cfg.run_name,
        "method": cfg.method,
        "level": cfg.level,
        "lambda": cfg.lam,
        "distance": cfg.distance,
        "target": target_kind,
        "temperature": cfg.temperature,
        "arch": cfg.arch,
        "tiny": cfg.tiny,
        "parameters": sum(p.numel() for p in model.parameters()),
        "teacher_fingerprint": fingerprint,
        "cache": str(cache_path) if cache_path else None,
        "identification": identification(model, spectrograms, by_split["test"], class_index, device, job),
        "verification": verification(model, spectrograms, trials, device, job),
        "train_seconds": sum(row["seconds"] for row in history),
        "processes": job.world_size,
        "precision": str(autocast).removeprefix("torch.") if autocast else "float32",
        "history": history,
    }
    spectrogram_params = spectrograms.attrs["spectrogram"]
    spectrograms.close()
    if not job.is_main:
        distributed.teardown(job)
        return out
    runs.save_checkpoint(
        {"spec": asdict(spec), "class_names": classes, "spectrogram": spectrogram_params,
         "method": cfg.method, "level": cfg.level, "lambda": cfg.lam, "teacher_fingerprint": fingerprint,
         "state_dict": {k: v.cpu() for k, v in model.state_dict().items()}},
        out / "student.pt",
    )
    runs.write_json(out / "metrics.json", metrics)
    (out / LAST_CHECKPOINT).unlink()  # the run is finished: its weights live in the final checkpoint
    plot_history(history, ("loss", "cross_entropy", "distance", "val_accuracy"), out / "history.png", cfg.run_name)
    verification_text = (f", EER {metrics['verification']['eer']:.3f}" if metrics["verification"] else "")
    tqdm.write(f"train-student {cfg.run_name}: test accuracy {metrics['identification']['top1']:.3f}"
               f"{verification_text} → {out}")
    distributed.teardown(job)
    return out
