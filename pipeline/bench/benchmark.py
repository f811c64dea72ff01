"""What precompute-then-train buys, measured (`avl bench`): stage-3 training steps/s with crops and targets read
from the stores against the same arrays in memory, an epoch with cached targets against one with a live teacher
(and a few batches with the paper's full-size teacher live next to the tiny one), MB on disk per hour of video, and
the peak memory of a process and its workers.

`cfg` below is the benchmark's config (`stages.bench.BenchConfig`): its sizes and settings.
"""

from __future__ import annotations

import copy
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from cache.store import array_stats, copy_store, delete_store, open_store
from pipeline import config as config_io
from pipeline import runs
from pipeline.checkpoints import load_teacher, save_teacher
from pipeline.data import Crops
from pipeline.distill import build_method
from pipeline.features import (
    SEGMENT_VIDEO_FRAMES,
    SPEC_FRAMES_PER_SECOND,
    VIDEO_FPS,
    LogSpectrogram,
    SpectrogramParams,
    random_crop,
    repeat_pad,
)
from pipeline.manifest import Entry, read_classes, read_manifest
from pipeline.media import face_crops, load_audio_visual
from pipeline.models.spec import ModelSpec
from pipeline.models.students import build_student
from pipeline.models.teachers import build_teacher
from pipeline.processes import process_tree, status_kb
from pipeline.runs import find_store
from pipeline.steps import StudentStep
from pipeline.training import autocast, autocast_dtype, speed_settings


class _LiveCrops(torch.utils.data.Dataset):
    """What stage 3 would do without a cache: decode each crop's video and audio from the media file
    (only the crop's time range), featurise the audio and crop the faces; the teacher then runs on them."""

    def __init__(self, entries: list[Entry], labels: list[int], crop_seconds: int, face_size: int):
        self.entries, self.labels, self.crop_seconds, self.face_size = entries, labels, crop_seconds, face_size
        self.spectrogram = LogSpectrogram(SpectrogramParams())

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int):
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
    with autocast(autocast_dtype("auto", device), device):  # as stage 2 runs it: bf16 on CUDA
        embeddings, logits = teacher(torch.cat(faces).to(device))
    confidence = logits.float().softmax(dim=1).max(dim=1).values
    targets, start = [], 0
    for crop in faces:
        peak = start + int(confidence[start : start + len(crop)].argmax())
        targets.append(embeddings[peak].float())
        start += len(crop)
    return torch.stack(targets)


def _student_step(spec: ModelSpec, device):
    """Stage 3's training step with stage 3's default speed settings on `device` (CUDA: channels-last, bf16)."""
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


def _loader(dataset, cfg, n_batches: int, seed: int, collate=None, shuffle_epoch: bool = False):
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


def _training_split(run_dir: Path) -> tuple[list[Entry], list[int], list[str]]:
    """The run's training entries, their class indices and the class names."""
    prepared = runs.prepare_dir(run_dir)
    classes = read_classes(prepared)
    train = [e for e in read_manifest(prepared) if e.split == "train"]
    return train, [classes.index(e.label) for e in train], classes


def measure_input_pipeline(cfg, run_dir: Path, device) -> dict:
    """Training steps/s and loader batches/s, stores vs the same arrays in memory."""
    prepared = runs.prepare_dir(run_dir)
    train, labels, classes = _training_split(run_dir)
    spectrogram_path, cache_path = find_store(prepared, "spectrograms"), find_store(runs.embeddings_dir(run_dir), "voxceleb")
    keys = [e.key for e in train]
    sources = {
        "store": (spectrogram_path, cache_path),
        "memory": (copy_store(spectrogram_path, spectrogram_path.with_suffix(".mem"), keys, ("spectrogram",)),
                   copy_store(cache_path, cache_path.with_suffix(".mem"), keys, ("frame_prob", "frames"))),
    }
    embed_dim = int(sources["memory"][1].attrs["embed_dim"])
    step, optimiser = _student_step(ModelSpec(cfg.arch, cfg.tiny, len(classes), embed_dim), device)
    initial = copy.deepcopy((step.state_dict(), optimiser.state_dict()))
    warmup = 2
    seconds = {"store": 0.0, "memory": 0.0}
    loader_seconds = {"store": 0.0, "memory": 0.0}
    for round_index in range(cfg.rounds):
        for name in ("memory", "store") if round_index % 2 == 0 else ("store", "memory"):
            dataset = Crops(train, labels, *sources[name], cfg.crop_seconds, "crop-peak")
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
    for memory in sources["memory"]:
        delete_store(memory.path)
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


