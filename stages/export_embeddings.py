"""Stage 2: run the frozen teacher over every frame once and cache its embeddings, keyed by utterance."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cache.store import FieldSpec, StoreError, create_store, open_for_append, open_store
from pipeline import config as config_io
from pipeline import runs
from pipeline.features import SEGMENT_VIDEO_FRAMES, VIDEO_FPS, segment_means
from pipeline.manifest import manifest_hash, read_manifest
from pipeline.models.teachers import TeacherSpec, build_teacher
from pipeline.runs import STORE_SUFFIX, find_store

CACHE_FORMAT_VERSION = 1


@dataclass(frozen=True)
class ExportConfig:
    """Stage 2 settings."""

    dataset: str = "voxceleb"
    run_dir: Path | None = None
    teacher: Path | None = None  # default: the run's teacher/teacher.pt
    out: Path | None = None  # default: the run's embeddings/<dataset>.<zarr|h5>
    store: str = "zarr"
    dtype: str = "float16"
    batch_frames: int = 512
    window_seconds: int = 5  # training crop length recorded for sequential targets
    num_workers: int = 1
    device: str = "auto"
    overwrite: bool = False

    def validate(self) -> None:
        if self.store not in STORE_SUFFIX:
            raise config_io.ConfigError(f"export-embeddings: store must be one of {sorted(STORE_SUFFIX)}")
        if self.dtype not in ("float16", "float32"):
            raise config_io.ConfigError(f"export-embeddings: dtype must be float16 or float32, got {self.dtype!r}")

    @property
    def resolved_run_dir(self) -> Path:
        return self.run_dir or runs.default_run_dir(self.dataset)

    @property
    def resolved_out(self) -> Path:
        return self.out or runs.embeddings_dir(self.resolved_run_dir) / f"{self.dataset}{STORE_SUFFIX[self.store]}"


def cache_fields(embed_dim: int, num_classes: int, dtype: str) -> list[FieldSpec]:
    """The embedding-cache schema (DESIGN.md): ragged per-frame and per-segment rows, per-utterance rows."""
    return [
        FieldSpec("frames", dtype, (embed_dim,), ragged=True, chunk_rows=2048),
        FieldSpec("frame_prob", "float32", (), ragged=True, chunk_rows=16384),
        FieldSpec("frame_pred", "int32", (), ragged=True, chunk_rows=16384),
        FieldSpec("segments", dtype, (embed_dim,), ragged=True, chunk_rows=2048),
        FieldSpec("peak", dtype, (embed_dim,), ragged=False, chunk_rows=2048),
        FieldSpec("soft", "float32", (num_classes,), ragged=False, chunk_rows=2048),
    ]


def utterance_targets(embeddings: np.ndarray, probabilities: np.ndarray) -> dict[str, np.ndarray]:
    """Every cached quantity of one utterance from its per-frame teacher outputs (T, D) and (T, C)."""
    frame_prob = probabilities.max(axis=1)
    peak_frame = int(frame_prob.argmax())  # Eq. 4: the frame the teacher is most confident about
    return {
        "frames": embeddings,
        "frame_prob": frame_prob,
        "frame_pred": probabilities.argmax(axis=1).astype(np.int32),
        "segments": segment_means(embeddings),  # Eq. 6
        "peak": embeddings[peak_frame],
        "soft": probabilities.mean(axis=0),
    }


class _UtteranceFrames(torch.utils.data.Dataset):
    """Item = all face frames of one utterance, read from the frame store in a worker."""

    def __init__(self, store_path: Path, keys: list[str]):
        self.store_path, self.keys, self.store = store_path, keys, None

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int):
        if self.store is None:
            self.store = open_store(self.store_path)
        key = self.keys[index]
        return key, torch.from_numpy(self.store.read(key, "frames"))


def _utterance_groups(loader, batch_frames: int):
    """Group whole utterances until they fill a teacher batch, so the teacher never sees tiny batches."""
    group, n_frames = [], 0
    for key, frames in loader:
        group.append((key, frames))
        n_frames += len(frames)
        if n_frames >= batch_frames:
            yield group
            group, n_frames = [], 0
    if group:
        yield group


def _open_cache(cfg: ExportConfig, fingerprint: str, attrs: dict, fields: list[FieldSpec]):
    """A writer: new, or resumed if a previous export by the *same* teacher stopped part-way."""
    path = cfg.resolved_out
    if path.exists() and not cfg.overwrite:
        existing = open_store(path, require_complete=False)
        made_by = existing.attrs.get("teacher_fingerprint")
        if made_by != fingerprint:
            raise StoreError(
                f"{path}: cache was made by teacher {str(made_by)[:12]}, this teacher is {fingerprint[:12]}; "
                "pass --overwrite to replace it or --out to write a new cache"
            )
        if existing.attrs.get("manifest_sha256") != attrs["manifest_sha256"]:
            raise StoreError(f"{path}: cache was made for a different manifest; pass --overwrite or --out")
        existing.close()
        return open_for_append(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return create_store(path, fields, attrs, backend=cfg.store, overwrite=cfg.overwrite)


def run(cfg: ExportConfig) -> Path:
    """Export teacher embeddings for every utterance in the manifest; returns the cache path."""
    run_dir = cfg.resolved_run_dir
    prepared = runs.prepare_dir(run_dir)
    checkpoint_path = cfg.teacher or runs.teacher_checkpoint(run_dir)
    if not Path(checkpoint_path).exists():
        raise FileNotFoundError(f"{checkpoint_path}: no teacher checkpoint; run `avl stage train-teacher` first")
    device = runs.resolve_device(cfg.device)
    fingerprint = runs.file_sha256(checkpoint_path)
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    spec = TeacherSpec(**checkpoint["spec"])
    teacher = build_teacher(spec)
    teacher.load_state_dict(checkpoint["state_dict"])
    teacher.to(device).eval().requires_grad_(False)

    out = cfg.resolved_out
    config_io.save(cfg, out.parent / f"{out.name}.config.toml")
    entries = read_manifest(prepared)
    face_store = find_store(prepared, "faces")
    attrs = {
        "kind": "teacher-embeddings",
        "format_version": CACHE_FORMAT_VERSION,
        "teacher_fingerprint": fingerprint,
        "teacher_arch": spec.arch,
        "teacher_tiny": spec.tiny,
        "embed_dim": spec.embed_dim,
        "num_classes": spec.num_classes,
        "class_names": checkpoint["class_names"],
        "video_fps": VIDEO_FPS,
        "segment_frames": SEGMENT_VIDEO_FRAMES,
        "window_seconds": cfg.window_seconds,
        "dtype": cfg.dtype,
        "dataset": cfg.dataset,
        "manifest_sha256": manifest_hash(prepared),
    }
    writer = _open_cache(cfg, fingerprint, attrs, cache_fields(spec.embed_dim, spec.num_classes, cfg.dtype))
    todo = [e.key for e in entries if e.key not in writer.keys]
    loader = torch.utils.data.DataLoader(
        _UtteranceFrames(face_store, todo), batch_size=None, num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
    )
    teacher_seconds, frames_done, started = 0.0, 0, time.perf_counter()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    with tqdm(total=len(todo), desc="export", unit="utt") as progress:
        for group in _utterance_groups(loader, cfg.batch_frames):
            frames = torch.cat([f for _, f in group])
            tick = time.perf_counter()
            embeddings, probabilities = [], []
            with torch.inference_mode(), autocast:
                for start in range(0, len(frames), cfg.batch_frames):
                    embedding, logits = teacher(frames[start : start + cfg.batch_frames].to(device, non_blocking=True))
                    embeddings.append(embedding.float().cpu())
                    probabilities.append(logits.float().softmax(dim=1).cpu())
            embeddings, probabilities = torch.cat(embeddings).numpy(), torch.cat(probabilities).numpy()
            teacher_seconds += time.perf_counter() - tick
            start = 0
            for key, utterance_frames in group:
                stop = start + len(utterance_frames)
                writer.write(key, utterance_targets(embeddings[start:stop], probabilities[start:stop]))
                start = stop
            frames_done += len(frames)
            progress.update(len(group))
    writer.mark_complete()
    writer.close()
    elapsed = time.perf_counter() - started
    stats = {
        "cache": str(out),
        "teacher_fingerprint": fingerprint,
        "utterances_exported": len(todo),
        "utterances_total": len(entries),
        "frames": frames_done,
        "seconds": elapsed,
        "frames_per_second": frames_done / elapsed if elapsed > 0 else None,
        "teacher_share": teacher_seconds / elapsed if elapsed > 0 else None,
    }
    runs.write_json(out.parent / f"{out.name}.export.json", stats)
    tqdm.write(f"export-embeddings: {frames_done} frames of {len(todo)} utterances in {elapsed:.1f}s → {out}")
    return out
