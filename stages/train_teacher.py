"""Stage 1: train a teacher: a video teacher on the face-crop frame store, or an audio teacher on the clean audio.

Non-sequential: random frames of each utterance, CE per frame. Sequential: a random window of
`window_seconds` on the 1 s grid; the aggregator reads the window's frame embeddings in time order
(Eq. 5), CE per window. By default that is every frame (25 per segment), the sequence export aggregates;
`frames_per_segment` k < 25 reads k random frames of each segment instead (a batch of B·S·k frames, not
B·S·25: cheaper, at the price of a sparser sequence than export's).

Audio teachers (`audio-resnet` on the spectrogram, `wav2vec2`/`hubert` on the waveform of `prepare --waveforms`;
pipeline/models/audio_teachers.py): random crops of `window_seconds` on the 1 s grid, CE on every 25 fps grid frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from cache import locks
from pipeline import checkpoints, distributed, runs
from pipeline import config as config_io
from pipeline.audio_teacher import AudioCrops, CleanAudio, evaluate_audio_teacher
from pipeline.cells import check_finished_run
from pipeline.data import RandomFrames, RandomWindows, collate_frames, collate_windows
from pipeline.datasets.registry import dataset_crop_seconds
from pipeline.evaluate import evaluate_teacher
from pipeline.face_store import open_faces
from pipeline.manifest import read_classes, read_splits
from pipeline.models.spec import ModelSpec
from pipeline.models.teachers import TEACHER_ARCHS, build_teacher, is_audio_teacher, load_initial_weights
from pipeline.runs import find_store
from pipeline.models.audio_teachers import INPUTS
from pipeline.steps import AudioTeacherStep, TeacherStep
from pipeline.training import (
    FINISHED_MARKER,
    LAST_CHECKPOINT,
    TrainingConfig,
    finish_run,
    fit,
    speed_settings,
    start_training,
)


@dataclass(frozen=True)
class TeacherConfig(TrainingConfig):
    """Stage 1 settings."""

    arch: str = field(default="resnet34", metadata={
        "help": "Teacher architecture: a video teacher on face crops (vgg16, resnet34, seresnet34) or an audio teacher "
                "on the clean audio (audio-resnet on the spectrogram; wav2vec2, hubert on the waveform, which needs "
                "`prepare --waveforms`).", "choices": TEACHER_ARCHS})
    tiny: bool = field(default=False, metadata={"help": "Small variant that trains on a CPU."})
    embed_dim: int = field(default=512, metadata={"help": "Embedding size (the student matches it)."})
    batch_size: int = field(default=32, metadata={
        "help": "Utterances per batch; each contributes --frames-per-utterance frames.", "min": 1})
    frames_per_utterance: int = field(default=8, metadata={"help": "Random frames drawn per utterance per epoch."})
    sequential: bool = field(default=False, metadata={
        "help": "Add the aggregator of Table 3 (2×BiLSTM, two FC+ReLU, attention) over frame embeddings "
                "(Eq. 5); train on windows."})
    window_seconds: int | None = field(default=None, metadata={
        "help": "Sequential: training window in seconds (= the student's crop; default: the dataset's, as the "
                "paper: VoxCeleb 5, RAVDESS and IEMOCAP 4); export caches aggregator rows of this length. Audio "
                "teachers: their training crop (default: the dataset's)."})
    frames_per_segment: int = field(default=25, metadata={
        "help": "Sequential: frames of each 1 s segment the aggregator reads in training, in time order: 25 is "
                "every frame (as export, Eq. 5); fewer is cheaper.", "max": 25})
    init_weights: Path | None = field(default=None, metadata={"help": "Local weights file to initialise the teacher."})

    def validate(self) -> None:
        self.validate_training("train-teacher")
        if self.arch not in TEACHER_ARCHS:
            raise config_io.ConfigError(f"train-teacher: unknown arch {self.arch!r}; registered: {sorted(TEACHER_ARCHS)}")
        if is_audio_teacher(self.arch) and self.sequential:
            raise config_io.ConfigError(f"train-teacher: {self.arch} is an audio teacher, which has no sequential "
                                        "(aggregator) variant; drop --sequential")
        counts = ("epochs", "batch_size", "frames_per_utterance", "window_seconds", "frames_per_segment")
        if any(getattr(self, name) is not None and getattr(self, name) < 1 for name in counts):
            raise config_io.ConfigError(f"train-teacher: {', '.join(counts)} must be >= 1")


def resolve_window(cfg: TeacherConfig) -> TeacherConfig:
    """A sequential or audio teacher's training window, defaulting to the dataset's crop (the students')."""
    if (cfg.sequential or is_audio_teacher(cfg.arch)) and cfg.window_seconds is None:
        return replace(cfg, window_seconds=dataset_crop_seconds(runs.prepare_dir(cfg.resolved_run_dir)))
    return cfg


@runs.one_writer(lambda cfg: locks.inside(runs.teacher_dir(cfg.resolved_run_dir)))
def run(cfg: TeacherConfig) -> Path:
    """Train the teacher; writes teacher.pt, metrics.json, history.png and config.toml."""
    cfg = resolve_window(cfg)  # before config.toml records it
    audio = is_audio_teacher(cfg.arch)
    run_dir = cfg.resolved_run_dir
    prepared = runs.prepare_dir(run_dir)
    out = runs.teacher_dir(run_dir)
    clean = CleanAudio(prepared, INPUTS[cfg.arch]) if audio else None  # refuses a run without the input it reads
    device, job, resume_from = start_training(cfg, out)
    by_split = read_splits(prepared)
    classes = read_classes(prepared)
    class_index = {name: i for i, name in enumerate(classes)}
    if not by_split["train"]:
        raise RuntimeError(f"{prepared}: the manifest has no training utterances")
    store_path = None if audio else find_store(prepared, "faces")

    spec = ModelSpec(cfg.arch, cfg.tiny, len(classes), cfg.embed_dim, cfg.sequential)
    model = build_teacher(spec)
    if cfg.init_weights is not None:
        state = checkpoints.read_file(cfg.init_weights, "weights file")
        report = load_initial_weights(model, state)
        if job.is_main:
            tqdm.write(f"train-teacher: initialised {len(report['loaded'])} tensors from {cfg.init_weights} "
                       f"(missing {len(report['missing'])}, skipped {len(report['skipped'])})")
    model.to(device)

    train = by_split["train"]
    train_keys, train_labels = [e.key for e in train], [class_index[e.label] for e in train]
    if audio:
        dataset = AudioCrops(clean, train_keys, train_labels, [e.n_video_frames for e in train], cfg.window_seconds)
    elif cfg.sequential:
        dataset = RandomWindows(store_path, train_keys, train_labels, cfg.window_seconds, cfg.frames_per_segment)
    else:
        dataset = RandomFrames(store_path, train_keys, train_labels, cfg.frames_per_utterance)
    step = AudioTeacherStep(model) if audio else TeacherStep(model, cfg.sequential)
    trained_step = distributed.wrap(speed_settings(step, device, cfg.channels_last, cfg.compile), job, device)
    # evaluation reads whole utterances in this process: JPEG frames are decoded on the GPU when training on one
    store = clean if audio else open_faces(store_path, decode_device=device if device.type == "cuda" else "cpu")
    score = evaluate_audio_teacher if audio else evaluate_teacher
    val = by_split["val"] or by_split["test"]
    val_keys, val_labels = [e.key for e in val], [class_index[e.label] for e in val]
    history = fit(
        cfg, job, device, out, resume_from, model, trained_step, dataset, "teacher",
        evaluate=lambda: {f"val_{name}": value for name, value in score(
            model, store, val_keys, val_labels, device, job=job).items()},
        describe=lambda row: (f"teacher epoch {row['epoch']}: loss {row['loss']:.3f}  "
                              f"val utterance acc {row['val_utterance_accuracy']:.3f}"),
        collate=None if audio else collate_windows if cfg.sequential else collate_frames)

    test = by_split["test"]
    test_metrics = score(model, store, [e.key for e in test], [class_index[e.label] for e in test], device, job=job)
    face_size = None if audio else store.face_size
    store.close()
    if not job.is_main:
        distributed.teardown(job)
        return out
    checkpoint = checkpoints.save_teacher(runs.teacher_checkpoint(run_dir), model, classes, face_size,
                                          cfg.window_seconds if cfg.sequential else None)
    fingerprint = runs.file_sha256(checkpoint)
    metrics = {
        "teacher_fingerprint": fingerprint,
        "arch": cfg.arch,
        "tiny": cfg.tiny,
        "sequential": cfg.sequential,
        "modality": "audio" if audio else "video",
        "parameters": sum(p.numel() for p in model.parameters()),
        "test": test_metrics,
        "processes": job.world_size,
        "train_seconds": sum(row["seconds"] for row in history),
        "history": history,
    }
    finish_run(out, metrics, ("loss", "train_accuracy", "val_utterance_accuracy"), "teacher")
    tqdm.write(
        f"train-teacher: test utterance accuracy (WA) {test_metrics['utterance_accuracy']:.3f}, UA "
        f"{test_metrics['utterance_ua']:.3f}; frame accuracy {test_metrics['frame_accuracy']:.3f}, UA "
        f"{test_metrics['frame_ua']:.3f} → {checkpoint}"
    )
    distributed.teardown(job)
    return out


def run_or_reuse(cfg: TeacherConfig, remedy: str, label: str = "train-teacher") -> Path:
    """The teacher of `cfg`'s run: kept if it finished with these settings (refused, saying `remedy`, if with others),
    else trained, resuming an interrupted run; `label` starts the progress line. Returns the teacher directory."""
    out = runs.teacher_dir(cfg.resolved_run_dir)
    if (out / FINISHED_MARKER).exists():
        check_finished_run(out, resolve_window(cfg), remedy)
        tqdm.write(f"{label}: teacher finished earlier, reused")
        return out
    resume = (out / LAST_CHECKPOINT).exists()
    tqdm.write(f"{label}: training the teacher" + (" (resuming)" if resume else ""))
    return run(replace(cfg, resume=resume))
