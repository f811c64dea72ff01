"""Evaluation on full-length utterances: embeddings, identification, verification, and a teacher's accuracy.

Under torchrun each rank evaluates every world_size-th utterance and the results are gathered or summed.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline import distributed
from pipeline import metrics as metric_fns
from pipeline.distributed import SINGLE_PROCESS, Distributed
from pipeline.features import SEGMENT_SPEC_FRAMES, repeat_pad
from pipeline.manifest import Entry

_LEVELS = ("frame", "utterance")  # the teacher is scored per frame and per utterance


@torch.inference_mode()
def embed_spectrogram(model, spectrogram: np.ndarray, device) -> tuple[np.ndarray, np.ndarray]:
    """(embedding (D,), logits (C,)) of one full-length utterance's (F, n_freq) spectrogram; under 1 s it is
    repeat-padded to 1 s."""
    if len(spectrogram) < SEGMENT_SPEC_FRAMES:  # repeat_pad also cuts longer inputs: those stay full length
        spectrogram = repeat_pad(spectrogram, SEGMENT_SPEC_FRAMES)
    embedding, logits = model(torch.from_numpy(np.ascontiguousarray(spectrogram, dtype=np.float32))[None].to(device))
    return embedding[0].float().cpu().numpy(), logits[0].float().cpu().numpy()


@torch.inference_mode()
def embed_utterances(model, spectrograms, keys: list[str], device, job: Distributed = SINGLE_PROCESS
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings and logits of the stored spectrograms of `keys`; every rank gets every row, in `keys` order."""
    model.eval()
    rows = [embed_spectrogram(model, spectrograms.read(key, "spectrogram"), device)
            for key in distributed.shard(keys, job)]
    rows = distributed.unshard(distributed.gather(job, rows), len(keys))
    if not keys:
        return np.zeros((0, model.spec.embed_dim)), np.zeros((0, model.spec.num_classes))
    return np.stack([embedding for embedding, _ in rows]), np.stack([logit for _, logit in rows])


def identification(model, spectrograms, entries: list[Entry], class_index: dict, device,
                   job: Distributed = SINGLE_PROCESS) -> dict:
    """Top-1/top-5, UA, WA, per-class recall and the confusion matrix on full-length utterances."""
    _, logits = embed_utterances(model, spectrograms, [e.key for e in entries], device, job)
    labels = np.array([class_index[e.label] for e in entries], dtype=np.int64)
    return metric_fns.classification_metrics(logits, labels, list(class_index))


def verification(model, spectrograms, trials, device, job: Distributed = SINGLE_PROCESS) -> dict | None:
    """EER and minDCF of the cosine scores of a trial list (None without trials)."""
    if not trials:
        return None
    keys = sorted({key for trial in trials for key in (trial.enrol, trial.test)})
    embeddings, _ = embed_utterances(model, spectrograms, keys, device, job)
    scores = metric_fns.cosine_scores(dict(zip(keys, embeddings)), [(t.enrol, t.test) for t in trials])
    return metric_fns.verification_metrics(scores, np.array([t.label for t in trials]))


@torch.inference_mode()
def evaluate_teacher(model, store, keys: list[str], labels: list[int], device, batch_frames: int = 256,
                     job: Distributed = SINGLE_PROCESS) -> dict:
    """Accuracy (WA) and UA (unweighted average recall over the classes present) per frame and per utterance:
    the mean of frame logits over every frame of the utterance, or for a sequential teacher the aggregator over
    all its frame embeddings (Eq. 5). `store`: the face frames (`pipeline.face_store.open_faces`)."""
    model.eval()
    scored = []
    for key in distributed.shard(keys, job):
        frames = store.read_tensor(key)  # (T, H, W, 3) uint8, decoded on the face store's decode device
        outputs = [model(frames[i : i + batch_frames].to(device)) for i in range(0, len(frames), batch_frames)]
        logits = torch.cat([logit.float().cpu() for _, logit in outputs])
        if model.aggregator is None:
            utterance_logits = logits.mean(0)
        else:
            frame_embeddings = torch.cat([embedding.float() for embedding, _ in outputs])[None]  # (1, T, D)
            utterance_logits = model.head(model.aggregate(frame_embeddings))[0].float().cpu()
        scored.append((logits, utterance_logits))
    return frame_and_utterance_accuracy(scored, distributed.shard(labels, job), set(labels), job)


def frame_and_utterance_accuracy(scored: list[tuple[torch.Tensor, torch.Tensor]], labels: list[int],
                                 classes: set[int], job: Distributed = SINGLE_PROCESS) -> dict:
    """A teacher's {frame,utterance}_{accuracy,ua} from (frame logits (T, C), utterance logits (C,)) per utterance
    of this rank's `labels`; `classes`: every label of every rank (the same on each), so the counts sum."""
    counts = {f"{level}_{what}/{label}": 0 for level in _LEVELS for what in ("hits", "total") for label in classes}
    for (logits, utterance_logits), label in zip(scored, labels):
        counts[f"frame_hits/{label}"] += int((logits.argmax(1) == label).sum())
        counts[f"frame_total/{label}"] += len(logits)
        counts[f"utterance_hits/{label}"] += int(utterance_logits.argmax() == label)
        counts[f"utterance_total/{label}"] += 1
    counts = distributed.sum_over_ranks(job, counts)
    return {name: value for level in _LEVELS for name, value in _accuracy_and_ua(counts, level, classes).items()}


def _accuracy_and_ua(counts: dict, level: str, labels: set[int]) -> dict:
    """{level}_accuracy (WA: hits over items) and {level}_ua (the mean of the per-class recalls)."""
    hits = {label: counts[f"{level}_hits/{label}"] for label in labels}
    totals = {label: counts[f"{level}_total/{label}"] for label in labels}
    recalls = [hits[label] / totals[label] for label in labels if totals[label]]
    return {f"{level}_accuracy": sum(hits.values()) / max(sum(totals.values()), 1),
            f"{level}_ua": sum(recalls) / len(recalls) if recalls else 0.0}
