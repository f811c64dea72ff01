"""Stage 0: decode every utterance once → manifest, spectrogram shards and a face-crop frame store."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cache import locks
from cache.backends import DISK_BACKENDS
from cache.schema import FaceStoreSpec, SpectrogramStoreSpec
from cache.store import open_for_append, open_store
from pipeline import config as config_io
from pipeline import runs
from pipeline.datasets.base import Utterance
from pipeline.datasets.registry import DATASETS, open_dataset
from pipeline.datasets.trial_speakers import ALLOW_OPTION, refuse_trial_speakers_in_training
from pipeline.features import (
    NORMALISATIONS,
    SPEC_FRAMES_PER_VIDEO_FRAME,
    VIDEO_FPS,
    LogSpectrogram,
    SpectrogramParams,
)
from pipeline.manifest import Entry, manifest_hash, write_manifest
from pipeline.media import MediaError
from pipeline.media.clips import FACE_MODES, FaceSettings, load_audio_only, load_clip
from pipeline.media.contact_sheet import write_contact_sheet
from pipeline.media.detect import DetectionSettings
from pipeline.runs import STORE_SUFFIX

IDENTIFICATION_SPLITS = ("train", "val", "test")
CONTACT_SHEET = "faces.png"


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
    face_size: int = field(default=64, metadata={"help": "Face crop side in pixels.", "min": 1})
    crop_fraction: float = field(default=1.0, metadata={
        "help": "Centre crop side as a fraction of the frame.", "above": 0.0, "max": 1.0})
    normalisation: str = field(default="utterance", metadata={
        "help": "Spectrogram normalisation.", "choices": NORMALISATIONS})
    num_workers: int = field(default=2, metadata={"help": "DataLoader worker processes.", "min": 0})
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
    include_song: bool | None = field(default=None, metadata={
        "help": "RAVDESS: the sung clips (default: included, as the paper).", "flag": "--include-song/--no-song"})
    include_scripted: bool | None = field(default=None, metadata={
        "help": "IEMOCAP: scripted turns.", "flag": "--include-scripted/--no-scripted"})
    split: str | None = field(default=None, metadata={
        "help": "VoxCeleb: official (iden_split.txt) or 70-10-20 of each speaker's videos."})
    seed: int | None = field(default=None, metadata={"help": "VoxCeleb: seed of the 70-10-20 split."})
    allow_trial_speakers_in_training: bool | None = field(default=None, metadata={
        "help": "VoxCeleb: keep the trial list's speakers in the identification splits (by default they are left "
                "out, so verification is on unseen speakers); recorded in dataset.json."})
    audio_only_ok: bool | None = field(default=None, metadata={"help": "List utterances that have no video."})
    boxes_dir: Path | None = field(default=None, metadata={
        "help": "Per-frame face boxes (x0 y0 x1 y1) instead of centre crops."})
    faces: str | None = field(default=None, metadata={
        "help": "How faces are cut out: centre, boxes (from --boxes-dir) or detect (a face detector; the boxes it "
                "used go to PREPARE/boxes/, for --boxes-dir); default: boxes with --boxes-dir, else centre.",
        "choices": FACE_MODES})
    detect_every: int = field(default=5, metadata={
        "help": "--faces detect: run the detector on every Nth video frame (25 fps).", "min": 1})
    face_margin: float = field(default=0.3, metadata={
        "help": "--faces detect: widen each face box by this fraction of its side.", "min": 0.0})
    min_face_found: float = field(default=0.5, metadata={
        "help": "--faces detect: a clip whose face is found in fewer of the searched frames is bad media "
                "(--on-error decides).", "above": 0.0, "max": 1.0})
    audio_only: bool = field(default=False, metadata={
        "help": "Spectrograms and manifest only, no face store: corpora without video, for λ = 0 students and "
                "evaluation."})

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
        if self.faces not in (None, *FACE_MODES):
            raise config_io.ConfigError(f"prepare: faces must be one of {FACE_MODES}, got {self.faces!r}")
        if (self.faces == "boxes") != (self.boxes_dir is not None) and self.faces is not None:
            raise config_io.ConfigError("prepare: --faces boxes reads --boxes-dir, and --boxes-dir needs --faces boxes "
                                        f"(got faces={self.faces!r}, boxes_dir={self.boxes_dir})")
        if self.audio_only and (self.faces is not None or self.boxes_dir is not None):
            raise config_io.ConfigError("prepare: --audio-only writes no face store; drop --faces and --boxes-dir")

    @property
    def face_settings(self) -> FaceSettings:
        """How faces are cut out, from `faces`, `boxes_dir` and the detection options."""
        mode = self.faces or ("boxes" if self.boxes_dir is not None else "centre")
        return FaceSettings(mode, self.face_size, self.crop_fraction,
                            DetectionSettings(self.detect_every, self.face_margin, self.min_face_found))

    @property
    def resolved_run_dir(self) -> Path:
        return self.run_dir or runs.default_run_dir(self.dataset)


def spectrogram_store_path(directory: Path, backend: str) -> Path:
    return directory / f"spectrograms{STORE_SUFFIX[backend]}"


def face_store_path(directory: Path, backend: str) -> Path:
    return directory / f"faces{STORE_SUFFIX[backend]}"


def boxes_dir(directory: Path) -> Path:
    """Where --faces detect writes the crop boxes it used, in the --boxes-dir layout (<key>.npy)."""
    return directory / "boxes"


def save_boxes(directory: Path, key: str, boxes: np.ndarray) -> None:
    """One utterance's (T, 4) crop boxes as <directory>/<key>.npy."""
    path = directory / f"{key}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, boxes)


