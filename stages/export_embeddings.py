"""Stage 2: run the frozen teacher over every frame once and cache its embeddings, keyed by utterance.

Only the utterances of `splits` are exported (train and val by default): the student trains on train
and selects on val, and a cache that never holds test targets cannot leak the test fold into training.

The teacher sees fixed groups of whole utterances (`teacher_groups`, a pure function of the manifest),
so an interrupted and resumed export computes every row exactly as an uninterrupted one does: it
re-runs only the groups holding uncommitted keys and writes only those keys. With `num_parts`
(or torchrun's RANK and WORLD_SIZE) rank r writes groups r, r + W, ... into `<out>/part-0000r.*`,
and the directory reads as one store (`cache/parts.py`).

A sequential teacher also writes, per utterance, one `aggregator` row (Eq. 5 over the window's frame
embeddings) and one `window_soft` row for every training window: window = `window_seconds` segments, starting
at every segment 0 .. max(0, S_whole − window) (stride 1 segment, the starts a student crop can have);
an utterance shorter than the window gets one window of its frames repeated to the window's length, as the
student's crop of it is repeat-padded.

`layers` adds named inner layers of the teacher's frame encoder (`trunk.*`) as fields of the same cache: each
averaged over its spatial axes per frame, then per segment and at the peak frame as the embedding is
(cache/layers.py). Without it the cache is the one the paper's method reads, field for field.

An audio teacher (pipeline/models/audio_teachers.py) runs on each whole utterance's clean audio as stage 0 stored
it, one utterance at a time; its steps are mapped onto the same 25 fps grid (`frames` has the manifest's frame count),
so its cache has the same fields and a student reads it as a video teacher's. Its `--layers` are module names under
`backbone`, mapped onto the grid the same way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cache import locks
from cache.backends import DISK_BACKENDS
from cache.layers import LayeredTeacherCacheSpec, colliding_layers
from cache.parts import is_parts_directory, part_path
from cache.schema import raise_problems
from cache.store import StoreError, open_for_append, open_store
from pipeline import checkpoints, runs
from pipeline import config as config_io
from pipeline.audio_teacher import CleanAudio, audio_teacher_outputs
from pipeline.data import GroupFrames, teacher_groups
from pipeline.datasets.base import SPLITS
from pipeline.datasets.registry import DATASETS
from pipeline.face_store import open_faces
from pipeline.features import SEGMENT_SPEC_FRAMES, SEGMENT_VIDEO_FRAMES, VIDEO_FPS, SpectrogramParams
from pipeline.manifest import manifest_hash, read_manifest
from pipeline.runs import STORE_SUFFIX, find_store
from pipeline.layers import resolve_layers
from pipeline.models.audio_teachers import AudioTeacher
from pipeline.targets import teacher_layer_outputs, utterance_targets, window_targets
from pipeline.training import autocast, autocast_dtype


@dataclass(frozen=True)
class ExportConfig:
    """Stage 2 settings."""

    dataset: str = field(default="voxceleb", metadata={
        "help": "Dataset adapter; also names the default run dir runs/<dataset>.", "choices": DATASETS})
    run_dir: Path | None = field(default=None, metadata={
        "help": "Run directory shared by all stages (default: runs/<dataset>)."})
    teacher: Path | None = field(default=None, metadata={
        "help": "Teacher checkpoint (default: RUN_DIR/teacher/teacher.pt)."})
    out: Path | None = field(default=None, metadata={
        "help": "Cache path (default: RUN_DIR/embeddings/DATASET.zarr, or .h5)."})
    store: str = field(default="zarr", metadata={
        "help": "Storage backend for what this stage writes.", "choices": DISK_BACKENDS})
    dtype: str = field(default="float16", metadata={"help": "Embedding dtype: float16 or float32."})
    batch_frames: int = field(default=512, metadata={"help": "Frames per teacher batch (across utterances)."})
    window_seconds: int | None = field(default=None, metadata={
        "help": "Sequential teachers: aggregator window, = the student's training crop (default: the teacher's "
                "training window, else 5)."})
    num_workers: int = field(default=1, metadata={"help": "DataLoader worker processes.", "min": 0})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N or auto."})
    overwrite: bool = field(default=False, metadata={"help": "Replace a cache made by another teacher."})
    # most commits rewrite the last, partly filled zarr shard, so frequent commits cost write bandwidth
    commit_seconds: float = field(default=30.0, metadata={
        "help": "Commit written utterances at least this often; 0: after every utterance."})
    part: int | None = field(default=None, metadata={
        "help": "Write part PART of NUM_PARTS into the directory --out (default: torchrun's RANK when "
                "WORLD_SIZE > 1, else one whole store)."})
    num_parts: int | None = field(default=None, metadata={
        "help": "Number of parts (default: torchrun's WORLD_SIZE)."})
    # Train is what the student trains on; val is what it is selected on (and costs the teacher little).
    # Test is left out so no test target is ever cached.
    splits: tuple[str, ...] = field(default=("train", "val"), metadata={
        "help": "Manifest splits to export: what the student may see (never test unless asked).",
        "choices": SPLITS})
    layers: tuple[str, ...] | None = field(default=None, metadata={
        "help": "Also cache these inner layers of the teacher's frame encoder (module names, e.g. "
                "trunk.stages.2,trunk.stages.3), each averaged over space per frame, per segment and at the peak "
                "frame (default: the embedding only)."})

    def validate(self) -> None:
        if not self.splits or len(set(self.splits)) != len(self.splits) or not set(self.splits) <= set(SPLITS):
            raise config_io.ConfigError(f"export-embeddings: splits must be distinct names among {list(SPLITS)}, "
                                        f"got {list(self.splits)}")
        if self.store not in STORE_SUFFIX:
            raise config_io.ConfigError(f"export-embeddings: store must be one of {sorted(STORE_SUFFIX)}")
        if self.dtype not in ("float16", "float32"):
            raise config_io.ConfigError(f"export-embeddings: dtype must be float16 or float32, got {self.dtype!r}")
        if self.window_seconds is not None and self.window_seconds < 1:
            raise config_io.ConfigError("export-embeddings: window_seconds must be >= 1")
        if self.batch_frames < 1 or self.commit_seconds < 0:
            raise config_io.ConfigError("export-embeddings: batch_frames must be >= 1 and commit_seconds >= 0")
        if self.layers is not None and (not self.layers or len(set(self.layers)) != len(self.layers)):
            raise config_io.ConfigError(f"export-embeddings: layers must be distinct module names, got "
                                        f"{list(self.layers)}")
        if self.layers and (pairs := colliding_layers(list(self.layers))):
            raise config_io.ConfigError(f"export-embeddings: layers {pairs[0][0]!r} and {pairs[0][1]!r} would share "
                                        "cache fields ('.' and '_' read alike in field names); export one of them")
        if (self.part is None) != (self.num_parts is None):
            raise config_io.ConfigError("export-embeddings: set both part and num_parts, or neither")
        if self.num_parts is not None and not 0 <= self.part < self.num_parts:
            raise config_io.ConfigError(
                f"export-embeddings: part must lie in [0, num_parts), got part={self.part}, num_parts={self.num_parts}")

    @property
    def resolved_part(self) -> tuple[int, int] | None:
        """(part, num_parts) this process writes, or None for one whole store."""
        if self.num_parts is not None:
            return self.part, self.num_parts
        rank, world_size = runs.rank_and_world_size()
        return (rank, world_size) if world_size > 1 else None

    @property
    def resolved_run_dir(self) -> Path:
        return self.run_dir or runs.default_run_dir(self.dataset)

    @property
    def resolved_out(self) -> Path:
        """The cache: one store, or with parts the directory that holds them."""
        return self.out or runs.embeddings_dir(self.resolved_run_dir) / f"{self.dataset}{STORE_SUFFIX[self.store]}"

    @property
    def resolved_store(self) -> Path:
        """The store this process writes: the cache itself, or its part."""
        part = self.resolved_part
        return self.resolved_out if part is None else part_path(self.resolved_out, part[0], self.store)


def _open_cache(cfg: ExportConfig, cache: LayeredTeacherCacheSpec):
    """A writer: new, or resumed if a previous export with the *same* teacher and settings stopped part-way."""
    path, part = cfg.resolved_store, cfg.resolved_part
    if part is not None and cfg.resolved_out.exists() and not cfg.resolved_out.is_dir():
        raise StoreError(f"{cfg.resolved_out}: is a file, so it cannot hold the parts of a sharded cache; "
                         "remove it or pass another --out")
    if part is None and is_parts_directory(path):
        raise StoreError(f"{path}: holds the parts of a sharded cache; write it with the same num_parts, "
                         "or remove it or pass another --out to write one whole store")
    if path.exists() and not cfg.overwrite:
        with open_store(path, require_complete=False) as existing:
            raise_problems(path, cache.resume_problems(existing, part), "use the same teacher and settings to "
                           "resume it, or pass --overwrite to replace it or --out to write a new cache")
        return open_for_append(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return cache.create(path, backend=cfg.store, overwrite=cfg.overwrite, part=part)


def _layer_dims(teacher, layers: dict, face_size: int | None, device) -> dict[str, int]:
    """Each layer's dimension (name → channels), from one blank face (or 1 s of silence) through the teacher."""
    if not layers:
        return {}
    if isinstance(teacher, AudioTeacher):
        params = SpectrogramParams()
        shape = (SEGMENT_SPEC_FRAMES, params.n_freq) if teacher.input_kind == "spectrogram" else params.sample_rate
        silence = np.zeros(shape, dtype=np.float32)  # one 1 s segment
        _, _, rows = audio_teacher_outputs(teacher, silence, SEGMENT_VIDEO_FRAMES, device, layers)
    else:
        blank = torch.zeros(1, face_size, face_size, 3, dtype=torch.uint8)
        _, _, rows = teacher_layer_outputs(teacher, blank, 1, device, layers)
    return {name: int(rows[name].shape[1]) for name in layers}


