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
- `bytes_per_hour`: MB on disk per hour of video for each stored kind (real features of the corpus);
- `peak_rss`: stage 3 (`train_student.run`, a few steps) in a fresh process on two synthetic datasets of
  different sizes: stores are read, not loaded, so it must not grow with the dataset.

Sizes are flags; the defaults finish in a few minutes on a 2-core CPU.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cache.bench import MemoryStore
from cache.schema import cache_fields, spectrogram_fields
from cache.store import array_stats, create_store, open_store
from pipeline import config as config_io
from pipeline import runs
from pipeline.distill import build_method
from pipeline.features import (
    SEGMENT_VIDEO_FRAMES,
    SPEC_FRAMES_PER_SECOND,
    VIDEO_FPS,
    random_crop,
    repeat_pad,
)
from pipeline.manifest import Entry, read_classes, read_manifest, write_manifest
from pipeline.models.students import STUDENTS, StudentSpec, build_student
from pipeline.runs import find_store
from pipeline.training import autocast, autocast_dtype, speed_settings


@dataclass(frozen=True)
class BenchConfig:
    """Benchmark sizes and settings."""

    work: Path | None = None  # where the corpus and run go (default: a temporary directory, removed after)
    speakers: int = 6
    utterances_per_speaker: int = 12
    arch: str = "resnet"
    tiny: bool = True  # the tiny student: the hardest case for the input pipeline (least compute per batch)
    batch_size: int = 16
    crop_seconds: int = 2
    steps: int = 16  # timed training steps per input pipeline and round
    rounds: int = 2  # memory and store are timed alternately this many times
    epochs: int = 2  # cached vs live teacher: epochs timed after one untimed warm-up epoch
    num_workers: int = 2
    device: str = "auto"
    rss_utterances: tuple[int, ...] = (200, 1600)  # sizes of the synthetic stage-3 runs whose peak RSS is measured
    rss_steps: int = 4
    seed: int = 0
    out: Path | None = None  # also write the JSON object here

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


class _LiveCrops(torch.utils.data.Dataset):
    """What stage 3 would do without a cache: decode each crop's video and audio from the media file
    (only the crop's time range), featurise the audio and crop the faces; the teacher then runs on them."""

    def __init__(self, entries: list[Entry], labels: list[int], crop_seconds: int, face_size: int):
        from pipeline.features import LogSpectrogram, SpectrogramParams

        self.entries, self.labels, self.crop_seconds, self.face_size = entries, labels, crop_seconds, face_size
        self.spectrogram = LogSpectrogram(SpectrogramParams())

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int):
        from pipeline.media import face_crops, load_audio_visual

        entry = self.entries[index]
        crop = random_crop(entry.n_video_frames, self.crop_seconds)
        start = crop.start_segment * SEGMENT_VIDEO_FRAMES / VIDEO_FPS
        audio, frames = load_audio_visual(entry.source, start=start, end=start + self.crop_seconds)
        faces = face_crops(frames, self.face_size, 1.0, None)
        with torch.no_grad():
            spectrogram = self.spectrogram(torch.from_numpy(audio)).numpy()
        spectrogram = repeat_pad(spectrogram, self.crop_seconds * SPEC_FRAMES_PER_SECOND).astype(np.float32)
        return torch.from_numpy(spectrogram), self.labels[index], torch.from_numpy(np.ascontiguousarray(faces))


def _collate_live(items):
    spectrograms = torch.stack([spectrogram for spectrogram, _, _ in items])
    labels = torch.tensor([label for _, label, _ in items])
    return spectrograms, labels, [faces for _, _, faces in items]


@torch.no_grad()  # not inference_mode: the targets enter the student's autograd graph
def _live_targets(teacher, faces: list[torch.Tensor], device) -> torch.Tensor:
    """Each crop's peak-frame embedding (Eq. 4 inside the crop), computed by the live teacher: (B, D)."""
    embeddings, logits = teacher(torch.cat(faces).to(device))
    confidence = logits.float().softmax(dim=1).max(dim=1).values
    targets, start = [], 0
    for crop in faces:
        peak = start + int(confidence[start : start + len(crop)].argmax())
        targets.append(embeddings[peak].float())
        start += len(crop)
    return torch.stack(targets)


def _student_step(spec: StudentSpec, device):
    """Stage 3's training step with stage 3's default speed settings on `device` (CUDA: channels-last, bf16)."""
    from stages.train_student import StudentStep

    student = build_student(spec).to(device)
    step = StudentStep(student, build_method("proposed", "non-sequential", "mse", 1.0, spec.embed_dim), 0.4).to(device)
    return speed_settings(step, device), torch.optim.Adam(step.parameters(), lr=1e-3)


