"""The torch Datasets of stages 1-3 and the readers of a crop's cached teacher target.

Every Dataset takes store paths and opens them lazily, once per DataLoader worker.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cache.layers import layer_field
from cache.store import StoreError, open_store
from pipeline.face_store import open_faces
from pipeline.features import (
    SEGMENT_VIDEO_FRAMES,
    SPEC_FRAMES_PER_SECOND,
    Crop,
    random_crop,
    repeat_pad,
    segment_means,
)
from pipeline.manifest import Entry
from pipeline.targets import window_frames


def _crop_peak(cache, key: str, crop: Crop, n_video_frames: int, frames: str = "frames") -> np.ndarray:
    first, last = crop.video_range
    frame_prob = cache.read(key, "frame_prob", first, last)
    peak = first + int(frame_prob.argmax())  # Eq. 4 restricted to the frames the crop covers
    return cache.read(key, frames, peak, peak + 1)[0]


def _crop_segments(cache, key: str, crop: Crop, n_video_frames: int, frames: str = "frames",
                   segments: str = "segments") -> np.ndarray:
    """The teacher's segment means of the crop's segments, (S, D) (Eq. 6)."""
    first, stop = crop.start_segment, crop.start_segment + crop.n_segments
    if stop * SEGMENT_VIDEO_FRAMES <= n_video_frames:
        return cache.read(key, segments, first, stop)
    # a repeat-padded crop: the frames tiled as its spectrogram rows are (4 rows per frame), then averaged
    rows = repeat_pad(cache.read(key, frames).astype(np.float32), crop.n_segments * SEGMENT_VIDEO_FRAMES)
    return segment_means(rows)


def _window_row(field: str):
    def read(cache, key: str, crop: Crop, n_video_frames: int) -> np.ndarray:
        return cache.read(key, field, crop.start_segment, crop.start_segment + 1)[0]  # window w starts at segment w
    return read


# The cached target of a crop, by kind (what a method and level need: Method.target_kind).
TARGET_READERS = {
    "crop-peak": _crop_peak,
    "utterance-peak": lambda cache, key, crop, n_video_frames: cache.read(key, "peak"),
    "segments": _crop_segments,
    "aggregator": _window_row("aggregator"),
    "soft": lambda cache, key, crop, n_video_frames: cache.read(key, "soft"),
    "window-soft": _window_row("window_soft"),
}
TARGET_FIELDS = {"crop-peak": "frame_prob", "utterance-peak": "peak", "segments": "segments",
                 "aggregator": "aggregator", "soft": "soft", "window-soft": "window_soft"}
WINDOW_TARGETS = ("aggregator", "window-soft")  # written only by a sequential teacher, one row per window
# A cached teacher layer (cache/layers.py) holds what the embedding does per frame, per segment and at the peak frame.
LAYER_TARGET_FIELDS = {"crop-peak": "frames", "utterance-peak": "peak", "segments": "segments"}


def read_target(cache, kind: str, layer: str | None, key: str, crop: Crop, n_video_frames: int) -> np.ndarray:
    """The `kind` target of a crop (TARGET_READERS) from the last embedding, or from a cached teacher `layer`: the
    same frame (the teacher's most confident in the crop), segments or utterance peak, in the layer's rows."""
    if layer is None:
        return TARGET_READERS[kind](cache, key, crop, n_video_frames)
    if kind == "crop-peak":
        return _crop_peak(cache, key, crop, n_video_frames, frames=layer_field(layer, "frames"))
    if kind == "segments":
        return _crop_segments(cache, key, crop, n_video_frames, layer_field(layer, "frames"),
                              layer_field(layer, "segments"))
    if kind == "utterance-peak":
        return cache.read(key, layer_field(layer, "peak"))
    raise ValueError(f"a teacher layer holds {sorted(LAYER_TARGET_FIELDS)} targets, not {kind!r}")


def target_field(kind: str, layer: str | None = None) -> str:
    """The cache field a `kind` target (of `layer`, or of the embedding) needs, to check a cache has it."""
    return TARGET_FIELDS[kind] if layer is None else layer_field(layer, LAYER_TARGET_FIELDS[kind])


class Crops(torch.utils.data.Dataset):
    """Item = a random crop on the 1 s grid (repeat-padded), its class, and its cached target (TARGET_READERS).

    `spectrograms` and `cache` are store paths, opened lazily once per DataLoader worker, or objects with the
    store's `read` (the benchmark's in-memory copies). A control (pipeline/controls.py) replaces the target:
    `donors[i]` is the entry whose target entry i gets (on a crop drawn on the donor), `class_targets` (C, D) is
    each class's fixed target (no cache read).
    """

    def __init__(self, entries: list[Entry], labels: list[int], spectrograms, cache, crop_seconds: int,
                 target: str | None, donors: np.ndarray | None = None, class_targets: np.ndarray | None = None):
        self.entries, self.labels, self.crop_seconds, self.target = entries, labels, crop_seconds, target
        self.donors, self.class_targets = donors, class_targets
        self.sources = (spectrograms, cache)
        self.spectrograms = self.cache = None

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int):
        if self.spectrograms is None:
            self.spectrograms, self.cache = (open_store(source) if isinstance(source, (str, Path)) else source
                                             for source in self.sources)
        entry = self.entries[index]
        crop = random_crop(entry.n_video_frames, self.crop_seconds)
        spectrogram = self.spectrograms.read(entry.key, "spectrogram", *crop.spec_range)
        spectrogram = repeat_pad(spectrogram, self.crop_seconds * SPEC_FRAMES_PER_SECOND).astype(np.float32)
        if self.class_targets is not None:
            target = self.class_targets[self.labels[index]]  # (D,), one per segment at the encoder level
            target = np.tile(target, (crop.n_segments, 1)) if self.target == "segments" else target
        elif self.cache is None:
            target = np.zeros(0, dtype=np.float32)
        else:
            if self.donors is not None:
                entry = self.entries[self.donors[index]]
                crop = random_crop(entry.n_video_frames, self.crop_seconds)
            target = TARGET_READERS[self.target](self.cache, entry.key, crop, entry.n_video_frames)
        return torch.from_numpy(spectrogram), self.labels[index], torch.from_numpy(target.astype(np.float32))


class MultiCrops(torch.utils.data.Dataset):
    """Item = a random crop on the 1 s grid (repeat-padded), its class, and one cached target per source
    (`--distil`): `sources` are (cache path or reader, target kind, teacher layer or None), all read for the one
    crop. Each distinct cache is opened lazily, once per DataLoader worker."""

    def __init__(self, entries: list[Entry], labels: list[int], spectrograms, sources: list[tuple], crop_seconds: int):
        self.entries, self.labels, self.crop_seconds, self.sources = entries, labels, crop_seconds, sources
        self.spectrogram_source, self.spectrograms, self.caches = spectrograms, None, None

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int):
        if self.spectrograms is None:
            def opened(source):
                return open_store(source) if isinstance(source, (str, Path)) else source
            self.spectrograms = opened(self.spectrogram_source)
            self.caches = {str(cache): opened(cache) for cache, _, _ in self.sources}
        entry = self.entries[index]
        crop = random_crop(entry.n_video_frames, self.crop_seconds)
        spectrogram = self.spectrograms.read(entry.key, "spectrogram", *crop.spec_range)
        spectrogram = repeat_pad(spectrogram, self.crop_seconds * SPEC_FRAMES_PER_SECOND).astype(np.float32)
        targets = [read_target(self.caches[str(cache)], kind, layer, entry.key, crop, entry.n_video_frames)
                   for cache, kind, layer in self.sources]
        return (torch.from_numpy(spectrogram), self.labels[index],
                *(torch.from_numpy(target.astype(np.float32)) for target in targets))


class RandomFrames(torch.utils.data.Dataset):
    """Item = k random face frames of one utterance (fresh draw every epoch) and its class; the face store is read
    in whichever encoding it records (pipeline/face_store.py), decoding only the frames drawn."""

    def __init__(self, store_path: Path, keys: list[str], labels: list[int], frames_per_utterance: int):
        self.store_path, self.keys, self.labels, self.k = store_path, keys, labels, frames_per_utterance
        self.store = None  # opened lazily, once per DataLoader worker

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int):
        if self.store is None:
            self.store = open_faces(self.store_path)
        key = self.keys[index]
        n_frames = self.store.length(key)
        picks = torch.randint(0, n_frames, (self.k,)).numpy()
        frames = self.store.take(key, picks)  # (k, H, W, 3)
        if torch.rand(()) < 0.5:
            frames = frames[:, :, ::-1]  # horizontal flip
        return torch.from_numpy(np.ascontiguousarray(frames)), self.labels[index]


def collate_frames(items):
    """RandomFrames items → (B·k, H, W, 3) frames and a label per frame."""
    frames = torch.cat([frames for frames, _ in items])  # (B·k, H, W, 3)
    labels = torch.tensor([label for _, label in items]).repeat_interleave(items[0][0].shape[0])
    return frames, labels


class RandomWindows(RandomFrames):
    """Item = a random window on the 1 s grid as a frame sequence in time order, (S·k, H, W, 3): every frame of
    its S segments (k = 25, what export aggregates, Eq. 5) or k of each segment (sorted random picks: cheaper).

    Utterances shorter than the window repeat their frames (as student crops repeat-pad)."""

    def __init__(self, store_path: Path, keys: list[str], labels: list[int], window_seconds: int,
                 frames_per_segment: int):
        if not 1 <= frames_per_segment <= SEGMENT_VIDEO_FRAMES:
            raise ValueError(f"frames_per_segment must lie in [1, {SEGMENT_VIDEO_FRAMES}], got {frames_per_segment}")
        super().__init__(store_path, keys, labels, frames_per_segment)
        self.window_seconds = window_seconds

    def __getitem__(self, index: int):
        if self.store is None:
            self.store = open_faces(self.store_path)
        key = self.keys[index]
        n_frames = self.store.length(key)
        crop = random_crop(n_frames, self.window_seconds)
        picks = window_frames(n_frames, crop.start_segment, self.window_seconds)  # (S·25,)
        if self.k < SEGMENT_VIDEO_FRAMES:  # k random frames of each segment, kept in time order
            by_segment = picks.reshape(-1, SEGMENT_VIDEO_FRAMES)  # (S, 25)
            columns = np.sort(torch.rand(by_segment.shape).argsort(dim=1)[:, : self.k].numpy(), axis=1)  # (S, k)
            picks = np.take_along_axis(by_segment, columns, axis=1).ravel()  # (S·k,)
        frames = self.store.take(key, picks)  # (S·k, H, W, 3)
        if torch.rand(()) < 0.5:
            frames = frames[:, :, ::-1]  # horizontal flip
        return torch.from_numpy(np.ascontiguousarray(frames)), self.labels[index]


def collate_windows(items):
    """RandomWindows items → (B, T, H, W, 3) frame sequences and a label per window."""
    return torch.stack([frames for frames, _ in items]), torch.tensor([label for _, label in items])


def teacher_groups(entries: list[Entry], batch_frames: int) -> list[list[str]]:
    """Keys in manifest order, cut into groups of whole utterances of at least `batch_frames` frames.

    A pure function of the manifest (the last group may be smaller): a resumed export feeds the
    teacher exactly the batches an uninterrupted one does, so both write bit-identical rows.
    """
    groups, group, n_frames = [], [], 0
    for entry in entries:
        group.append(entry.key)
        n_frames += entry.n_video_frames
        if n_frames >= batch_frames:
            groups.append(group)
            group, n_frames = [], 0
    if group:
        groups.append(group)
    return groups


class GroupFrames(torch.utils.data.Dataset):
    """Item = one teacher group (`teacher_groups`): its keys, their frame counts and all their face frames,
    concatenated."""

    def __init__(self, store_path: Path, groups: list[list[str]], n_frames: dict[str, int]):
        self.store_path, self.groups, self.n_frames, self.store = store_path, groups, n_frames, None

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int):
        if self.store is None:
            self.store = open_faces(self.store_path)  # opened lazily, once per DataLoader worker
        keys = self.groups[index]
        frames = [self.store.read(key) for key in keys]
        for key, rows in zip(keys, frames):
            if len(rows) != self.n_frames[key]:
                raise StoreError(f"{self.store_path}: {key!r} has {len(rows)} frames, the manifest says "
                                 f"{self.n_frames[key]}; re-run `avl stage prepare`")
        return keys, [len(rows) for rows in frames], torch.from_numpy(np.concatenate(frames))
