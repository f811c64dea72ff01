"""Stage-ready runs of random features written straight into the stores (no media, no decoding): what `avl bench`
(peak RSS at two dataset sizes) and `avl bench-gpu` (loaders, stage 2) measure on, on any machine, PyAV or not."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from cache.schema import FaceStoreSpec, TeacherCacheSpec, spectrogram_fields
from cache.store import create_store
from pipeline import runs
from pipeline.face_store import DEFAULT_JPEG_QUALITY, FACE_ENCODINGS
from pipeline.features import SEGMENT_VIDEO_FRAMES, VIDEO_FPS
from pipeline.manifest import Entry, manifest_hash, write_manifest

EMBED_DIM = 512
HELD_OUT = 16  # utterances of val (the first 8) and test (the next 8); the rest are training data


def synthetic_entries(n_utterances: int, n_classes: int, min_frames: int, max_frames: int,
                      rng: np.random.Generator) -> tuple[list[Entry], list[str]]:
    """Manifest entries of `n_utterances` utterances of min..max video frames and the class names; the first 16
    are val and test when there are more than 16, all are training data otherwise."""
    classes = [f"id{i:05d}" for i in range(n_classes)]
    n_frames = rng.integers(min_frames, max_frames + 1, n_utterances)
    entries = []
    for i, n in enumerate(n_frames):
        key = f"{classes[i % n_classes]}/bench/{i:06d}.wav"
        split = "train" if i >= HELD_OUT or n_utterances <= HELD_OUT else ("val" if i < HELD_OUT // 2 else "test")
        entries.append(Entry(key, classes[i % n_classes], split, int(n), n / VIDEO_FPS, key))
    return entries, classes


def write_synthetic_run(run_dir: Path, n_utterances: int, crop_seconds: int, seed: int, n_classes: int = 10,
                        backend: str = "zarr") -> int:
    """A stage-3-ready run of random features (3-6 s utterances): spectrogram store, teacher cache, manifest.

    Returns the bytes on disk. All but 16 utterances are training data, so the training set grows with n."""
    rng = np.random.default_rng(seed)
    prepared, embeddings = runs.prepare_dir(run_dir), runs.embeddings_dir(run_dir)
    prepared.mkdir(parents=True)
    embeddings.mkdir(parents=True)
    entries, classes = synthetic_entries(n_utterances, n_classes, max(3 * VIDEO_FPS, crop_seconds * VIDEO_FPS),
                                         max(6 * VIDEO_FPS, crop_seconds * VIDEO_FPS), rng)
    longest = max(entry.n_video_frames for entry in entries)
    pool = rng.standard_normal((longest * 4 * 3, 257), dtype=np.float32).astype(np.float16)
    write_manifest(prepared, entries, classes, [])  # first: the cache records its hash, as stage 2's does
    spec_writer = create_store(prepared / f"spectrograms{runs.STORE_SUFFIX[backend]}", spectrogram_fields(257),
                               {"kind": "spectrograms", "video_fps": VIDEO_FPS, "spectrogram": {"bench": True}},
                               backend=backend)
    cache_writer = TeacherCacheSpec(
        teacher_fingerprint="bench", teacher_arch="random", teacher_sequential=False, embed_dim=EMBED_DIM,
        num_classes=n_classes, class_names=tuple(classes), video_fps=VIDEO_FPS, segment_frames=SEGMENT_VIDEO_FRAMES,
        window_seconds=crop_seconds, dtype="float16", splits=("train", "val"),
        manifest_sha256=manifest_hash(prepared)).create(embeddings / f"voxceleb{runs.STORE_SUFFIX[backend]}",
                                                        backend=backend)
    for entry in entries:
        n = entry.n_video_frames
        offset = int(rng.integers(0, len(pool) - 4 * n))
        spec_writer.write(entry.key, {"spectrogram": pool[offset : offset + 4 * n]})
        if entry.split != "test":
            frames = rng.standard_normal((n, EMBED_DIM), dtype=np.float32).astype(np.float16)
            prob = rng.random(n, dtype=np.float32)
            soft = rng.random(n_classes, dtype=np.float32)
            cache_writer.write(entry.key, {
                "frames": frames, "frame_prob": prob, "frame_pred": rng.integers(0, n_classes, n, dtype=np.int32),
                "peak": frames[int(prob.argmax())], "segments": frames[:: SEGMENT_VIDEO_FRAMES][: math.ceil(n / 25)],
                "soft": soft / soft.sum()})
    for writer in (spec_writer, cache_writer):
        writer.mark_complete()
        writer.close()
    return sum(p.stat().st_size for p in run_dir.rglob("*") if p.is_file())


def smooth_faces(n: int, size: int, seed: int) -> np.ndarray:
    """(n, size, size, 3) uint8 images of smooth colour blobs: random 6×6 colours upsampled bicubically. Closer to
    faces than noise for a codec (noise neither compresses nor JPEG-encodes like a photograph)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand((n, 3, 6, 6), generator=generator) * 255
    images = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return images.clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def write_face_run(run_dir: Path, n_utterances: int, frames_per_utterance: int, face_size: int, n_classes: int,
                   seed: int, backend: str = "zarr", encoding: str = "jpeg") -> list[Entry]:
    """A stage-2-ready run without media: a manifest of training utterances of `frames_per_utterance` frames each
    and a face store of smooth synthetic crops in `encoding` (JPEG at stage 0's default quality); returns the
    entries."""
    rng = np.random.default_rng(seed)
    prepared = runs.prepare_dir(run_dir)
    prepared.mkdir(parents=True)
    entries, classes = synthetic_entries(n_utterances, n_classes, frames_per_utterance, frames_per_utterance, rng)
    entries = [Entry(e.key, e.label, "train", e.n_video_frames, e.seconds, e.source) for e in entries]
    write_manifest(prepared, entries, classes, [])
    pool = smooth_faces(4 * frames_per_utterance, face_size, seed)
    quality = DEFAULT_JPEG_QUALITY if encoding == "jpeg" else None
    writer = FaceStoreSpec(dataset="voxceleb", dataset_root="synthetic", video_fps=VIDEO_FPS, face_size=face_size,
                           crop="synthetic", encoding=encoding, quality=quality).create(
        prepared / f"faces{runs.STORE_SUFFIX[backend]}", backend=backend)
    for entry in entries:
        offset = int(rng.integers(0, len(pool) - frames_per_utterance + 1))
        frames = pool[offset : offset + frames_per_utterance]
        writer.write(entry.key, FACE_ENCODINGS[encoding].encode(frames, quality))
    writer.mark_complete()
    writer.close()
    return entries
