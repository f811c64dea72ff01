"""`avl bench`: what precompute-then-train buys, measured in one process on one dataset; prints one JSON object.

On a synthetic corpus of real mp4 files it runs stages 0-2 (a tiny teacher, one epoch: only its speed
matters), then measures

- `input_pipeline`: stage-3 training steps/s with crops and targets read from the stores, and with the same
  arrays held in memory, through the same Dataset, DataLoader and training step; `overhead` is
  memory steps/s ÷ store steps/s (goal ≤ 1.10). The loader alone (no training) is timed too: its
  batches/s is the input pipeline's capacity;
- `cache_vs_live_teacher`: one student epoch reading cached targets against the same epoch distilled from
  a live teacher that decodes each crop's video and audio (PyAV) and runs on its frames every step;
- `export`: stage 2 frames/s and the shares of its time spent reading face frames, in the teacher and
  writing, plus stage 0's decode throughput (the decoding a live teacher would redo every epoch);
- `full_size_teacher` (`--full-teacher`): the paper's scale point, a full-size ResNet34 teacher at the run's face
  size next to the tiny one: a few stage-3 batches with cached targets and with each teacher live, and stage 2
  frames/s of each over the same utterances;
- `crop_reads`: one list of random 5 s spectrogram crops read side by side from memory, one memory-mapped `.npy`,
  plain h5py, one `.npy` per utterance and each avl backend (`cache/bench_crops.py`), crops/s and ratio to memory;
- `bytes_per_hour`: MB on disk per hour of video for each stored kind (real features of the corpus);
- `peak_rss`: stage 3 (`train_student.run`, a few steps) in a fresh process on two synthetic datasets of
  different sizes: stores are read, not loaded, so it must not grow with the dataset.

Sizes are flags; the defaults finish in a few minutes on a 2-core CPU.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cache.bench_crops import measure_crop_reads
from pipeline import config as config_io
from pipeline import runs
from pipeline.bench.data import write_synthetic_run
from pipeline.bench.benchmark import (
    bytes_per_hour,
    measure_input_pipeline,
    measure_live_teacher,
    measure_live_teachers,
    run_sampling_rss,
    save_full_teacher,
)
from pipeline.datasets.synthetic import SynthConfig, synthesize
from pipeline.features import VIDEO_FPS
from pipeline.manifest import read_classes, read_manifest, write_manifest
from pipeline.models.students import STUDENTS
from stages import export_embeddings, prepare, train_teacher


@dataclass(frozen=True)
class BenchConfig:
    """Benchmark sizes and settings."""

    work: Path | None = field(default=None, metadata={
        "help": "Keep the corpus and runs here (default: a temporary directory, removed after)."})
    speakers: int = field(default=6, metadata={"help": "Speakers of the synthetic corpus."})
    utterances_per_speaker: int = field(default=12, metadata={"help": "Utterances per speaker.", "flag": "--utterances"})
    arch: str = field(default="resnet", metadata={"help": "Student architecture.", "choices": STUDENTS})
    # the tiny student is the hardest case for the input pipeline (least compute per batch)
    tiny: bool = field(default=True, metadata={"help": "Tiny or full-size student.", "flag": "--tiny/--full"})
    batch_size: int = field(default=16, metadata={"help": "Utterances per batch."})
    crop_seconds: int = field(default=2, metadata={"help": "Training crop length in whole seconds."})
    steps: int = field(default=16, metadata={"help": "Timed training steps per input pipeline and round."})
    rounds: int = field(default=2, metadata={"help": "Memory and store are timed alternately this many times."})
    epochs: int = field(default=2, metadata={
        "help": "Cached vs live teacher: epochs timed after one untimed warm-up epoch."})
    num_workers: int = field(default=2, metadata={"help": "DataLoader worker processes."})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N or auto."})
    full_teacher: bool = field(default=True, metadata={
        "help": "Also measure the paper's teacher, a full-size ResNet34, at the run's face size next to the tiny one: "
                "cached vs live for a few batches, and stage 2 frames/s.", "flag": "--full-teacher/--no-full-teacher"})
    full_teacher_batch: int = field(default=4, metadata={"help": "Full-teacher section: crops per batch.", "min": 1})
    full_teacher_steps: int = field(default=3, metadata={
        "help": "Full-teacher section: batches timed after one warm-up batch.", "min": 1})
    full_teacher_frames: int = field(default=1024, metadata={
        "help": "Full-teacher section: stage 2 runs over the first training utterances holding this many frames.",
        "min": 1})
    crop_utterances: int = field(default=400, metadata={
        "help": "Crop-read section: utterances (3-8 s of 257-bin rows) in each way of keeping them.", "min": 1})
    crop_reads: int = field(default=4000, metadata={"help": "Crop-read section: random 5 s crops timed.", "min": 1})
    rss_utterances: tuple[int, ...] = field(default=(200, 1600), metadata={
        "help": "Dataset sizes of the synthetic stage-3 runs whose peak RSS is measured."})
    rss_steps: int = field(default=4, metadata={"help": "Training steps of each peak-RSS run."})
    seed: int = field(default=0, metadata={"help": "Random seed."})
    out: Path | None = field(default=None, metadata={"help": "Also write the JSON object here."})

    def validate(self) -> None:
        if self.arch not in STUDENTS:
            raise config_io.ConfigError(f"bench: unknown arch {self.arch!r}; registered: {sorted(STUDENTS)}")
        counts = ("speakers", "utterances_per_speaker", "batch_size", "crop_seconds", "steps", "rounds", "epochs",
                  "rss_steps")
        if any(getattr(self, name) < 1 for name in counts):
            raise config_io.ConfigError(f"bench: {', '.join(counts)} must be >= 1")
        if self.speakers * self.utterances_per_speaker < 2 * self.batch_size:
            raise config_io.ConfigError("bench: the corpus needs at least two batches of utterances "
                                        f"(speakers × utterances_per_speaker >= 2 × batch_size = {2 * self.batch_size})")
        if any(size < 16 + self.batch_size for size in self.rss_utterances):  # 16 are val and test
            raise config_io.ConfigError(f"bench: every rss_utterances size must be >= 16 + batch_size "
                                        f"= {16 + self.batch_size}, got {list(self.rss_utterances)}")


# Stage 3 with the settings in argv[1] (JSON; null: only import it), then its own peak RSS
STAGE3_CHILD = """
import json, sys
from pipeline import config
from pipeline.processes import status_kb
from stages import train_student
settings = json.loads(sys.argv[1])
if settings is not None:
    train_student.run(config.build(train_student.StudentConfig, settings))
