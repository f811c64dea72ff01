"""Stage 3: train an audio student from spectrogram shards and cached teacher targets (no video, no teacher).

`--method` (proposed, soft-label, multitask; pipeline/distill.py) and `--level` (non-sequential, encoder = EM,
aggregator = AGG) pick the loss, its gradient routing and the cached target each crop needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from cache.schema import TeacherCacheSpec
from cache.store import open_store
from pipeline import checkpoints, distributed, runs
from pipeline import config as config_io
from pipeline.data import TARGET_FIELDS, WINDOW_TARGETS, Crops
from pipeline.distill import LEVELS, METHODS, build_method
from pipeline.evaluate import identification, verification
from pipeline.features import SEGMENT_SECONDS, SEGMENT_VIDEO_FRAMES, VIDEO_FPS
from pipeline.manifest import Entry, read_classes, read_splits, read_trials
from pipeline.models.spec import ModelSpec
from pipeline.models.students import STUDENTS, build_student
from pipeline.runs import find_store
from pipeline.steps import StudentStep
from pipeline.training import TrainingConfig, autocast_dtype, finish_run, fit, speed_settings, start_training

TARGETS = ("crop-peak", "utterance-peak")


@dataclass(frozen=True)
class StudentConfig(TrainingConfig):
    """Stage 3 settings."""

    cache: Path | None = field(default=None, metadata={
        "help": "Teacher cache (default: RUN_DIR/embeddings/DATASET.zarr, or .h5)."})
    arch: str = field(default="resnet", metadata={
        "help": "Student architecture (paper Tables 1-3).", "choices": STUDENTS})
    tiny: bool = field(default=False, metadata={"help": "Small variant that trains on a CPU."})
    method: str = field(default="proposed", metadata={
        "help": "proposed (embeddings, routed), soft-label (Eq. 1) or multitask.", "choices": METHODS})
    level: str = field(default="non-sequential", metadata={
        "help": "non-sequential (Eq. 8), encoder (EM, Eq. 12) or aggregator (AGG, Eq. 13); encoder and "
                "aggregator train a sequential student.", "choices": LEVELS})
    lam: float = field(default=0.4, metadata={
        "help": "Distillation weight λ in [0, 1] (0 = no distillation).", "flag": "--lambda"})
    distance: str = field(default="mse", metadata={"help": "Distance D to the teacher embedding: mse or cosine."})
    target: str = field(default="crop-peak", metadata={
        "help": "Non-sequential level: the peak frame inside the crop (crop-peak) or of the whole utterance "
                "(utterance-peak).", "choices": TARGETS})
    temperature: float = field(default=2.0, metadata={"help": "Soft-label baseline: temperature T of Eq. 1."})
    crop_seconds: int = field(default=5, metadata={"help": "Training crop length in whole seconds."})
    name: str | None = field(default=None, metadata={"help": "Run name under RUN_DIR/students/."})
    expect_teacher: str | None = field(default=None, metadata={
        "help": "Refuse a cache not made by this teacher fingerprint (or prefix)."})

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


def open_checked_cache(path: Path, classes: list[str], entries: list[Entry], expect_teacher: str | None,
                       target: str = "crop-peak", crop_seconds: int = 5):
    """Open the teacher cache and refuse it, naming what differs, if it does not fit this training run."""
    cache = open_store(path)  # an incomplete store is refused with the command that finishes it
    windowed = target in WINDOW_TARGETS
    crop_segments = crop_seconds // SEGMENT_SECONDS
    # one window per crop start: max(0, S_whole − crop) + 1
    window_rows = {entry.key: max(0, entry.n_video_frames // SEGMENT_VIDEO_FRAMES - crop_segments) + 1
                   for entry in entries} if windowed else None
    expected = TeacherCacheSpec(teacher_fingerprint=expect_teacher or None, class_names=tuple(classes),
                                video_fps=VIDEO_FPS, segment_frames=SEGMENT_VIDEO_FRAMES,
                                window_seconds=crop_seconds if windowed else None)
    expected.check(path, cache, training_keys=[entry.key for entry in entries], target_field=TARGET_FIELDS[target],
                   window_rows=window_rows)
    return cache


def run(cfg: StudentConfig) -> Path:
    """Train the student; writes student.pt (self-contained), metrics.json, history.png, config.toml.

    Under torchrun every rank trains on its DistributedSampler share; rank 0 writes the outputs."""
    run_dir = cfg.resolved_run_dir
    prepared = runs.prepare_dir(run_dir)
    out = runs.students_dir(run_dir) / cfg.run_name
    device, job, resume_from = start_training(cfg, out)
    by_split = read_splits(prepared)
    classes = read_classes(prepared)
    class_index = {name: i for i, name in enumerate(classes)}
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

    spec = ModelSpec(cfg.arch, cfg.tiny, len(classes), embed_dim, cfg.sequential)
    model = build_student(spec).to(device)
    method = build_method(cfg.method, cfg.level, cfg.distance, cfg.temperature, embed_dim).to(device)
    step = speed_settings(StudentStep(model, method, cfg.lam), device, cfg.channels_last, cfg.compile)
    # multitask's decoder gets no gradient at λ = 0: DDP must then look for unused parameters
    trained_step = distributed.wrap(step, job, device, find_unused=any(True for _ in method.parameters()))
    dataset = Crops(train, [class_index[e.label] for e in train], spectrogram_path, cache_path, cfg.crop_seconds,
                    target_kind)
    val = by_split["val"] or by_split["test"]
    history = fit(
        cfg, job, device, out, resume_from, step, trained_step, dataset, "student",
        evaluate=lambda: {"val_accuracy": identification(model, spectrograms, val, class_index, device, job)["top1"]},
        describe=lambda row: (f"student {cfg.run_name} epoch {row['epoch']}: loss {row['loss']:.3f} "
                              f"(CE {row['cross_entropy']:.3f}, D {row['distance']:.4f}) "
                              f"val acc {row['val_accuracy']:.3f}"),
        losses=("loss", "cross_entropy", "distance"))

    trials = read_trials(prepared)
    autocast = autocast_dtype(cfg.precision, device)
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
    checkpoints.save_student(out / checkpoints.STUDENT_FILE, model, classes, spectrogram_params,
                             {"method": cfg.method, "level": cfg.level, "lambda": cfg.lam,
                              "teacher_fingerprint": fingerprint})
    finish_run(out, metrics, ("loss", "cross_entropy", "distance", "val_accuracy"), cfg.run_name)
    eer = (metrics["verification"] or {}).get("eer")
    verification_text = f", EER {eer:.3f}" if eer is not None else ""
    tqdm.write(f"train-student {cfg.run_name}: test accuracy {metrics['identification']['top1']:.3f}"
               f"{verification_text} → {out}")
    distributed.teardown(job)
    return out