def _train_step(step, optimiser, spectrogram, labels, target, device) -> None:
    spectrogram, labels = spectrogram.to(device, non_blocking=True), labels.to(device, non_blocking=True)
    with autocast(autocast_dtype("auto", device), device):
        losses = step(spectrogram, labels, target.to(device, non_blocking=True))
    optimiser.zero_grad(set_to_none=True)
    losses.total.backward()
    optimiser.step()


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _loader(dataset, cfg: BenchConfig, n_batches: int, seed: int, collate=None, shuffle_epoch: bool = False):
    """Batches drawn with replacement (as many as asked, whatever the dataset size), or one shuffled epoch."""
    generator = torch.Generator().manual_seed(seed)
    sampler = (torch.utils.data.RandomSampler(dataset, generator=generator) if shuffle_epoch else
               torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=n_batches * cfg.batch_size,
                                              generator=generator))
    return torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
                                       num_workers=cfg.num_workers, collate_fn=collate,
                                       persistent_workers=shuffle_epoch and cfg.num_workers > 0,
                                       prefetch_factor=4 if cfg.num_workers else None,
                                       pin_memory=torch.device(cfg.device).type == "cuda" if cfg.device != "auto"
                                       else torch.cuda.is_available())


def measure_input_pipeline(cfg: BenchConfig, run_dir: Path, device) -> dict:
    """Training steps/s and loader batches/s, stores vs the same arrays in memory."""
    from stages.train_student import _Crops

    prepared = runs.prepare_dir(run_dir)
    classes = read_classes(prepared)
    train = [e for e in read_manifest(prepared) if e.split == "train"]
    labels = [classes.index(e.label) for e in train]
    spectrogram_path, cache_path = find_store(prepared, "spectrograms"), find_store(runs.embeddings_dir(run_dir), "voxceleb")
    keys = [e.key for e in train]
    sources = {
        "store": (spectrogram_path, cache_path),
        "memory": (MemoryStore.from_store(spectrogram_path, keys, ("spectrogram",)),
                   MemoryStore.from_store(cache_path, keys, ("frame_prob", "frames"))),
    }
    embed_dim = int(sources["memory"][1].attrs["embed_dim"])
    step, optimiser = _student_step(StudentSpec(cfg.arch, cfg.tiny, len(classes), embed_dim), device)
    initial = copy.deepcopy((step.state_dict(), optimiser.state_dict()))
    warmup = 2
    seconds = {"store": 0.0, "memory": 0.0}
    loader_seconds = {"store": 0.0, "memory": 0.0}
    for round_index in range(cfg.rounds):
        for name in ("memory", "store") if round_index % 2 == 0 else ("store", "memory"):
            dataset = _Crops(train, labels, *sources[name], cfg.crop_seconds, "crop-peak")
            step.load_state_dict(initial[0])
            optimiser.load_state_dict(initial[1])
            step.train()
            batches = iter(_loader(dataset, cfg, warmup + cfg.steps, cfg.seed + round_index))
            for _ in range(warmup):  # starts the workers and fills their prefetch queues
                _train_step(step, optimiser, *next(batches), device)
            _sync(device)
            started = time.perf_counter()
            for spectrogram, label, target in batches:
                _train_step(step, optimiser, spectrogram, label, target, device)
            _sync(device)
            seconds[name] += time.perf_counter() - started
            # the loader alone: how many batches per second the input pipeline can deliver
            batches = iter(_loader(dataset, cfg, warmup + cfg.steps, cfg.seed + 100 + round_index))
            for _ in range(warmup):
                next(batches)
            started = time.perf_counter()
            for _ in batches:
                pass
            loader_seconds[name] += time.perf_counter() - started
    n_steps = cfg.steps * cfg.rounds
    rate = {name: n_steps / seconds[name] for name in seconds}
    return {
        "student": f"{cfg.arch}{' (tiny)' if cfg.tiny else ''}, method proposed, target crop-peak",
        "batch": cfg.batch_size, "crop_seconds": cfg.crop_seconds, "num_workers": cfg.num_workers,
        "steps_timed": n_steps,
        "store_steps_per_second": round(rate["store"], 3),
        "memory_steps_per_second": round(rate["memory"], 3),
        "overhead": round(rate["memory"] / rate["store"], 3),  # goal: <= 1.10
        "store_loader_batches_per_second": round(n_steps / loader_seconds["store"], 2),
        "memory_loader_batches_per_second": round(n_steps / loader_seconds["memory"], 2),
    }