def _video_outputs(teacher, groups: list[list[str]], n_frames: dict[str, int], face_store: Path, cfg: ExportConfig,
                   device, layers: dict, timing: dict):
    """(key, per-frame embeddings, probabilities, layer rows) of every utterance of `groups`, one teacher group of
    whole utterances per batch (`teacher_groups`: what makes a resumed export bit-identical)."""
    loader = torch.utils.data.DataLoader(GroupFrames(face_store, groups, n_frames), batch_size=None,
                                         num_workers=cfg.num_workers, pin_memory=device.type == "cuda")
    last = time.perf_counter()
    for keys, lengths, frames in loader:
        tick = time.perf_counter()
        timing["reading"] += tick - last  # waiting for face frames from the store (the loader's workers)
        embeddings, probabilities, layer_rows = teacher_layer_outputs(teacher, frames, cfg.batch_frames, device, layers)
        timing["teacher"] += time.perf_counter() - tick
        timing["frames"] += len(frames)
        for key, stop, length in zip(keys, np.cumsum(lengths), lengths):
            rows = slice(stop - length, stop)
            yield key, embeddings[rows], probabilities[rows], {name: layer_rows[name][rows] for name in layers}
        last = time.perf_counter()


def _audio_outputs(teacher: AudioTeacher, groups: list[list[str]], n_frames: dict[str, int], clean: CleanAudio, device,
                   layers: dict, timing: dict):
    """The same for an audio teacher, one whole utterance at a time."""
    for key in (key for group in groups for key in group):
        tick = time.perf_counter()
        inputs = clean.read(key)
        timing["reading"] += time.perf_counter() - tick
        tick = time.perf_counter()
        embeddings, probabilities, layer_rows = audio_teacher_outputs(teacher, inputs, n_frames[key], device, layers)
        timing["teacher"] += time.perf_counter() - tick
        timing["frames"] += n_frames[key]
        yield key, embeddings, probabilities, layer_rows


