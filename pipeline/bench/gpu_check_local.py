"""The GPU check's checks that run in the calling process (`avl bench-gpu`, LOCAL_CHECKS), and the synthetic runs
they read (no media, no PyAV):

- `stage2-forward`: stage 2's teacher batches (its batch size, inference mode, autocast, outputs back to the host)
  on frames held in memory: the device-bound frames/s, also with channels-last weights (which stage 2 does not set);
- `jpeg-decode`: `torchvision.io.decode_jpeg` of batches of face crops encoded in-process, on the device and on the
  CPU, at each size; then the face store's own reader (`open_faces` decoding on the device, as stage 1's evaluation
  opens it) reading whole training windows of a JPEG face store;
- `stage3-loader`, `stage1-loader`: stage 3's and stage 1's DataLoaders (`training.build_loader` over `Crops` and
  `RandomFrames`) from on-disk stores to the device.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch

from pipeline import runs
from pipeline.bench.data import EMBED_DIM, smooth_faces, synthetic_entries, write_face_run, write_synthetic_run
from pipeline.checkpoints import load_teacher, save_teacher
from pipeline.data import Crops, RandomFrames, collate_frames
from pipeline.distributed import SINGLE_PROCESS
from pipeline.face_store import DEFAULT_JPEG_QUALITY, open_faces
from pipeline.features import VIDEO_FPS
from pipeline.bench.gpu_check import CheckContext, pinned, sync, timed_loop
from pipeline.manifest import read_classes, read_splits
from pipeline.models.spec import ModelSpec
from pipeline.models.teachers import build_teacher
from pipeline.targets import teacher_outputs
from pipeline.training import TrainingConfig, autocast_dtype, build_loader


def full_teacher_checkpoint(ctx: CheckContext) -> Path:
    """The sizes' teacher (full ResNet34 unless tiny; random weights) saved as stage 1 saves one, once per work dir."""
    path = ctx.work / "teacher" / "teacher.pt"
    if not path.exists():
        _, classes = synthetic_entries(0, ctx.sizes.num_classes, 1, 1, np.random.default_rng(0))
        spec = ModelSpec("resnet34", ctx.sizes.tiny_models, ctx.sizes.num_classes, EMBED_DIM)
        save_teacher(path, build_teacher(spec), classes, ctx.sizes.face_size, None)
    return path


def face_run(ctx: CheckContext) -> Path:
    """A stage-2-ready run (manifest and face store in the context's encoding, no media) in the work dir, written
    once."""
    run_dir = ctx.work / "faces-run"
    if not (runs.prepare_dir(run_dir) / "manifest.tsv").exists():
        write_face_run(run_dir, ctx.sizes.face_utterances, ctx.sizes.face_frames, ctx.sizes.face_size,
                       ctx.sizes.num_classes, ctx.seed, ctx.store, ctx.face_encoding)
    return run_dir


def stage2_forward(ctx: CheckContext) -> dict:
    """Stage 2's teacher loop over one batch of frames held in memory, as `export-embeddings` runs it; then the same
    with channels-last weights."""
    sizes, device = ctx.sizes, ctx.device
    loaded = load_teacher(full_teacher_checkpoint(ctx), device)
    frames = pinned(torch.from_numpy(smooth_faces(sizes.batch_frames, sizes.face_size, ctx.seed)), device)
    dtype = autocast_dtype("auto", device)  # stage 2's: bf16 on CUDA

    def once() -> tuple[np.ndarray, np.ndarray]:
        return teacher_outputs(loaded.model, frames, sizes.batch_frames, device)  # stage 2's own teacher pass

    result = {"batch_frames": sizes.batch_frames, "face_size": sizes.face_size,
              "precision": str(dtype).removeprefix("torch.") if dtype else "float32",
              "teacher_parameters": sum(p.numel() for p in loaded.model.parameters())}
    for label, channels_last in (("", False), ("channels_last_", True)):
        if channels_last:
            loaded.model.to(memory_format=torch.channels_last)
        n, seconds, _ = timed_loop(once, ctx, ctx.budget_seconds / 2)
        result[f"{label}frames_per_second"] = round(n * sizes.batch_frames / seconds, 1)
        result[f"{label}batches_timed"] = n
    return result