def _time_distillation(batches, spec: ModelSpec, device, teacher=None) -> dict:
    """Train a fresh student (stage 3's step) on `batches`, pairs (timed, batch); with a live `teacher`, a batch's
    third item is its crops' faces and the targets come from the teacher. Totals over the timed batches: seconds,
    seconds waiting for input, seconds in the teacher, and their count."""
    step, optimiser = _student_step(spec, device)
    step.train()
    totals = {"seconds": 0.0, "waiting": 0.0, "teacher": 0.0, "batches": 0}
    _sync(device)
    last = time.perf_counter()
    for timed, (spectrogram, label, target) in batches:
        tick = time.perf_counter()
        if teacher is not None:
            target = _live_targets(teacher, target, device)
            _sync(device)
        taught = time.perf_counter()
        _train_step(step, optimiser, spectrogram, label, target, device)
        _sync(device)
        now = time.perf_counter()
        if timed:  # from the previous batch's end: a new epoch's iterator start counts as waiting for input
            totals["seconds"] += now - last
            totals["waiting"] += tick - last
            totals["teacher"] += taught - tick
            totals["batches"] += 1
        last = now
    return totals


def _cached_crops(run_dir: Path, train: list[Entry], labels: list[int], crop_seconds: int) -> Crops:
    prepared = runs.prepare_dir(run_dir)
    return Crops(train, labels, find_store(prepared, "spectrograms"),
                 find_store(runs.embeddings_dir(run_dir), "voxceleb"), crop_seconds, "crop-peak")


def measure_live_teacher(cfg, run_dir: Path, device) -> dict:
    """One epoch of the same student: cached targets against a live teacher decoding and running every step."""
    train, labels, classes = _training_split(run_dir)
    loaded = load_teacher(runs.teacher_checkpoint(run_dir), device)
    spec = ModelSpec(cfg.arch, cfg.tiny, len(classes), loaded.model.spec.embed_dim)
    n_batches = len(train) // cfg.batch_size
    if n_batches == 0:
        raise config_io.ConfigError(f"bench: {len(train)} training utterances make no batch of {cfg.batch_size}; "
                                    "pass more --speakers/--utterances or a smaller --batch-size")

    results = {}
    for name in ("cached", "live"):
        if name == "cached":
            loader = _loader(_cached_crops(run_dir, train, labels, cfg.crop_seconds), cfg, n_batches, cfg.seed,
                             shuffle_epoch=True)
        else:
            dataset = _LiveCrops(train, labels, cfg.crop_seconds, int(loaded.face_size))
            loader = _loader(dataset, cfg, n_batches, cfg.seed, collate=_collate_live, shuffle_epoch=True)
        # epoch 0 warms up: worker start-up, first reads, allocator
        batches = ((epoch > 0, batch) for epoch in range(cfg.epochs + 1) for batch in loader)
        totals = _time_distillation(batches, spec, device, loaded.model if name == "live" else None)
        results[name] = {"epoch_seconds": round(totals["seconds"] / cfg.epochs, 2), "batches_per_epoch": n_batches,
                         "waiting_for_input_share": round(totals["waiting"] / totals["seconds"], 3)}
        if name == "live":
            results[name]["teacher_share"] = round(totals["teacher"] / totals["seconds"], 3)
    results["speedup"] = round(results["live"]["epoch_seconds"] / results["cached"]["epoch_seconds"], 2)
    results["note"] = ("live: each item decodes only its crop's time range (PyAV), then spectrogram, face crops and "
                       "the teacher on the crop's frames; mean of the timed epochs after a warm-up epoch")
    return results


