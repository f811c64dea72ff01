"""What an audio teacher (pipeline/models/audio_teachers.py) reads and does in stages 1 and 2: the clean audio stage 0
stored, random training crops of it, its accuracy, and its per-grid-frame outputs for the cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cache.store import open_store
from pipeline import distributed
from pipeline.distributed import SINGLE_PROCESS, Distributed
from pipeline.errors import MissingInputError
from pipeline.evaluate import frame_and_utterance_accuracy
from pipeline.features import SEGMENT_VIDEO_FRAMES, SPEC_FRAMES_PER_VIDEO_FRAME, from_pcm16, random_crop, repeat_pad
from pipeline.models.audio_teachers import SAMPLES_PER_VIDEO_FRAME
from pipeline.runs import find_store
from pipeline.training import autocast, autocast_dtype

STORES = {"spectrogram": ("spectrograms", "spectrogram", SPEC_FRAMES_PER_VIDEO_FRAME),
          "waveform": ("waveforms", "waveform", SAMPLES_PER_VIDEO_FRAME)}  # input kind → store stem, field, rows/frame


class CleanAudio:
    """An audio teacher's input of an utterance, by video frame range: (rows, n_freq) spectrogram or (n,) waveform,
    float32, as stage 0 stored it. Opened lazily (once per DataLoader worker)."""

    def __init__(self, prepared: Path, input_kind: str):
        stem, self.field, self.rows_per_frame = STORES[input_kind]
        self.path = find_store(prepared, stem, f"a teacher on the {input_kind}")
        self.input_kind, self.store = input_kind, None

    def read(self, key: str, first_frame: int | None = None, stop_frame: int | None = None) -> np.ndarray:
        if self.store is None:
            self.store = open_store(self.path)
        start = None if first_frame is None else first_frame * self.rows_per_frame
        stop = None if stop_frame is None else stop_frame * self.rows_per_frame
        if key not in self.store:
            raise MissingInputError(f"{self.path}: has no utterance {key!r}; re-run `avl stage prepare`")
        rows = self.store.read(key, self.field, start, stop)
        return from_pcm16(rows) if self.input_kind == "waveform" else rows.astype(np.float32)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
        self.store = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "store": None}


class AudioCrops(torch.utils.data.Dataset):
    """Item = a random crop on the 1 s grid of an utterance's clean input (repeat-padded, as the students' crops
    are) and its class."""

    def __init__(self, audio: CleanAudio, keys: list[str], labels: list[int], n_frames: list[int], crop_seconds: int):
        self.audio, self.keys, self.labels, self.n_frames, self.crop_seconds = audio, keys, labels, n_frames, crop_seconds

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int):
        crop = random_crop(self.n_frames[index], self.crop_seconds)
        rows = self.audio.read(self.keys[index], *crop.video_range)
        length = crop.n_segments * SEGMENT_VIDEO_FRAMES * self.audio.rows_per_frame
        return torch.from_numpy(np.ascontiguousarray(repeat_pad(rows, length))), self.labels[index]


@torch.inference_mode()
def evaluate_audio_teacher(model, audio: CleanAudio, keys: list[str], labels: list[int], device,
                           job: Distributed = SINGLE_PROCESS) -> dict:
    """Accuracy and UA per grid frame and per utterance (the mean of its frames' logits) on whole utterances."""
    model.eval()
    scored = []
    for key in distributed.shard(keys, job):
        _, logits = model(torch.from_numpy(audio.read(key))[None].to(device))
        logits = logits[0].float().cpu()  # (T, C)
        scored.append((logits, logits.mean(0)))
    return frame_and_utterance_accuracy(scored, distributed.shard(labels, job), set(labels), job)


@torch.inference_mode()
def audio_teacher_outputs(teacher, inputs: np.ndarray, n_frames: int, device, layers: dict
                          ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Stage 2's pass over one whole utterance: (T, D) embeddings, (T, C) class probabilities and each of `layers`
    (name → module) as (T, C_layer) rows on the grid, float32; T = n_frames, the manifest's frame count."""
    raw: dict[str, object] = {}
    handles = [module.register_forward_hook(lambda _m, _i, output, name=name: raw.__setitem__(name, output))
               for name, module in layers.items()]
    try:
        with autocast(autocast_dtype("auto", device), device):  # bf16 on CUDA, float32 on the CPU
            embedding, logits = teacher(torch.from_numpy(inputs)[None].to(device))
    finally:
        for handle in handles:
            handle.remove()
    if embedding.shape[1] != n_frames:
        raise ValueError(f"the audio teacher gave {embedding.shape[1]} grid frames for an utterance of {n_frames}")
    rows = {name: teacher.layer_rows(name, output, n_frames)[0].float().cpu().numpy() for name, output in raw.items()}
    return (embedding[0].float().cpu().numpy(), logits[0].float().softmax(dim=-1).cpu().numpy(), rows)