# each rank writes its own part of a sharded cache, so each locks its own store
@runs.one_writer(lambda cfg: locks.beside(cfg.resolved_store), every_rank=True)
def run(cfg: ExportConfig) -> Path:
    """Export the teacher's targets of every manifest utterance in `cfg.splits` (or this part's share); returns
    the store."""
    run_dir = cfg.resolved_run_dir
    prepared = runs.prepare_dir(run_dir)
    checkpoint_path = cfg.teacher or runs.teacher_checkpoint(run_dir)
    device = runs.resolve_device(cfg.device)
    loaded = checkpoints.load_teacher(checkpoint_path, device)
    teacher, spec = loaded.model, loaded.model.spec
    fingerprint = runs.file_sha256(checkpoint_path)
    window_seconds = cfg.window_seconds or loaded.window_seconds or 5

    out, part = cfg.resolved_store, cfg.resolved_part
    entries = [entry for entry in read_manifest(prepared) if entry.split in cfg.splits]
    if not entries:
        raise config_io.ConfigError(f"{prepared / 'manifest.tsv'}: no utterance is in the exported splits "
                                    f"{list(cfg.splits)}; set `splits` to the ones it has")
    audio = isinstance(teacher, AudioTeacher)
    if audio:
        clean = CleanAudio(prepared, teacher.input_kind)
        with open_store(clean.path) as inputs:
            source, face_size = dict(inputs.attrs), None
    else:
        face_store = find_store(prepared, "faces")
        faces = open_faces(face_store)  # raw or JPEG: GroupFrames decodes in the loader's workers
        faces.close()
        source, face_size = faces.attrs, faces.face_size
    precision = "bfloat16-autocast" if device.type == "cuda" else "float32"
    layers = resolve_layers(teacher, cfg.layers or (), ("backbone",) if audio else ("trunk",),
                            f"export-embeddings --layers ({spec.arch} teacher)")
    cache = LayeredTeacherCacheSpec(
        teacher_fingerprint=fingerprint,
        teacher_arch=spec.arch,
        teacher_tiny=spec.tiny,
        teacher_sequential=spec.sequential,
        teacher_precision=precision,
        embed_dim=spec.embed_dim,
        num_classes=spec.num_classes,
        class_names=tuple(loaded.class_names),
        video_fps=VIDEO_FPS,
        segment_frames=SEGMENT_VIDEO_FRAMES,
        window_seconds=window_seconds,
        dtype=cfg.dtype,
        batch_frames=cfg.batch_frames,
        dataset=cfg.dataset,
        dataset_root=source.get("dataset_root"),
        face_size=source.get("face_size"),
        face_crop=source.get("crop"),
        manifest_sha256=manifest_hash(prepared),
        splits=tuple(split for split in SPLITS if split in cfg.splits),
        layers=_layer_dims(teacher, layers, face_size, device) or None,
    )
    writer = _open_cache(cfg, cache)
    # saved once the cache is accepted, with the part resolved and without overwrite: the file is also
    # the command that finishes this store, and finishing must resume it, not wipe it
    config_path = config_io.save(
        replace(cfg, overwrite=False, part=part and part[0], num_parts=part and part[1]),
        out.parent / f"{out.name}.config.toml")
    groups = teacher_groups(entries, cfg.batch_frames)
    if part is not None:
        groups = groups[part[0] :: part[1]]
    n_keys = sum(len(group) for group in groups)
    writer.set_expected(n_keys, finish_with=f"avl stage export-embeddings --config {config_path}")
    todo = [group for group in groups if any(key not in writer for key in group)]
    n_frames = {e.key: e.n_video_frames for e in entries}
    timing = {"teacher": 0.0, "reading": 0.0, "frames": 0}
    outputs = _audio_outputs(teacher, todo, n_frames, clean, device, layers, timing) if audio else \
        _video_outputs(teacher, todo, n_frames, face_store, cfg, device, layers, timing)
    exported, recomputed = 0, 0
    started = time.perf_counter()
    autocast_to = autocast_dtype("auto", device)  # bf16 on CUDA, float32 on the CPU
    with tqdm(total=n_keys, initial=writer.committed, desc="export", unit="utt") as progress:
        for key, embeddings, probabilities, layer_rows in outputs:
            if key in writer:  # committed before an interruption: computed again only to rebuild the batch
                recomputed += 1
                continue
            targets = utterance_targets(embeddings, probabilities, layer_rows)
            if spec.sequential:
                with torch.inference_mode(), autocast(autocast_to, device):
                    targets.update(window_targets(teacher, targets["frames"], window_seconds, device))
            writer.write(key, targets)
            exported += 1
            progress.update()
            writer.flush_if_due(cfg.commit_seconds)
    writer.mark_complete()
    writer.close()
    elapsed = time.perf_counter() - started
    stats = {
        "cache": str(out),
        "part": part and list(part),
        "teacher_fingerprint": fingerprint,
        "layers": cache.layers,
        "utterances_exported": exported,
        "utterances_recomputed": recomputed,
        "utterances_total": n_keys,
        "teacher_groups": len(todo),
        "frames": timing["frames"],
        "seconds": elapsed,
        "frames_per_second": timing["frames"] / elapsed if elapsed > 0 else None,
        "teacher_share": timing["teacher"] / elapsed if elapsed > 0 else None,
        "read_share": timing["reading"] / elapsed if elapsed > 0 else None,
        # targets, commits and the final mark_complete
        "write_share": (elapsed - timing["teacher"] - timing["reading"]) / elapsed if elapsed > 0 else None,
    }
    runs.write_json(out.parent / f"{out.name}.export.json", stats)
    tqdm.write(f"export-embeddings: {timing['frames']} frames of {exported} utterances in {elapsed:.1f}s → {out}")
    return out
