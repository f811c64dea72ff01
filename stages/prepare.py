"""Stage 0: decode every utterance once → manifest, spectrogram shards and a face-crop frame store."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cache.backends import DISK_BACKENDS
from cache.schema import FaceStoreSpec, SpectrogramStoreSpec
from cache.store import open_for_append, open_store
from pipeline import config as config_io
from pipeline import runs
from pipeline.datasets.base import Utterance
from pipeline.datasets.registry import DATASETS, open_dataset
from pipeline.features import (
    NORMALISATIONS,
    SPEC_FRAMES_PER_VIDEO_FRAME,
    VIDEO_FPS,
    LogSpectrogram,
    SpectrogramParams,
)
from pipeline.manifest import Entry, manifest_hash, write_manifest
from pipeline.media import MediaError, face_crops, load_audio_visual
from pipeline.runs import STORE_SUFFIX

IDENTIFICATION_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class PrepareConfig:
    """Stage 0 settings."""

    root: Path | None = field(default=None, metadata={"help": "Dataset root in its published layout."})
    dataset: str = field(default="voxceleb", metadata={
        "help": "Dataset adapter; also names the default run dir runs/<dataset>.", "choices": DATASETS})
    run_dir: Path | None = field(default=None, metadata={
        "help": "Run directory shared by all stages (default: runs/<dataset>)."})
    split_file: Path | None = field(default=None, metadata={
        "help": "iden_split.txt-format split (default: ROOT/iden_split.txt)."})
    trials_file: Path | None = field(default=None, metadata={
        "help": "veri_test.txt-format trials (default: ROOT/veri_test.txt)."})
    store: str = field(default="zarr", metadata={
        "help": "Storage backend for what this stage writes.", "choices": DISK_BACKENDS})
    face_size: int = field(default=64, metadata={"help": "Face crop side in pixels."})
    crop_fraction: float = field(default=1.0, metadata={"help": "Centre crop side as a fraction of the frame."})
    normalisation: str = field(default="utterance", metadata={
        "help": "Spectrogram normalisation.", "choices": NORMALISATIONS})
    num_workers: int = field(default=2, metadata={"help": "DataLoader worker processes."})
    on_error: str = field(default="stop", metadata={
        "help": "stop at the first bad file, or skip and record it.", "choices": ("stop", "skip")})
    overwrite: bool = field(default=False, metadata={"help": "Rebuild stores that already exist."})
    commit_seconds: float = field(default=30.0, metadata={
        "help": "Commit written utterances at least this often; 0: after every utterance."})
    # Dataset protocol options; None leaves the adapter's default, and an option a dataset lacks is an error.
    fold: int | None = field(default=None, metadata={
        "help": "RAVDESS: test actor (leave-one-subject-out); IEMOCAP: test session."})
    classes: str | None = field(default=None, metadata={
        "help": "RAVDESS: 7 (calm merged into neutral) or 8 classes."})
    include_song: bool | None = field(default=None, metadata={"help": "RAVDESS: add the sung clips."})
    include_scripted: bool | None = field(default=None, metadata={
        "help": "IEMOCAP: scripted turns.", "flag": "--include-scripted/--no-scripted"})
    split: str | None = field(default=None, metadata={
        "help": "VoxCeleb: official (iden_split.txt) or 70-10-20 per speaker."})
    seed: int | None = field(default=None, metadata={"help": "VoxCeleb: seed of the 70-10-20 split."})
    audio_only_ok: bool | None = field(default=None, metadata={"help": "List utterances that have no video."})
    boxes_dir: Path | None = field(default=None, metadata={
        "help": "Per-frame face boxes (x0 y0 x1 y1) instead of centre crops."})

    def validate(self) -> None:
        if self.root is None:
            raise config_io.ConfigError("prepare: 'root' (the dataset directory) is required")
        if self.dataset not in DATASETS:
            raise config_io.ConfigError(f"prepare: unknown dataset {self.dataset!r}; known: {sorted(DATASETS)}")
        if self.store not in STORE_SUFFIX:
            raise config_io.ConfigError(f"prepare: store must be one of {sorted(STORE_SUFFIX)}, got {self.store!r}")
        if self.normalisation not in NORMALISATIONS:
            raise config_io.ConfigError(f"prepare: normalisation must be one of {NORMALISATIONS}")
        if self.on_error not in ("stop", "skip"):
            raise config_io.ConfigError(f"prepare: on_error must be 'stop' or 'skip', got {self.on_error!r}")
        if self.commit_seconds < 0:
            raise config_io.ConfigError(f"prepare: commit_seconds must be >= 0, got {self.commit_seconds}")

    @property
    def resolved_run_dir(self) -> Path:
        return self.run_dir or runs.default_run_dir(self.dataset)


def spectrogram_store_path(directory: Path, backend: str) -> Path:
    return directory / f"spectrograms{STORE_SUFFIX[backend]}"


def face_store_path(directory: Path, backend: str) -> Path:
    return directory / f"faces{STORE_SUFFIX[backend]}"


class _DecodeUtterances(torch.utils.data.Dataset):
    """Decodes one utterance per item in a DataLoader worker: (key, spectrogram, face crops, error)."""

    def __init__(self, utterances: list[Utterance], cfg: PrepareConfig):
        self.utterances = utterances
        self.cfg = cfg
        self.spectrogram = LogSpectrogram(SpectrogramParams(normalisation=cfg.normalisation))

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int):
        utterance = self.utterances[index]
        try:
            if utterance.video_path is None:
                raise MediaError(f"{utterance.audio_path}: no video file for utterance {utterance.key!r}")
            separate_audio = utterance.audio_path if utterance.audio_path != utterance.video_path else None
            audio, frames = load_audio_visual(utterance.video_path, separate_audio, sample_rate=16000, fps=VIDEO_FPS,
                                              start=utterance.start, end=utterance.end)
            faces = face_crops(frames, self.cfg.face_size, self.cfg.crop_fraction, utterance.boxes_path)
        except MediaError as error:
            return utterance.key, None, None, str(error)
        with torch.no_grad():
            spectrogram = self.spectrogram(torch.from_numpy(audio)).numpy().astype(np.float16)
        if len(spectrogram) != SPEC_FRAMES_PER_VIDEO_FRAME * len(faces):
            raise AssertionError(f"{utterance.key}: {len(spectrogram)} spectrogram frames for {len(faces)} video frames")
        return utterance.key, spectrogram, faces, None


def _one_thread_per_worker(_worker_id: int) -> None:
    torch.set_num_threads(1)  # workers share 2 cores with the main process; more threads only thrash


def run(cfg: PrepareConfig) -> Path:
    """Decode, featurise and store every utterance the protocol uses; returns the prepare directory."""
    out = runs.prepare_dir(cfg.resolved_run_dir)
    out.mkdir(parents=True, exist_ok=True)

    adapter = open_dataset(
        cfg.dataset, cfg.root, split_file=cfg.split_file, trials_file=cfg.trials_file, fold=cfg.fold,
        classes=cfg.classes, include_song=cfg.include_song, include_scripted=cfg.include_scripted, split=cfg.split,
        seed=cfg.seed, audio_only_ok=cfg.audio_only_ok, boxes_dir=cfg.boxes_dir,
    )
    runs.write_json(out / "dataset.json", adapter.describe())
    trials = adapter.trials()
    trial_keys = {key for trial in trials for key in (trial.enrol, trial.test)}
    utterances = [u for u in adapter.utterances() if u.split in IDENTIFICATION_SPLITS or u.key in trial_keys]
    classes = adapter.classes()

    params = SpectrogramParams(normalisation=cfg.normalisation)
    source = {"dataset": cfg.dataset, "dataset_root": str(Path(cfg.root).resolve()), "video_fps": VIDEO_FPS}
    crop = "boxes" if cfg.boxes_dir else f"centre {cfg.crop_fraction}"
    # a store an earlier run left incomplete is resumed only if it was made with these same settings
    rebuild = "pass --overwrite to rebuild it"
    spectrograms = SpectrogramStoreSpec(**source, spectrogram=params.to_dict()).open_or_create(
        spectrogram_store_path(out, cfg.store), cfg.store, cfg.overwrite, rebuild)
    faces = FaceStoreSpec(**source, face_size=cfg.face_size, crop=crop).open_or_create(
        face_store_path(out, cfg.store), cfg.store, cfg.overwrite, rebuild)
    # saved once the stores are accepted, without overwrite: the file is also the command that finishes
    # the stores, and finishing must resume them, not wipe them
    config_path = config_io.save(replace(cfg, overwrite=False), out / "config.toml")
    for writer in (spectrograms, faces):
        writer.set_expected(len(utterances), finish_with=f"avl stage prepare --config {config_path}")
    done = set(spectrograms.keys) & set(faces.keys)
    todo = [u for u in utterances if u.key not in done]
    skipped: list[tuple[str, str]] = []
    loader = torch.utils.data.DataLoader(
        _DecodeUtterances(todo, cfg),
        batch_size=None,
        num_workers=cfg.num_workers,
        worker_init_fn=_one_thread_per_worker,
    )
    for key, spectrogram, face_frames, error in tqdm(loader, total=len(todo), desc="prepare", unit="utt"):
        if error is not None:
            if cfg.on_error == "stop":
                raise MediaError(f"{error}\n(pass --on-error skip to skip such files and record them)")
            skipped.append((key, error))
            continue
        if key not in spectrograms.keys:
            spectrograms.write(key, {"spectrogram": spectrogram.numpy()})  # the loader made tensors of them
        if key not in faces.keys:
            faces.write(key, {"frames": face_frames.numpy()})
        spectrograms.flush_if_due(cfg.commit_seconds)
        faces.flush_if_due(cfg.commit_seconds)
    spectrograms.close()
    faces.close()

    skipped_keys = {key for key, _ in skipped}
    reader = open_store(face_store_path(out, cfg.store), require_complete=False)
    entries = [
        Entry(u.key, u.label, u.split if u.split in IDENTIFICATION_SPLITS else "none",
              reader.length(u.key, "frames"), reader.length(u.key, "frames") / VIDEO_FPS,
              str(u.video_path))
        for u in utterances
        if u.key not in skipped_keys
    ]
    reader.close()
    kept_trials = [t for t in trials if t.enrol not in skipped_keys and t.test not in skipped_keys]
    write_manifest(out, entries, classes, kept_trials)
    with open(out / "skipped.tsv", "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(("key", "reason"))
        writer.writerows(skipped)

    digest = manifest_hash(out)
    for path in (spectrogram_store_path(out, cfg.store), face_store_path(out, cfg.store)):
        writer = open_for_append(path)
        writer.set_attrs(manifest_sha256=digest)
        writer.mark_complete()
        writer.close()
    runs.write_json(
        out / "prepare.json",
        {
            "utterances": len(entries),
            "skipped": len(skipped),
            "classes": len(classes),
            "trials": len(kept_trials),
            "hours": sum(e.seconds for e in entries) / 3600,
            "splits": {split: sum(e.split == split for e in entries) for split in (*IDENTIFICATION_SPLITS, "none")},
            "manifest_sha256": digest,
        },
    )
    tqdm.write(f"prepare: {len(entries)} utterances ({len(skipped)} skipped), {len(classes)} classes → {out}")
    return out
