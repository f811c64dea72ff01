"""Benchmark: face-crop storage per encoding (`avl bench-faces`): MB per hour of video and read+decode frames/s of
raw uint8 (as stored: zstd in zarr, gzip in HDF5) against one JPEG per frame, at each face size.

The faces are realistic, because JPEG sizes depend on the picture (random noise would make JPEG look
useless): talking heads from the synthetic face generator, rendered at the largest size and resized down, and,
given `--clips`, frames decoded from real talking-face videos (e.g. the MEAD clips of ../shared/data/mead), resized
from a centre crop. Each source becomes a face store per size, encoding and backend, written through the
stage 0 schema (`FaceStoreSpec`) and read back through `open_faces`, as stages 1 and 2 read. Reads are timed
single-process on a warm page cache: `window`, a random 5 s run of 125 frames (what stage 2 and a sequential teacher
read); `pick`, 8 random frames of an utterance (what stage 1 draws per utterance). With a GPU, JPEG decode on it is
timed too. MB per hour is the payload (each array's stored bytes; a raw-layout field's rows × item size, leaving out
the padding of its last chunk, which a large corpus does not feel); `voxceleb2_tb` scales it to VoxCeleb2's
2,442 hours. Prints one JSON object.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cache.schema import FaceStoreSpec
from cache.store import DISK_BACKENDS, SUFFIXES, array_stats, delete_store, open_store
from pipeline.config import ConfigError
from pipeline.datasets.synthetic.face import render_talking_face, sample_face
from pipeline.face_store import DEFAULT_JPEG_QUALITY, FACE_ENCODINGS, open_faces
from pipeline.media import centre_crop_resize, decode_video

VIDEO_FPS, WINDOW_FRAMES, PICK_FRAMES = 25, 125, 8
VOXCELEB2_HOURS = 2442
VIDEO_SUFFIXES = (".mp4", ".avi", ".mpg", ".flv", ".mkv", ".mov")


@dataclass(frozen=True)
class FaceBenchConfig:
    """Settings of the face-storage benchmark."""

    sizes: tuple[int, ...] = field(default=(64, 112, 224), metadata={"help": "Face sizes in pixels.", "min": 8})
    quality: int = field(default=DEFAULT_JPEG_QUALITY, metadata={"help": "JPEG quality.", "min": 1, "max": 100})
    synthetic_seconds: float = field(default=40.0, metadata={
        "help": "Seconds of synthetic talking faces (8 s utterances of different people); 0: none.", "min": 0.0})
    clips: Path | None = field(default=None, metadata={
        "help": "A directory of real talking-face videos to measure too (each clip is one utterance)."})
    clip_crop: float = field(default=1.0, metadata={
        "help": "Centre crop of the real clips, as a fraction of the frame's shorter side.", "above": 0.0, "max": 1.0})
    reads: int = field(default=60, metadata={"help": "Timed reads of each kind per store.", "min": 1})
    backends: tuple[str, ...] = field(default=DISK_BACKENDS, metadata={
        "help": "Storage backends to measure.", "choices": DISK_BACKENDS})
    gpu: bool = field(default=True, metadata={"help": "Also time JPEG decoding on a GPU when there is one."})
    dir: Path | None = field(default=None, metadata={"help": "Where to build the stores (default: a temporary one)."})
    seed: int = field(default=0, metadata={"help": "Seed of the synthetic faces and of the reads."})
    out: Path | None = field(default=None, metadata={"help": "Also write the JSON object here."})

    def validate(self) -> None:
        if not self.sizes or not self.backends or not set(self.backends) <= set(DISK_BACKENDS):
            raise ConfigError(f"bench-faces: sizes must be given and backends be among {list(DISK_BACKENDS)}, got "
                              f"sizes {list(self.sizes)}, backends {list(self.backends)}")
        if self.synthetic_seconds == 0 and self.clips is None:
            raise ConfigError("bench-faces: nothing to measure: synthetic_seconds is 0 and no --clips")


def synthetic_faces(seconds: float, size: int, seed: int) -> list[np.ndarray]:
    """8 s utterances, (T, size, size, 3) uint8 each, of a different synthetic person each, mouths moving."""
    rng = np.random.default_rng(seed)
    utterances, left = [], round(seconds * VIDEO_FPS)
    while left > 0:
        n_frames = min(8 * VIDEO_FPS, left)
        envelope = np.convolve(rng.random(n_frames + 4), np.ones(5) / 5, mode="valid")[:n_frames]  # syllable-paced
        frames, _ = render_talking_face(sample_face(rng), envelope, np.random.default_rng(rng.integers(1 << 31)), rng,
                                        size, VIDEO_FPS, noise=0.03)  # the synthetic corpus's default video noise
        utterances.append(frames)
        left -= n_frames
    return utterances


def clip_faces(directory: Path, crop: float, size: int) -> list[np.ndarray]:
    """Every video under `directory`, decoded at 25 fps and centre-cropped to (T, size, size, 3)."""
    paths = sorted(p for p in directory.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"{directory}: no video files ({', '.join(VIDEO_SUFFIXES)})")
    return [centre_crop_resize(decode_video(path, VIDEO_FPS), crop, size) for path in paths]


def resized(utterances: list[np.ndarray], size: int) -> list[np.ndarray]:
    """The same faces at another size (antialiased, as stage 0 resizes its crops)."""
    return utterances if utterances[0].shape[1] == size else [centre_crop_resize(u, 1.0, size) for u in utterances]


def write_faces(path: Path, utterances: list[np.ndarray], encoding: str, quality: int, backend: str) -> None:
    """A complete face store of `utterances`, written as stage 0 writes one."""
    size = utterances[0].shape[1]
    spec = FaceStoreSpec(dataset="bench", dataset_root="", video_fps=VIDEO_FPS, face_size=size, crop="bench",
                         encoding=encoding, quality=quality if encoding == "jpeg" else None)
    with spec.create(path, backend, overwrite=True) as writer:
        for index, frames in enumerate(utterances):
            writer.write(f"u{index:04d}", FACE_ENCODINGS[encoding].encode(frames, quality))
        writer.mark_complete()


def payload_bytes(path: Path) -> int:
    """Stored bytes of every array; a raw-layout array counted by its rows, without its last chunk's padding."""
    with open_store(path) as store:
        fields = store.fields
    total = 0
    for name, stats in array_stats(path).items():
        spec = fields.get(name)
        raw = spec is not None and spec.layout == "raw"
        total += stats["rows"] * int(np.prod(spec.row_shape, dtype=np.int64)) * np.dtype(spec.dtype).itemsize \
            if raw else stats["bytes"]
    return total