def jpeg_decode(ctx: CheckContext) -> dict:
    """Batched `decode_jpeg` of in-process `encode_jpeg` crops on each place, then the face store's reader decoding
    on the device; decoded frames must match what was encoded within JPEG's loss."""
    from torchvision.io import decode_jpeg, encode_jpeg

    sizes, rows = ctx.sizes, {}
    places = list(dict.fromkeys([torch.device("cpu"), ctx.device]))
    budget = ctx.budget_seconds / (len(sizes.jpeg_sizes) * (len(places) + 1))
    window = sizes.crop_seconds * VIDEO_FPS  # the frames of a training window
    for size in sizes.jpeg_sizes:
        faces = torch.from_numpy(smooth_faces(sizes.jpeg_frames, size, ctx.seed)).permute(0, 3, 1, 2).contiguous()
        encoded = encode_jpeg(list(faces), quality=DEFAULT_JPEG_QUALITY)  # N × (3, S, S) → N JPEGs
        row = {"bytes_per_frame": round(float(np.mean([len(data) for data in encoded])), 1)}
        row["mb_per_hour"] = round(row["bytes_per_frame"] * VIDEO_FPS * 3600 / 2**20, 1)
        for place in places:
            n, seconds, _ = timed_loop(lambda: decode_jpeg(encoded, device=place), ctx, budget)
            row[f"{place.type}_frames_per_second"] = round(n * len(encoded) / seconds, 1)
        decoded = torch.stack(decode_jpeg(encoded, device=ctx.device)).cpu()
        row["mean_abs_error"] = round(float((decoded.float() - faces.float()).abs().mean()), 2)
        if decoded.shape != faces.shape or not row["mean_abs_error"] < 8:
            raise ValueError(f"JPEG at {size} px: decoded {tuple(decoded.shape)} with mean abs error "
                             f"{row['mean_abs_error']} (encoded {tuple(faces.shape)})")
        run_dir = ctx.work / f"jpeg-{size}"
        shutil.rmtree(run_dir, ignore_errors=True)
        key = write_face_run(run_dir, 1, window, size, 1, ctx.seed, ctx.store, "jpeg")[0].key
        with open_faces(runs.find_store(runs.prepare_dir(run_dir), "faces"), decode_device=ctx.device) as store:
            n, seconds, _ = timed_loop(lambda: store.read_tensor(key), ctx, budget)
        row["store_window_frames_per_second"] = round(n * window / seconds, 1)
        rows[str(size)] = row
    return {"quality": DEFAULT_JPEG_QUALITY, "frames_per_batch": sizes.jpeg_frames, "store_window_frames": window,
            "store_decode_device": ctx.device.type, "sizes": rows}


def time_loader(loader, ctx: CheckContext, items_per_batch: int, unit: str) -> dict:
    """Batches/s from a DataLoader to the device over whole epochs (a stage's epoch restarts its workers), after one
    warm-up epoch, until `loader_epochs` or the budget."""
    n = seconds = moved = 0
    for epoch in range(1 + ctx.sizes.loader_epochs):
        if epoch > 1 and seconds >= ctx.budget_seconds:
            break
        started, batches = time.perf_counter(), 0
        for batch in loader:
            on_device = [tensor.to(ctx.device, non_blocking=True) for tensor in batch]
            moved += sum(tensor.nbytes for tensor in on_device) * (epoch > 0)
            batches += 1
        sync(ctx.device)
        if epoch > 0:
            n, seconds = n + batches, seconds + time.perf_counter() - started
    if n == 0:
        raise ValueError(f"the loader made no batch of {items_per_batch} (too few utterances)")
    return {"batches_per_second": round(n / seconds, 2), f"{unit}_per_second": round(n * items_per_batch / seconds, 1),
            "megabytes_per_second": round(moved / seconds / 2**20, 1), "batches_timed": n,
            "batch": items_per_batch, "num_workers": ctx.sizes.num_workers, "store": ctx.store}


def stage3_loader(ctx: CheckContext) -> dict:
    """Stage 3's loader (`Crops`, crop-peak targets) from a synthetic spectrogram store and teacher cache."""
    run_dir, started = ctx.work / "spectrograms-run", time.perf_counter()
    if not runs.prepare_dir(run_dir).exists():
        write_synthetic_run(run_dir, ctx.sizes.loader_utterances, ctx.sizes.crop_seconds, ctx.seed,
                            backend=ctx.store)
    data_seconds = time.perf_counter() - started
    prepared = runs.prepare_dir(run_dir)
    classes, train = read_classes(prepared), read_splits(prepared)["train"]
    dataset = Crops(train, [classes.index(entry.label) for entry in train], runs.find_store(prepared, "spectrograms"),
                    runs.find_store(runs.embeddings_dir(run_dir), "voxceleb"), ctx.sizes.crop_seconds, "crop-peak")
    settings = TrainingConfig(batch_size=ctx.sizes.student_batch, num_workers=ctx.sizes.num_workers)
    loader, _ = build_loader(dataset, settings, SINGLE_PROCESS, ctx.device, ctx.seed)
    return {**time_loader(loader, ctx, ctx.sizes.student_batch, "crops"), "data_seconds": round(data_seconds, 1)}


def stage1_loader(ctx: CheckContext) -> dict:
    """Stage 1's loader (`RandomFrames`, decoding in its workers) from the synthetic face store."""
    prepared = runs.prepare_dir(face_run(ctx))
    classes, train = read_classes(prepared), read_splits(prepared)["train"]
    dataset = RandomFrames(runs.find_store(prepared, "faces"), [entry.key for entry in train],
                           [classes.index(entry.label) for entry in train], ctx.sizes.frames_per_utterance)
    settings = TrainingConfig(batch_size=ctx.sizes.teacher_batch, num_workers=ctx.sizes.num_workers)
    loader, _ = build_loader(dataset, settings, SINGLE_PROCESS, ctx.device, ctx.seed, collate=collate_frames)
    result = time_loader(loader, ctx, ctx.sizes.teacher_batch * ctx.sizes.frames_per_utterance, "frames")
    return {**result, "face_size": ctx.sizes.face_size, "face_encoding": ctx.face_encoding}


LOCAL_CHECKS = {"stage2-forward": stage2_forward, "jpeg-decode": jpeg_decode, "stage3-loader": stage3_loader,
                "stage1-loader": stage1_loader}