class _DecodeUtterances(torch.utils.data.Dataset):
    """Decodes one utterance per item in a DataLoader worker: (key, spectrogram, face crops or None, detected crop
    boxes or None, error)."""

    def __init__(self, utterances: list[Utterance], cfg: PrepareConfig):
        self.utterances = utterances
        self.cfg = cfg
        self.spectrogram = LogSpectrogram(SpectrogramParams(normalisation=cfg.normalisation))

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int):
        utterance = self.utterances[index]
        try:
            clip = load_audio_only(utterance) if self.cfg.audio_only else load_clip(utterance, self.cfg.face_settings)
        except MediaError as error:
            return utterance.key, None, None, None, str(error)
        with torch.no_grad():
            spectrogram = self.spectrogram(torch.from_numpy(clip.audio)).numpy().astype(np.float16)
        if len(spectrogram) != SPEC_FRAMES_PER_VIDEO_FRAME * clip.n_video_frames:
            raise AssertionError(f"{utterance.key}: {len(spectrogram)} spectrogram frames for "
                                 f"{clip.n_video_frames} video frames")
        return utterance.key, spectrogram, clip.faces, clip.boxes, None


def _one_thread_per_worker(_worker_id: int) -> None:
    torch.set_num_threads(1)  # workers share 2 cores with the main process; more threads only thrash


