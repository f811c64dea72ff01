"""Stage 0: decode every utterance once → manifest, spectrogram shards and a face-crop frame store."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cache.backends import DISK_BACKENDS
from cache.schema import FaceStoreSpec, SpectrogramStoreSpec, WaveformStoreSpec
from pipeline import config as config_io
from pipeline import distributed, prepare_parts, runs
from pipeline.datasets.base import Utterance
from pipeline.datasets.options import EmotionCorpusOptions
from pipeline.datasets.registry import DATASETS, open_dataset
from pipeline.face_store import DEFAULT_JPEG_QUALITY, FACE_ENCODINGS
from pipeline.features import (
    NORMALISATIONS,
    PCM_SCALE,
    SPEC_FRAMES_PER_VIDEO_FRAME,
    VIDEO_FPS,
    LogSpectrogram,
    SpectrogramParams,
)
from pipeline.manifest import CONFIG
from pipeline.media import MediaError
from pipeline.media.clips import FACE_MODES, FaceSettings, load_audio_only, load_clip
from pipeline.media.detect import DetectionSettings
from pipeline.prepare_parts import CONTACT_SHEET, IDENTIFICATION_SPLITS  # noqa: F401 (CONTACT_SHEET: named by tests)
from pipeline.runs import STORE_SUFFIX


@dataclass(frozen=True)
class PrepareConfig(EmotionCorpusOptions):
    """Stage 0 settings (the emotion corpora's options from `EmotionCorpusOptions`)."""

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
    face_encoding: str = field(default="jpeg", metadata={
        "help": "How face crops are stored: jpeg (a JPEG per frame, decoded when read: 5-11x smaller at 64-224 px, "
                "what a VoxCeleb2-sized corpus needs) or raw (exact uint8 pixels, compressed losslessly).",
        "choices": FACE_ENCODINGS})
    jpeg_quality: int = field(default=DEFAULT_JPEG_QUALITY, metadata={
        "help": "--face-encoding jpeg: JPEG quality.", "min": 1, "max": 100})
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
    split: str | None = field(default=None, metadata={
        "help": "VoxCeleb: official (iden_split.txt) or 70-10-20 of each speaker's videos."})
    seed: int | None = field(default=None, metadata={"help": "VoxCeleb: seed of the 70-10-20 split."})
    allow_trial_speakers_in_training: bool | None = field(default=None, metadata={
        "help": "VoxCeleb: keep the trial list's speakers in the identification splits (by default they are left "
                "out, so verification is on unseen speakers); recorded in dataset.json."})
    audio_only_ok: bool | None = field(default=None, metadata={"help": "List utterances that have no video."})
    boxes_dir: Path | None = field(default=None, metadata={
        "help": "Per-frame face boxes (x0 y0 x1 y1) instead of centre crops (default with --faces boxes: ROOT/boxes, "
                "where a version 2 synthetic corpus has its true boxes)."})
    faces: str | None = field(default=None, metadata={
        "help": "How faces are cut out: centre, boxes (from --boxes-dir, default ROOT/boxes) or detect (a face "
                "detector; the boxes it used go to PREPARE/boxes/, for --boxes-dir); default: boxes with --boxes-dir, "
                "else centre.",
        "choices": FACE_MODES})
    detect_every: int = field(default=5, metadata={
        "help": "--faces detect: run the detector on every Nth video frame (25 fps).", "min": 1})
    face_margin: float = field(default=0.3, metadata={
        "help": "--faces detect: widen each face box by this fraction of its side.", "min": 0.0})
    min_face_found: float = field(default=0.5, metadata={
        "help": "--faces detect: a clip whose face is found in fewer of the searched frames is bad media "
                "(--on-error decides).", "above": 0.0, "max": 1.0})
    waveforms: bool = field(default=False, metadata={
        "help": "Also store each utterance's 16 kHz waveform (16-bit PCM, aligned to the spectrogram: 640 samples per "
                "video frame): what an audio teacher on raw audio (wav2vec2, hubert) and a student trained on "
                "degraded audio (train-student --degrade) read."})
    audio_only: bool = field(default=False, metadata={
        "help": "Spectrograms and manifest only, no face store: corpora without video, for λ = 0 students and "
                "evaluation."})
    part: int | None = field(default=None, metadata={
        "help": "Decode part PART of NUM_PARTS (utterances PART, PART + NUM_PARTS, ...) into part-NNNNN of each store; "
                "the last part to finish writes the manifest (default: torchrun's RANK when WORLD_SIZE > 1, else the "
                "whole corpus in this process).", "min": 0})
    num_parts: int | None = field(default=None, metadata={
        "help": "Number of parts (default: torchrun's WORLD_SIZE); without --part, decode nothing and finish a run "
                "whose parts are all done.", "min": 1})

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
        if self.face_encoding not in FACE_ENCODINGS:
            raise config_io.ConfigError(f"prepare: face_encoding must be one of {sorted(FACE_ENCODINGS)}, "
                                        f"got {self.face_encoding!r}")
        if self.faces not in (None, *FACE_MODES):
            raise config_io.ConfigError(f"prepare: faces must be one of {FACE_MODES}, got {self.faces!r}")
        if self.boxes_dir is not None and self.faces not in (None, "boxes"):
            raise config_io.ConfigError(f"prepare: --boxes-dir needs --faces boxes (got faces={self.faces!r}, "
                                        f"boxes_dir={self.boxes_dir})")
        if self.audio_only and (self.faces is not None or self.boxes_dir is not None):
            raise config_io.ConfigError("prepare: --audio-only writes no face store; drop --faces and --boxes-dir")
        if self.part is not None and (self.num_parts is None or not 0 <= self.part < self.num_parts):
            raise config_io.ConfigError(f"prepare: --part needs --num-parts and must lie in [0, num_parts), got "
                                        f"part={self.part}, num_parts={self.num_parts}")

    @property
    def face_settings(self) -> FaceSettings:
        """How faces are cut out, from `faces`, `boxes_dir` and the detection options."""
        mode = self.faces or ("boxes" if self.boxes_dir is not None else "centre")
        return FaceSettings(mode, self.face_size, self.crop_fraction,
                            DetectionSettings(self.detect_every, self.face_margin, self.min_face_found))

    @property
    def resolved_run_dir(self) -> Path:
        return self.run_dir or runs.default_run_dir(self.dataset)

    @property
    def by_torchrun(self) -> bool:
        """Parts are torchrun's ranks (no --part given, WORLD_SIZE > 1)."""
        return self.part is None and runs.rank_and_world_size()[1] > 1

    @property
    def resolved_part(self) -> tuple[int, int] | None:
        """(part, num_parts) this process decodes; None: the whole corpus, or (num_parts without part) nothing."""
        if self.part is not None:
            return self.part, self.num_parts
        if not self.by_torchrun:
            return None
        rank, world_size = runs.rank_and_world_size()
        if self.num_parts not in (None, world_size):
            raise config_io.ConfigError(f"prepare: num_parts={self.num_parts} under torchrun with {world_size} "
                                        "processes; launch as many processes as parts")
        return rank, world_size

    @property
    def resolved_num_parts(self) -> int | None:
        """How many parts the run has; None: one process writes whole stores."""
        part = self.resolved_part
        return part[1] if part is not None else self.num_parts

    @property
    def face_storage(self) -> dict:
        """The face store's encoding attributes (FaceStoreSpec): a quality only for JPEG."""
        return {"encoding": self.face_encoding,
                "quality": self.jpeg_quality if self.face_encoding == "jpeg" else None}


def resolve_boxes_dir(cfg: PrepareConfig) -> PrepareConfig:
    """`cfg` with ROOT/boxes as the boxes of --faces boxes when no --boxes-dir is given."""
    if cfg.faces != "boxes" or cfg.boxes_dir is not None:
        return cfg
    return replace(cfg, boxes_dir=Path(cfg.root) / "boxes")


def spectrogram_store_path(directory: Path, backend: str) -> Path:
    return directory / f"spectrograms{STORE_SUFFIX[backend]}"


def waveform_store_path(directory: Path, backend: str) -> Path:
    return directory / f"waveforms{STORE_SUFFIX[backend]}"


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
    """Decodes one utterance per item in a DataLoader worker: (key, spectrogram, its face crops as the face store's
    fields (encoded) or None, detected crop boxes or None, its 16-bit waveform (--waveforms) or None, error)."""

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
            return utterance.key, None, None, None, None, str(error)
        with torch.no_grad():
            spectrogram = self.spectrogram(torch.from_numpy(clip.audio)).numpy().astype(np.float16)
        if len(spectrogram) != SPEC_FRAMES_PER_VIDEO_FRAME * clip.n_video_frames:
            raise AssertionError(f"{utterance.key}: {len(spectrogram)} spectrogram frames for "
                                 f"{clip.n_video_frames} video frames")
        faces = None if clip.faces is None else FACE_ENCODINGS[self.cfg.face_encoding].encode(
            clip.faces, self.cfg.face_storage["quality"])  # the fields to write: encoded here, in the worker
        # the samples the spectrogram's rows cover: 160 per row, 640 per video frame
        waveform = pcm16(clip.audio[: len(spectrogram) * self.spectrogram.stft.hop_length]) if self.cfg.waveforms \
            else None
        return utterance.key, spectrogram, faces, clip.boxes, waveform, None


def pcm16(audio: np.ndarray) -> np.ndarray:
    """float samples in [-1, 1] → 16-bit PCM (what `pipeline.degraded_audio` and the audio teachers read back)."""
    return np.clip(np.round(audio * PCM_SCALE), -32768, 32767).astype(np.int16)


def _one_thread_per_worker(_worker_id: int) -> None:
    torch.set_num_threads(1)  # workers share 2 cores with the main process; more threads only thrash


# each part of a run in parts locks its own part; one process locks the prepare directory
@runs.one_writer(lambda cfg: prepare_parts.lock_file(runs.prepare_dir(cfg.resolved_run_dir), cfg.resolved_part),
                 every_rank=True)
def run(cfg: PrepareConfig) -> Path:
    """Decode, featurise and store every utterance the protocol uses (or this part's share); returns the prepare
    directory."""
    cfg = resolve_boxes_dir(cfg)  # before config.toml records it
    out = runs.prepare_dir(cfg.resolved_run_dir)
    out.mkdir(parents=True, exist_ok=True)
    # under torchrun the ranks meet at a barrier once every part is decoded: allow for parts ending hours apart
    job = distributed.setup(torch.device("cpu"), timeout=timedelta(days=7)) if cfg.by_torchrun else None
    part, num_parts = cfg.resolved_part, cfg.resolved_num_parts
    stores = [spectrogram_store_path(out, cfg.store), *([] if cfg.audio_only else [face_store_path(out, cfg.store)]),
              *([waveform_store_path(out, cfg.store)] if cfg.waveforms else [])]
    config_path = out / CONFIG
    prepare_parts.refuse_mixing(stores, num_parts, config_path)

    adapter = open_dataset(
        cfg.dataset, cfg.root, split_file=cfg.split_file, trials_file=cfg.trials_file, fold=cfg.fold,
        **cfg.corpus_options(), split=cfg.split, seed=cfg.seed,
        audio_only_ok=True if cfg.audio_only else cfg.audio_only_ok, boxes_dir=cfg.boxes_dir,
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
    listing = prepare_parts.Listing(dataset_summary, len(listed), utterances, classes, trials)
    face_summary = {"faces": None if cfg.audio_only else cfg.face_settings.describe(),
                    "face_storage": None if cfg.audio_only else cfg.face_storage}
    if part is None and num_parts is not None:  # --num-parts alone: finish a run whose parts are all done
        prepare_parts.finish_parts(out, listing, stores, face_summary, num_parts)
        return out

    params = SpectrogramParams(normalisation=cfg.normalisation)
    source = {"dataset": cfg.dataset, "dataset_root": str(Path(cfg.root).resolve()), "video_fps": VIDEO_FPS}
    # a store an earlier run left incomplete is resumed only if it was made with these same settings
    rebuild = "pass --overwrite to rebuild it"
    spectrograms = prepare_parts.open_writer(SpectrogramStoreSpec(**source, spectrogram=params.to_dict()),
                                             stores[0], cfg.store, cfg.overwrite, rebuild, part)
    # --audio-only: no face store at all, so later stages that need faces say so by its absence
    face_schema = None if cfg.audio_only else FaceStoreSpec(
        **source, face_size=cfg.face_size, crop=cfg.face_settings.describe(), **cfg.face_storage)
    faces = None if face_schema is None else prepare_parts.open_writer(
        face_schema, stores[1], cfg.store, cfg.overwrite, rebuild, part)
    waveforms = prepare_parts.open_writer(WaveformStoreSpec(**source, sample_rate=params.sample_rate), stores[-1],
                                          cfg.store, cfg.overwrite, rebuild, part) if cfg.waveforms else None
    writers = [writer for writer in (spectrograms, faces, waveforms) if writer is not None]
    # saved once the stores are accepted, without overwrite or part: the file is also the command that finishes
    # the stores (with --part I, a part), and finishing must resume them, not wipe them
    prepare_parts.save_config(replace(cfg, overwrite=False, part=None, num_parts=num_parts), config_path)
    mine = prepare_parts.share(utterances, part)
    for writer in writers:
        writer.set_expected(len(mine), finish_with=prepare_parts.finish_command(config_path, part))
    if part is not None:
        prepare_parts.start_part(out, part)
    done = set.intersection(*(set(writer.keys) for writer in writers))
    todo = [u for u in mine if u.key not in done]
    started, frames = time.perf_counter(), 0
    skipped: list[tuple[str, str]] = []
    loader = torch.utils.data.DataLoader(
        _DecodeUtterances(todo, cfg),
        batch_size=None,
        num_workers=cfg.num_workers,
        worker_init_fn=_one_thread_per_worker,
    )
    for key, spectrogram, face_values, boxes, waveform, error in tqdm(loader, total=len(todo), desc="prepare", unit="utt"):
        if error is not None:
            if cfg.on_error == "stop":
                raise MediaError(f"{error}\n(pass --on-error skip to skip such files and record them)")
            skipped.append((key, error))
            continue
        frames += len(spectrogram) // SPEC_FRAMES_PER_VIDEO_FRAME
        if key not in spectrograms.keys:
            spectrograms.write(key, {"spectrogram": spectrogram.numpy()})  # the loader made tensors of them
        if boxes is not None:  # before the crops are committed: a resumed run never lacks a kept clip's boxes
            save_boxes(boxes_dir(out), key, boxes.numpy())
        if faces is not None and key not in faces.keys:
            faces.write(key, {name: values.numpy() for name, values in face_values.items()})
        if waveforms is not None and key not in waveforms.keys:
            waveforms.write(key, {"waveform": waveform.numpy()})
        for writer in writers:
            writer.flush_if_due(cfg.commit_seconds)
    for writer in writers:
        writer.close()
    seconds = time.perf_counter() - started
    tqdm.write(f"prepare: decoded {frames} video frames in {seconds:.1f} s ({frames / max(seconds, 1e-9):.0f} frames/s)"
               + ("" if part is None else f", part {part[0]} of {part[1]}"))

    if part is None:
        prepare_parts.finish(out, listing, skipped, stores, face_summary)
        return out
    prepare_parts.record_part(out, listing, part, skipped, {"frames": frames, "seconds": round(seconds, 3)})
    if job is None:  # a job-array task: the last part to finish finishes the run
        prepare_parts.finish_if_last(out, listing, stores, face_summary, part)
        return out
    distributed.barrier(job)  # every rank's part is decoded and recorded
    if job.is_main:
        prepare_parts.finish_parts(out, listing, stores, face_summary, num_parts, lock_parts=False)
    distributed.teardown(job)
    return out