def frames_per_second(faces, kind: str, reads: int, rng: np.random.Generator, synchronize=None) -> float:
    """Frames read (and decoded) per second by `reads` random reads of `kind` (`window` or `pick`)."""
    keys, lengths = list(faces.keys), {key: faces.length(key) for key in faces.keys}

    def one_read() -> int:
        key = keys[int(rng.integers(len(keys)))]
        n_frames = lengths[key]
        if kind == "pick":
            return len(faces.take(key, rng.integers(0, n_frames, PICK_FRAMES)))
        start = int(rng.integers(0, max(1, n_frames - WINDOW_FRAMES + 1)))
        return len(faces.read_tensor(key, start, start + WINDOW_FRAMES))

    for _ in range(3):  # opens the handles, verifies the first chunks' checksums, warms a GPU decoder
        one_read()
    started, frames = time.perf_counter(), 0
    for _ in range(reads):
        frames += one_read()
    if synchronize is not None:
        synchronize()
    return frames / (time.perf_counter() - started)


def fidelity(reference: list[np.ndarray], faces) -> dict:
    """Mean absolute error (0-255) and PSNR (dB) of the stored faces against the originals."""
    errors = np.concatenate([(faces.read(f"u{i:04d}").astype(np.float32) - frames).ravel()
                             for i, frames in enumerate(reference)])
    mse = float(np.mean(errors**2))
    return {"mean_abs_error": round(float(np.abs(errors).mean()), 3),
            "psnr_db": round(10 * np.log10(255**2 / mse), 2) if mse > 0 else None}