def measure_live_teacher(cfg: BenchConfig, run_dir: Path, device) -> dict:
    """One epoch of the same student: cached targets against a live teacher decoding and running every step."""
    from pipeline.models.teachers import TeacherSpec, build_teacher
    from stages.train_student import _Crops

    prepared = runs.prepare_dir(run_dir)
    classes = read_classes(prepared)
    train = [e for e in read_manifest(prepared) if e.split == "train"]
    labels = [classes.index(e.label) for e in train]
    checkpoint = torch.load(runs.teacher_checkpoint(run_dir), map_location="cpu", weights_only=True)
    teacher = build_teacher(TeacherSpec(**checkpoint["spec"]))
    teacher.load_state_dict(checkpoint["state_dict"])
    teacher.to(device).eval().requires_grad_(False)
    spec = StudentSpec(cfg.arch, cfg.tiny, len(classes), teacher.spec.embed_dim)
    n_batches = len(train) // cfg.batch_size
    if n_batches == 0:
        raise config_io.ConfigError(f"bench: {len(train)} training utterances make no batch of {cfg.batch_size}; "
                                    "pass more --speakers/--utterances or a smaller --batch-size")

    results = {}
    for name in ("cached", "live"):
        step, optimiser = _student_step(spec, device)
        step.train()
        if name == "cached":
            dataset = _Crops(train, labels, find_store(prepared, "spectrograms"),
                             find_store(runs.embeddings_dir(run_dir), "voxceleb"), cfg.crop_seconds, "crop-peak")
            loader = _loader(dataset, cfg, n_batches, cfg.seed, shuffle_epoch=True)
        else:
            dataset = _LiveCrops(train, labels, cfg.crop_seconds, int(checkpoint["face_size"]))
            loader = _loader(dataset, cfg, n_batches, cfg.seed, collate=_collate_live, shuffle_epoch=True)
        waiting = in_teacher = elapsed = 0.0
        for epoch in range(cfg.epochs + 1):  # epoch 0 warms up: worker start-up, first reads, allocator
            timed = epoch > 0
            _sync(device)
            started = last = time.perf_counter()
            for spectrogram, label, target in loader:
                tick = time.perf_counter()
                waiting += (tick - last) * timed
                if name == "live":
                    target = _live_targets(teacher, target, device)
                    _sync(device)
                    in_teacher += (time.perf_counter() - tick) * timed
                _train_step(step, optimiser, spectrogram, label, target, device)
                _sync(device)
                last = time.perf_counter()
            elapsed += (time.perf_counter() - started) * timed
        results[name] = {"epoch_seconds": round(elapsed / cfg.epochs, 2), "batches_per_epoch": n_batches,
                         "waiting_for_input_share": round(waiting / elapsed, 3)}
        if name == "live":
            results[name]["teacher_share"] = round(in_teacher / elapsed, 3)
    results["speedup"] = round(results["live"]["epoch_seconds"] / results["cached"]["epoch_seconds"], 2)
    results["note"] = ("live: each item decodes only its crop's time range (PyAV), then spectrogram, face crops and "
                       "the teacher on the crop's frames; mean of the timed epochs after a warm-up epoch")
    return results


def bytes_per_hour(run_dir: Path) -> dict:
    """MB on disk per hour of video, per stored kind, on the corpus's real features."""
    prepared = runs.prepare_dir(run_dir)
    entries = read_manifest(prepared)
    cache_path = find_store(runs.embeddings_dir(run_dir), "voxceleb")
    with open_store(cache_path) as cache:  # it holds the exported splits only
        exported_hours = sum(e.seconds for e in entries if e.key in cache) / 3600
    hours = sum(e.seconds for e in entries) / 3600
    result = {}
    for label, path, stored_hours in (("spectrograms", find_store(prepared, "spectrograms"), hours),
                                      ("face_crops", find_store(prepared, "faces"), hours),
                                      ("teacher_cache", cache_path, exported_hours)):
        stats = array_stats(path)
        result[label] = {
            name: round((info["bytes"] + stats.get(f"offsets/{name}", {"bytes": 0})["bytes"]) / stored_hours / 2**20, 2)
            for name, info in stats.items() if name != "keys" and not name.startswith("offsets/")
        }
    return result


RSS_CLASSES, RSS_EMBED = 10, 512