def save_full_teacher(run_dir: Path, path: Path) -> Path:
    """The paper's teacher for this run: a full-size ResNet34 (random weights: only its speed matters) for the run's
    classes and face size, saved at `path` as stage 1 saves one."""
    _, _, classes = _training_split(run_dir)
    tiny = load_teacher(runs.teacher_checkpoint(run_dir))
    teacher = build_teacher(ModelSpec("resnet34", False, len(classes), tiny.model.spec.embed_dim))
    return save_teacher(path, teacher, classes, int(tiny.face_size), None)


def measure_live_teachers(cfg, run_dir: Path, device, teachers: dict[str, Path]) -> dict:
    """A few stage-3 batches of `cfg.full_teacher_batch` crops with cached targets and with each teacher of
    `teachers` (name → checkpoint) live, after one warm-up batch each; batches are drawn with replacement."""
    train, labels, classes = _training_split(run_dir)
    loaded = {name: load_teacher(path, device) for name, path in teachers.items()}
    face_sizes = {int(teacher.face_size) for teacher in loaded.values()}
    if len(face_sizes) != 1:
        raise ValueError(f"bench: the live teachers were trained on different face sizes {sorted(face_sizes)}")
    (face_size,) = face_sizes
    embed_dim = next(iter(loaded.values())).model.spec.embed_dim
    small = replace(cfg, batch_size=cfg.full_teacher_batch)
    spec = ModelSpec(cfg.arch, cfg.tiny, len(classes), embed_dim)
    n_batches = 1 + cfg.full_teacher_steps  # the first warms up: worker start-up, first reads, allocator

    def cached() -> dict:
        loader = _loader(_cached_crops(run_dir, train, labels, cfg.crop_seconds), small, n_batches, cfg.seed)
        return _time_distillation(((index > 0, batch) for index, batch in enumerate(loader)), spec, device)

    cached()  # untimed: the first steps at a new batch size (allocator, kernel caches) would count against it alone
    totals = {"cached": cached()}
    for name, teacher in loaded.items():
        live = _loader(_LiveCrops(train, labels, cfg.crop_seconds, face_size), small, n_batches, cfg.seed,
                       collate=_collate_live)
        totals[f"live_{name}"] = _time_distillation(((index > 0, batch) for index, batch in enumerate(live)), spec,
                                                    device, teacher.model)
    per_batch = {name: total["seconds"] / total["batches"] for name, total in totals.items()}
    return {
        "face_size": face_size, "crop_seconds": cfg.crop_seconds,
        "batch": cfg.full_teacher_batch, "batches_timed": cfg.full_teacher_steps,
        "teacher_parameters": {name: sum(p.numel() for p in teacher.model.parameters())
                               for name, teacher in loaded.items()},
        "seconds_per_batch": {name: round(seconds, 3) for name, seconds in per_batch.items()},
        # the parts of a batch's time: the live teacher's forward, and the wait for the loader's workers (decoding)
        "teacher_seconds_per_batch": {name: round(total["teacher"] / total["batches"], 3)
                                      for name, total in totals.items() if name != "cached"},
        "waiting_seconds_per_batch": {name: round(total["waiting"] / total["batches"], 3)
                                      for name, total in totals.items()},
        "speedup": {name: round(per_batch[f"live_{name}"] / per_batch["cached"], 2) for name in loaded},
    }


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


def run_sampling_rss(command: list[str], what: str) -> tuple[str, int]:
    """Run `command` to its end; (its stdout, the peak of its process tree's summed VmRSS sampled every 20 ms, kB).
    `what` names the run if it fails."""
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tree_peak = 0
    while child.poll() is None:
        tree_peak = max(tree_peak, sum(status_kb(pid, "VmRSS") for pid in process_tree(child.pid)))
        time.sleep(0.02)
    stdout, stderr = child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"bench: {what} failed:\n{stderr[-3000:]}")
    return stdout, tree_peak