def measure_store(path: Path, utterances: list[np.ndarray], encoding: str, cfg: FaceBenchConfig, backend: str,
                  hours: float) -> dict:
    """One store: MB per hour, read frames/s (CPU, and GPU for JPEG when asked and present), fidelity."""
    write_faces(path, utterances, encoding, cfg.quality, backend)
    mb_per_hour = payload_bytes(path) / hours / 2**20
    row = {"mb_per_hour": round(mb_per_hour, 1), "voxceleb2_tb": round(mb_per_hour * VOXCELEB2_HOURS / 2**20, 2)}
    rng = np.random.default_rng(cfg.seed)
    with open_faces(path) as faces:
        for kind in ("window", "pick"):
            row[f"{kind}_frames_per_second"] = round(frames_per_second(faces, kind, cfg.reads, rng), 1)
        row.update(fidelity(utterances, faces))
    if cfg.gpu and encoding == "jpeg" and torch.cuda.is_available():
        with open_faces(path, decode_device="cuda") as faces:
            row["window_frames_per_second_gpu"] = round(
                frames_per_second(faces, "window", cfg.reads, rng, torch.cuda.synchronize), 1)
    delete_store(path)
    return row


def measure(cfg: FaceBenchConfig, directory: Path) -> dict:
    """Every source × size × encoding × backend."""
    sources: dict[str, list[np.ndarray]] = {}
    largest = max(cfg.sizes)
    if cfg.synthetic_seconds > 0:
        sources["synthetic"] = synthetic_faces(cfg.synthetic_seconds, largest, cfg.seed)
    if cfg.clips is not None:
        sources[f"clips:{cfg.clips.name}"] = clip_faces(cfg.clips, cfg.clip_crop, largest)
    result = {"quality": cfg.quality, "threads": torch.get_num_threads(), "window_frames": WINDOW_FRAMES,
              "pick_frames": PICK_FRAMES, "gpu": torch.cuda.get_device_name() if cfg.gpu and torch.cuda.is_available()
              else None, "sources": {}, "results": {}}
    for name, utterances in sources.items():
        n_frames = sum(len(u) for u in utterances)
        hours = n_frames / VIDEO_FPS / 3600
        result["sources"][name] = {"utterances": len(utterances), "frames": n_frames,
                                   "seconds": round(n_frames / VIDEO_FPS, 1)}
        for size in cfg.sizes:
            faces = resized(utterances, size)
            for encoding in FACE_ENCODINGS:
                for backend in cfg.backends:
                    path = directory / f"{encoding}-{size}{SUFFIXES[backend]}"
                    row = measure_store(path, faces, encoding, cfg, backend, hours)
                    result["results"].setdefault(name, {}).setdefault(str(size), {}).setdefault(
                        encoding, {})[backend] = row
    result["jpeg_vs_raw"] = {
        name: {size: {backend: round(by_encoding["raw"][backend]["mb_per_hour"]
                                     / by_encoding["jpeg"][backend]["mb_per_hour"], 2) for backend in cfg.backends}
               for size, by_encoding in by_size.items()}
        for name, by_size in result["results"].items()}
    return result


def run(cfg: FaceBenchConfig) -> dict:
    """Measure in `cfg.dir` (or a temporary directory), print the result as JSON and return it."""
    if cfg.dir is not None:
        cfg.dir.mkdir(parents=True, exist_ok=True)
        result = measure(cfg, cfg.dir)
    else:
        with tempfile.TemporaryDirectory(prefix="avl-bench-faces-") as directory:
            result = measure(cfg, Path(directory))
    text = json.dumps(result, indent=2)
    print(text)
    if cfg.out is not None:
        cfg.out.write_text(text + "\n")
    return result
