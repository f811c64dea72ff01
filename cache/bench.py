"""Benchmark: random-access training reads from each on-disk backend against the same stores in memory, and
bytes on disk per hour of video for each target kind (`avl bench-store`).

Builds a synthetic spectrogram store and teacher cache of N utterances (3-8 s; 257-bin float16
spectrogram rows at 100/s, 512-d float16 frame embeddings at 25/s; the stage 0 and stage 2 schemas)
with each backend, then times batches of 32 stage-3 reads: a random 5 s crop on the 1 s grid of
the spectrogram, the crop's frame_prob to find its peak frame, and that one frame's embedding.
The in-memory backend is the baseline: the same reader over arrays in memory, so the ratio is what
reading from disk costs. Prints one JSON object. The data are random, which compresses worse than
real features, so the byte counts are an upper bound; the stores were just written, so reads come
from a warm page cache. `--no-checksums` writes the stores without chunk checksums, as format 1 did, to
measure what checking them costs.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cache.base import UncheckedStoreWarning
from cache.bench_crops import measure_crop_reads
from cache.inspect import disk_usage
from cache.schema import cache_fields, spectrogram_fields
from cache.store import DISK_BACKENDS, SUFFIXES, array_stats, create_store, delete_store, open_store

VIDEO_FPS, SPEC_PER_VIDEO_FRAME, SEGMENT_FRAMES = 25, 4, 25
N_FREQ, EMBED_DIM, NUM_CLASSES = 257, 512, 1251  # VoxCeleb1 identification has 1,251 speakers
BATCH, CROP_SECONDS = 32, 5
TARGET_KINDS = {"spectrogram": "spectrograms", "frames": "cache", "segments": "cache", "peak": "cache", "soft": "cache"}


@dataclass(frozen=True)
class StoreBenchConfig:
    """Settings of the storage benchmark."""

    utterances: int = field(default=400, metadata={"help": "Utterances in the synthetic stores."})
    batches: int = field(default=50, metadata={"help": "Batches of 32 timed per store."})
    dir: Path | None = field(default=None, metadata={
        "help": "Where to build the stores (default: a temporary directory)."})
    seed: int = field(default=0, metadata={"help": "Seed of the synthetic data and of the batches drawn."})
    checksums: bool = field(default=True, metadata={
        "help": "Checksum every chunk, as stages do; --no-checksums only measures what that costs."})


def synthesize(n_utterances: int, seed: int) -> tuple[list[str], np.ndarray, dict[str, list[np.ndarray]]]:
    """Keys, video frame counts and every field's rows per utterance (random, realistic shapes)."""
    rng = np.random.default_rng(seed)
    n_frames = np.round(rng.uniform(3, 8, n_utterances) * VIDEO_FPS).astype(int)
    keys = [f"id{10001 + i // 20}/vid{i % 7:05d}/{i:05d}.wav" for i in range(n_utterances)]
    # rows are views of two shared random pools: drawing fresh numbers for every row would dominate the run
    pool = rng.standard_normal((int(n_frames.max()) * SPEC_PER_VIDEO_FRAME * 4, N_FREQ), dtype=np.float32)
    pool = pool.astype(np.float16)
    embeddings = rng.standard_normal((int(n_frames.sum()), EMBED_DIM), dtype=np.float32).astype(np.float16)
    fields: dict[str, list[np.ndarray]] = {name: [] for name in ("spectrogram", *(f.name for f in _cache_fields()))}
    start = 0
    for n in n_frames:
        offset = int(rng.integers(0, len(pool) - n * SPEC_PER_VIDEO_FRAME))
        frames = embeddings[start : start + n]
        start += n
        prob = rng.random(n, dtype=np.float32)
        soft = rng.random(NUM_CLASSES, dtype=np.float32)
        fields["spectrogram"].append(pool[offset : offset + n * SPEC_PER_VIDEO_FRAME])
        fields["frames"].append(frames)
        fields["frame_prob"].append(prob)
        fields["frame_pred"].append(rng.integers(0, NUM_CLASSES, n, dtype=np.int32))
        fields["segments"].append(frames[: math.ceil(n / SEGMENT_FRAMES) * SEGMENT_FRAMES : SEGMENT_FRAMES])
        fields["peak"].append(frames[int(prob.argmax())])
        fields["soft"].append(soft / soft.sum())
    return keys, n_frames, fields


def _cache_fields():
    return cache_fields(EMBED_DIM, NUM_CLASSES, "float16")