print("HWM_KB", status_kb("self", "VmHWM"))
"""


def _stage3_peaks(settings: dict | None, what: str) -> tuple[int, int]:
    """Run STAGE3_CHILD; (its own VmHWM, the peak of its process tree's summed VmRSS sampled every 20 ms), kB."""
    stdout, tree_peak = run_sampling_rss([sys.executable, "-c", STAGE3_CHILD, json.dumps(settings)],
                                         f"stage 3 on {what}")
    return int(next(line for line in stdout.splitlines() if line.startswith("HWM_KB ")).split()[1]), tree_peak


def measure_peak_rss(cfg: BenchConfig, work: Path) -> dict:
    """Stage 3 in a fresh process on synthetic runs of each size: the main process's peak RSS (VmHWM) and the
    peak of the summed RSS of it and its DataLoader workers (sampled every 20 ms; shared pages count twice).
    The baseline is a process that only imports stage 3 (torch and its libraries)."""
    baseline_kb, _ = _stage3_peaks(None, "an import-only run")
    rows = []
    for size in cfg.rss_utterances:
        run_dir = work / f"rss-{size}"
        shutil.rmtree(run_dir, ignore_errors=True)  # the bench's own scratch run, rebuilt every time
        disk = write_synthetic_run(run_dir, size, cfg.crop_seconds, cfg.seed)
        hwm_kb, tree_peak = _stage3_peaks({
            "run_dir": str(run_dir), "arch": cfg.arch, "tiny": cfg.tiny, "lam": 0.4, "epochs": 1,
            "batch_size": cfg.batch_size, "crop_seconds": cfg.crop_seconds, "num_workers": cfg.num_workers,
            "max_steps_per_epoch": cfg.rss_steps, "device": cfg.device, "name": "rss"}, str(run_dir))
        rows.append({"utterances": size, "train_utterances": size - 16, "stores_mb_on_disk": round(disk / 2**20, 1),
                     "peak_rss_main_mb": round(hwm_kb / 1024, 1),
                     "peak_rss_with_workers_mb": round(tree_peak / 1024, 1)})
    return {"import_only_mb": round(baseline_kb / 1024, 1), "runs": rows,
            "main_growth_mb": round(rows[-1]["peak_rss_main_mb"] - rows[0]["peak_rss_main_mb"], 1)}


def export_subset(run_dir: Path, scratch: Path, teacher: Path, n_frames: int, cfg: BenchConfig) -> dict:
    """Stage 2 with `teacher` over the first training utterances of `run_dir` holding at least `n_frames` frames (a
    scratch run whose manifest lists only them and whose face store links to the run's); its export stats."""
    prepared = runs.prepare_dir(run_dir)
    train = [entry for entry in read_manifest(prepared) if entry.split == "train"]
    chosen = train[: int(np.searchsorted(np.cumsum([entry.n_video_frames for entry in train]), n_frames)) + 1]
    faces = runs.find_store(prepared, "faces")
    shutil.rmtree(scratch, ignore_errors=True)  # the bench's own scratch run, rebuilt every time
    runs.prepare_dir(scratch).mkdir(parents=True)
    write_manifest(runs.prepare_dir(scratch), chosen, read_classes(prepared), [])
    (runs.prepare_dir(scratch) / faces.name).symlink_to(faces.resolve())
    cache = export_embeddings.run(config_io.build(export_embeddings.ExportConfig, {
        "run_dir": scratch, "teacher": teacher, "num_workers": cfg.num_workers, "device": cfg.device,
        "splits": ["train"]}))
    return runs.read_json(cache.parent / f"{cache.name}.export.json")


def measure_full_teacher(cfg: BenchConfig, run_dir: Path, work: Path, device) -> dict:
    """The paper's scale point on this run's faces: a full-size ResNet34 teacher next to the run's tiny one, live in
    stage 3 against cached targets (`measure_live_teachers`) and through stage 2 over the same utterances."""
    teachers = {"tiny_teacher": runs.teacher_checkpoint(run_dir),
                "full_teacher": save_full_teacher(run_dir, work / "full-teacher" / "teacher.pt")}
    result = measure_live_teachers(cfg, run_dir, device, teachers)
    exports = {name: export_subset(run_dir, work / f"export-{name}", path, cfg.full_teacher_frames, cfg)
               for name, path in teachers.items()}
    result["export_frames"] = exports["full_teacher"]["frames"]
    result["export_frames_per_second"] = {name: round(stats["frames_per_second"], 1) for name, stats in exports.items()}
    result["export_teacher_share"] = {name: round(stats["teacher_share"], 3) for name, stats in exports.items()}
    result["note"] = ("full teacher: ResNet34 at full width, random weights (only speed matters); live as in "
                      "cache_vs_live_teacher but a few batches drawn with replacement; stage 2 is export-embeddings "
                      "over the same first training utterances for both teachers")
    return result


def _timed(label: str, action):
    tqdm.write(f"bench: {label}")
    started = time.perf_counter()
    value = action()
    return value, time.perf_counter() - started


def run(cfg: BenchConfig) -> dict:
    """Build the corpus and run, measure everything, print and return the JSON object.

    Progress goes to stderr, so stdout is the JSON object alone (`avl bench > bench.json`)."""
    with contextlib.redirect_stdout(sys.stderr):
        if cfg.work is None:
            with tempfile.TemporaryDirectory(prefix="avl-bench-") as directory:
                result = _run(cfg, Path(directory))
        else:
            cfg.work.mkdir(parents=True, exist_ok=True)
            result = _run(cfg, cfg.work)
    print(json.dumps(result, indent=2))
    return result


def _run(cfg: BenchConfig, work: Path) -> dict:
    began = time.perf_counter()
    device = runs.resolve_device(cfg.device)
    run_dir = work / "run"
    corpus = SynthConfig(n_speakers=cfg.speakers, n_verification_speakers=0,
                         utterances_per_speaker=cfg.utterances_per_speaker, videos_per_speaker=2, min_seconds=2.0,
                         max_seconds=4.0, n_trials=0, seed=cfg.seed)
    root, _ = _timed("synthesising the corpus", lambda: synthesize(work / "corpus", corpus))
    _, prepare_seconds = _timed("stage 0", lambda: prepare.run(config_io.build(prepare.PrepareConfig, {
        "root": root, "run_dir": run_dir, "num_workers": cfg.num_workers, "overwrite": True})))
    entries = read_manifest(runs.prepare_dir(run_dir))
    video_frames = sum(e.n_video_frames for e in entries)
    _timed("stage 1 (one epoch: only the teacher's speed matters)", lambda: train_teacher.run(config_io.build(
        train_teacher.TeacherConfig, {"run_dir": run_dir, "tiny": True, "epochs": 1, "batch_size": 8,
                                      "num_workers": 0, "device": cfg.device, "overwrite": True})))
    cache_path, _ = _timed("stage 2", lambda: export_embeddings.run(config_io.build(export_embeddings.ExportConfig, {
        "run_dir": run_dir, "num_workers": cfg.num_workers, "device": cfg.device, "overwrite": True})))
    export = runs.read_json(cache_path.parent / f"{cache_path.name}.export.json")

    result = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "corpus": {"utterances": len(entries), "hours_of_video": round(video_frames / VIDEO_FPS / 3600, 4),
                         "video_frames": video_frames}}
    result["input_pipeline"], _ = _timed("stage-3 steps/s: stores vs memory",
                                         lambda: measure_input_pipeline(cfg, run_dir, device))
    result["cache_vs_live_teacher"], _ = _timed("one epoch: cached targets vs a live teacher",
                                                lambda: measure_live_teacher(cfg, run_dir, device))
    result["export"] = {
        "frames_per_second": round(export["frames_per_second"], 1),
        "read_frames_share": round(export.get("read_share", float("nan")), 3),
        "teacher_share": round(export["teacher_share"], 3),
        "write_share": round(export.get("write_share", float("nan")), 3),
        "stage0_decode_frames_per_second": round(video_frames / prepare_seconds, 1),
        "note": ("stage 2 reads face crops stage 0 decoded once; decoding a frame (stage 0, which also "
                 "featurises audio and writes) is what a live teacher pays every epoch"),
    }
    if cfg.full_teacher:
        result["full_size_teacher"], seconds = _timed(
            "the paper's teacher: full-size ResNet34, cached vs live, stage 2",
            lambda: measure_full_teacher(cfg, run_dir, work, device))
        result["full_size_teacher"]["seconds"] = round(seconds, 1)  # what the section adds to the bench
    (work / "crops").mkdir(exist_ok=True)
    result["crop_reads"], _ = _timed("random 5 s crops: memory, .npy, h5py, avl stores",
                                     lambda: measure_crop_reads(work / "crops", cfg.crop_utterances, cfg.crop_reads, cfg.seed))
    result["bytes_per_hour_mb"] = bytes_per_hour(run_dir)
    result["peak_rss"], _ = _timed("stage-3 peak RSS at two dataset sizes", lambda: measure_peak_rss(cfg, work))
    result["config"] = {key: (str(value) if isinstance(value, Path) else value) for key, value in asdict(cfg).items()}
    result["seconds"] = round(time.perf_counter() - began, 1)
    if cfg.out is not None:
        runs.write_json(cfg.out, result)
    return result