def write_synthetic_run(run_dir: Path, n_utterances: int, crop_seconds: int, seed: int) -> int:
    """A stage-3-ready run of random features (3-6 s utterances): spectrogram store, teacher cache, manifest.

    Returns the bytes on disk. All but 16 utterances are training data, so the training set grows with n."""
    rng = np.random.default_rng(seed)
    prepared, embeddings = runs.prepare_dir(run_dir), runs.embeddings_dir(run_dir)
    prepared.mkdir(parents=True)
    embeddings.mkdir(parents=True)
    classes = [f"id{i:05d}" for i in range(RSS_CLASSES)]
    n_frames = np.maximum(rng.uniform(3, 6, n_utterances) * VIDEO_FPS, crop_seconds * VIDEO_FPS).astype(int)
    pool = rng.standard_normal((int(n_frames.max()) * 4 * 3, 257), dtype=np.float32).astype(np.float16)
    entries = []
    spec_writer = create_store(prepared / "spectrograms.zarr", spectrogram_fields(257),
                               {"kind": "spectrograms", "video_fps": VIDEO_FPS, "spectrogram": {"bench": True}})
    fields = cache_fields(RSS_EMBED, RSS_CLASSES, "float16")
    cache_writer = create_store(embeddings / "voxceleb.zarr", fields, {
        "kind": "teacher-embeddings", "teacher_fingerprint": "bench", "embed_dim": RSS_EMBED,
        "num_classes": RSS_CLASSES, "class_names": classes, "video_fps": VIDEO_FPS,
        "segment_frames": SEGMENT_VIDEO_FRAMES, "window_seconds": crop_seconds, "teacher_sequential": False,
        "splits": ["train", "val"]})
    for i, n in enumerate(n_frames):
        key = f"{classes[i % RSS_CLASSES]}/bench/{i:06d}.wav"
        split = "train" if i >= 16 else ("val" if i < 8 else "test")
        entries.append(Entry(key, classes[i % RSS_CLASSES], split, int(n), n / VIDEO_FPS, key))
        offset = int(rng.integers(0, len(pool) - 4 * n))
        spec_writer.write(key, {"spectrogram": pool[offset : offset + 4 * n]})
        if split != "test":
            frames = rng.standard_normal((n, RSS_EMBED), dtype=np.float32).astype(np.float16)
            prob = rng.random(n, dtype=np.float32)
            soft = rng.random(RSS_CLASSES, dtype=np.float32)
            cache_writer.write(key, {
                "frames": frames, "frame_prob": prob, "frame_pred": rng.integers(0, RSS_CLASSES, n, dtype=np.int32),
                "peak": frames[int(prob.argmax())], "segments": frames[:: SEGMENT_VIDEO_FRAMES][: math.ceil(n / 25)],
                "soft": soft / soft.sum()})
    for writer in (spec_writer, cache_writer):
        writer.mark_complete()
        writer.close()
    write_manifest(prepared, entries, classes, [])
    return sum(p.stat().st_size for p in run_dir.rglob("*") if p.is_file())


# Stage 3 with the settings in argv[1] (JSON; null: only import it), then its own peak RSS
STAGE3_CHILD = """
import json, sys
from pipeline import config
from stages import bench, train_student
settings = json.loads(sys.argv[1])
if settings is not None:
    train_student.run(config.build(train_student.StudentConfig, settings))
print("HWM_KB", bench.status_kb("self", "VmHWM"))
"""


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants (DataLoader workers, torchrun's workers), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, queue = [], [root]
    while queue:
        pid = queue.pop()
        tree.append(pid)
        queue.extend(children.get(pid, []))
    return tree


def status_kb(pid: int | str, field: str) -> int:
    """A kB field of /proc/PID/status (VmRSS, VmHWM); 0 once the process has gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _stage3_peaks(settings: dict | None, what: str) -> tuple[int, int]:
    """Run STAGE3_CHILD; (its own VmHWM, the peak of its process tree's summed VmRSS sampled every 20 ms), kB."""
    child = subprocess.Popen([sys.executable, "-c", STAGE3_CHILD, json.dumps(settings)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    tree_peak = 0
    while child.poll() is None:
        tree_peak = max(tree_peak, sum(status_kb(pid, "VmRSS") for pid in process_tree(child.pid)))
        time.sleep(0.02)
    stdout, stderr = child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"bench: stage 3 on {what} failed:\n{stderr[-3000:]}")
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
    from pipeline.datasets.synthetic import SynthConfig, synthesize
    from stages import export_embeddings, prepare, train_teacher

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
    result["bytes_per_hour_mb"] = bytes_per_hour(run_dir)
    result["peak_rss"], _ = _timed("stage-3 peak RSS at two dataset sizes", lambda: measure_peak_rss(cfg, work))
    result["config"] = {key: (str(value) if isinstance(value, Path) else value) for key, value in asdict(cfg).items()}
    result["seconds"] = round(time.perf_counter() - began, 1)
    if cfg.out is not None:
        runs.write_json(cfg.out, result)
    return result