def write_stores(directory: Path, backend: str, keys: list[str], fields: dict[str, list[np.ndarray]],
                 checksums: bool = True) -> dict[str, Path]:
    """The spectrogram store and the teacher cache of one backend."""
    paths = {"spectrograms": directory / f"spectrograms{SUFFIXES[backend]}", "cache": directory / f"cache{SUFFIXES[backend]}"}
    schemas = {"spectrograms": spectrogram_fields(N_FREQ), "cache": _cache_fields()}
    for store, path in paths.items():
        with create_store(path, schemas[store], {"kind": f"bench-{store}"}, backend=backend,
                          checksums=checksums) as writer:
            for i, key in enumerate(keys):
                writer.write(key, {spec.name: fields[spec.name][i] for spec in schemas[store]})
            writer.mark_complete()
    return paths


def read_batch(spectrograms, cache, keys: list[str], n_frames: dict[str, int], rng: np.random.Generator) -> list:
    """Stage 3's reads for one batch: 5 s crops on the 1 s grid (repeat-padded) and their peak-frame targets."""
    items = []
    for key in rng.choice(keys, BATCH):
        whole_seconds = n_frames[key] // SEGMENT_FRAMES
        start = int(rng.integers(0, max(0, whole_seconds - CROP_SECONDS) + 1))
        spectrogram = spectrograms.read(key, "spectrogram", start * 100, (start + CROP_SECONDS) * 100)
        if len(spectrogram) < CROP_SECONDS * 100:
            spectrogram = np.resize(spectrogram, (CROP_SECONDS * 100, N_FREQ))  # repeat-pads, as stage 3 does
        first = start * SEGMENT_FRAMES
        frame_prob = cache.read(key, "frame_prob", first, first + CROP_SECONDS * SEGMENT_FRAMES)
        peak = first + int(frame_prob.argmax())
        items.append((spectrogram.astype(np.float32), cache.read(key, "frames", peak, peak + 1)[0]))
    return items


def batches_per_second(spectrograms, cache, keys, n_frames, n_batches: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    for _ in range(3):  # opens the handles
        read_batch(spectrograms, cache, keys, n_frames, rng)
    started = time.perf_counter()
    for _ in range(n_batches):
        read_batch(spectrograms, cache, keys, n_frames, rng)
    return n_batches / (time.perf_counter() - started)


def measure(n_utterances: int, n_batches: int, directory: Path, seed: int = 0, checksums: bool = True) -> dict:
    """Build the stores in `directory`, time the reads, and measure the bytes on disk."""
    keys, n_frames, fields = synthesize(n_utterances, seed)
    frames_of = dict(zip(keys, n_frames.tolist()))
    hours = n_frames.sum() / VIDEO_FPS / 3600
    memory = write_stores(directory / "memory", "memory", keys, fields)
    try:
        memory_rate = batches_per_second(open_store(memory["spectrograms"]), open_store(memory["cache"]), keys,
                                         frames_of, n_batches, seed + 1)
    finally:
        for path in memory.values():
            delete_store(path)
    result = {
        "utterances": n_utterances, "hours_of_video": round(float(hours), 3), "batch": BATCH,
        "crop_seconds": CROP_SECONDS, "batches_timed": n_batches, "checksums": checksums,
        "memory_batches_per_second": round(memory_rate, 1), "backends": {},
    }
    for backend in DISK_BACKENDS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UncheckedStoreWarning)  # stores without checksums are made on purpose
            paths = write_stores(directory / backend, backend, keys, fields, checksums)
            spectrograms, cache = open_store(paths["spectrograms"]), open_store(paths["cache"])
        rate = batches_per_second(spectrograms, cache, keys, frames_of, n_batches, seed + 1)
        stats = {store: array_stats(path) for store, path in paths.items()}
        per_hour = {
            kind: round((stats[store][kind]["bytes"] + stats[store].get(f"offsets/{kind}", {"bytes": 0})["bytes"])
                        / hours / 2**20, 1)
            for kind, store in TARGET_KINDS.items()
        }
        usage = [disk_usage(path) for path in paths.values()]
        result["backends"][backend] = {
            "batches_per_second": round(rate, 1),
            "ratio_to_memory": round(rate / memory_rate, 3),
            "files": sum(files for _, files in usage),
            "bytes_on_disk": sum(size for size, _ in usage),
            "mb_on_disk_per_hour_of_video": per_hour,
        }
    crops = directory / "crops"
    crops.mkdir(exist_ok=True)
    result["crop_reads"] = measure_crop_reads(crops, n_utterances, seed=seed)
    return result


def run(cfg: StoreBenchConfig) -> dict:
    """Measure in `cfg.dir` (or a temporary directory), print the result as JSON and return it."""
    if cfg.dir is not None:
        result = measure(cfg.utterances, cfg.batches, cfg.dir, cfg.seed, cfg.checksums)
    else:
        with tempfile.TemporaryDirectory(prefix="avl-bench-") as directory:
            result = measure(cfg.utterances, cfg.batches, Path(directory), cfg.seed, cfg.checksums)
    print(json.dumps(result, indent=2))
    return result