@runs.one_writer(lambda cfg: locks.inside(runs.prepare_dir(cfg.resolved_run_dir)))
def run(cfg: PrepareConfig) -> Path:
    """Decode, featurise and store every utterance the protocol uses; returns the prepare directory."""
    out = runs.prepare_dir(cfg.resolved_run_dir)
    out.mkdir(parents=True, exist_ok=True)

    adapter = open_dataset(
        cfg.dataset, cfg.root, split_file=cfg.split_file, trials_file=cfg.trials_file, fold=cfg.fold,
        classes=cfg.classes, include_song=cfg.include_song, include_scripted=cfg.include_scripted, split=cfg.split,
        seed=cfg.seed, audio_only_ok=True if cfg.audio_only else cfg.audio_only_ok, boxes_dir=cfg.boxes_dir,
        allow_trial_speakers_in_training=cfg.allow_trial_speakers_in_training,
    )
    dataset_summary = adapter.describe()
    runs.write_json(out / "dataset.json", dataset_summary)
    trials = adapter.trials()
    trial_keys = {key for trial in trials for key in (trial.enrol, trial.test)}
    listed = adapter.utterances()
    utterances = [u for u in listed if u.split in IDENTIFICATION_SPLITS or u.key in trial_keys]
    classes = adapter.classes()
    tqdm.write(f"prepare {cfg.dataset}: {adapter.headline(dataset_summary)}")

    params = SpectrogramParams(normalisation=cfg.normalisation)
    source = {"dataset": cfg.dataset, "dataset_root": str(Path(cfg.root).resolve()), "video_fps": VIDEO_FPS}
    # a store an earlier run left incomplete is resumed only if it was made with these same settings
    rebuild = "pass --overwrite to rebuild it"
    spectrograms = SpectrogramStoreSpec(**source, spectrogram=params.to_dict()).open_or_create(
        spectrogram_store_path(out, cfg.store), cfg.store, cfg.overwrite, rebuild)
    # --audio-only: no face store at all, so later stages that need faces say so by its absence
    faces = None if cfg.audio_only else FaceStoreSpec(
        **source, face_size=cfg.face_size, crop=cfg.face_settings.describe()).open_or_create(
        face_store_path(out, cfg.store), cfg.store, cfg.overwrite, rebuild)
    writers = [writer for writer in (spectrograms, faces) if writer is not None]
    # saved once the stores are accepted, without overwrite: the file is also the command that finishes
    # the stores, and finishing must resume them, not wipe them
    config_path = config_io.save(replace(cfg, overwrite=False), out / "config.toml")
    for writer in writers:
        writer.set_expected(len(utterances), finish_with=f"avl stage prepare --config {config_path}")
    done = set.intersection(*(set(writer.keys) for writer in writers))
    todo = [u for u in utterances if u.key not in done]
    skipped: list[tuple[str, str]] = []
    loader = torch.utils.data.DataLoader(
        _DecodeUtterances(todo, cfg),
        batch_size=None,
        num_workers=cfg.num_workers,
        worker_init_fn=_one_thread_per_worker,
    )
    for key, spectrogram, face_frames, boxes, error in tqdm(loader, total=len(todo), desc="prepare", unit="utt"):
        if error is not None:
            if cfg.on_error == "stop":
                raise MediaError(f"{error}\n(pass --on-error skip to skip such files and record them)")
            skipped.append((key, error))
            continue
        if key not in spectrograms.keys:
            spectrograms.write(key, {"spectrogram": spectrogram.numpy()})  # the loader made tensors of them
        if boxes is not None:  # before the crops are committed: a resumed run never lacks a kept clip's boxes
            save_boxes(boxes_dir(out), key, boxes.numpy())
        if faces is not None and key not in faces.keys:
            faces.write(key, {"frames": face_frames.numpy()})
        for writer in writers:
            writer.flush_if_due(cfg.commit_seconds)
    for writer in writers:
        writer.close()

    skipped_keys = {key for key, _ in skipped}
    with open_store(writers[-1].path, require_complete=False) as reader:
        # audio only: the video frames the spectrogram spans (4 rows each)
        rows, rows_per_frame = ("spectrogram", SPEC_FRAMES_PER_VIDEO_FRAME) if faces is None else ("frames", 1)
        lengths = {u.key: reader.length(u.key, rows) // rows_per_frame
                   for u in utterances if u.key not in skipped_keys}
    entries = [
        Entry(u.key, u.label, u.split if u.split in IDENTIFICATION_SPLITS else "none",
              lengths[u.key], lengths[u.key] / VIDEO_FPS, str(u.video_path if faces is not None else u.audio_path))
        for u in utterances
        if u.key not in skipped_keys
    ]
    kept_trials = [t for t in trials if t.enrol not in skipped_keys and t.test not in skipped_keys]
    refuse_trial_speakers_in_training(entries, kept_trials, dataset_summary.get(ALLOW_OPTION, False),
                                      f"{out / 'dataset.json'}")
    write_manifest(out, entries, classes, kept_trials)
    with open(out / "skipped.tsv", "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(("key", "reason"))
        writer.writerows(skipped)
    # the adapter's counts are of what it lists: say how many of those the manifest leaves out, and why
    runs.write_json(out / "dataset.json", {**dataset_summary, "manifest": {
        "utterances": len(entries),
        "dropped": {"in_no_split_and_no_trial": len(listed) - len(utterances), "unreadable_media": len(skipped)},
        "unreadable_media_listed_in": "skipped.tsv"}})

    digest = manifest_hash(out)
    for path in [writer.path for writer in writers]:
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
            "faces": None if faces is None else cfg.face_settings.describe(),
        },
    )
    if faces is not None and entries:
        write_contact_sheet(face_store_path(out, cfg.store), entries, classes, out / CONTACT_SHEET)
    tqdm.write(f"prepare: {len(entries)} utterances ({len(skipped)} skipped), {len(classes)} classes → {out}")
    return out
