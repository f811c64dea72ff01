"""The prepared manifest (stage 0 output): one TSV row per utterance, class names, and trials."""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

from pipeline.datasets.base import Trial
from pipeline.errors import MissingInputError

MANIFEST = "manifest.tsv"
CLASSES = "classes.txt"
TRIALS = "trials.tsv"
COLUMNS = ("key", "label", "split", "n_video_frames", "seconds", "source")


@dataclass(frozen=True)
class Entry:
    """One prepared utterance."""

    key: str
    label: str
    split: str
    n_video_frames: int
    seconds: float
    source: str


def write_manifest(directory: Path, entries: list[Entry], classes: list[str], trials: list[Trial]) -> None:
    with open(directory / MANIFEST, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(COLUMNS)
        for entry in entries:
            writer.writerow([entry.key, entry.label, entry.split, entry.n_video_frames, f"{entry.seconds:.3f}", entry.source])
    (directory / CLASSES).write_text("".join(f"{name}\n" for name in classes))
    with open(directory / TRIALS, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(("label", "enrol", "test"))
        writer.writerows((trial.label, trial.enrol, trial.test) for trial in trials)


def read_manifest(directory: Path) -> list[Entry]:
    path = directory / MANIFEST
    if not path.exists():
        raise MissingInputError(f"{path}: no manifest; run `avl stage prepare` first")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return [
        Entry(row["key"], row["label"], row["split"], int(row["n_video_frames"]), float(row["seconds"]), row["source"])
        for row in rows
    ]


def read_splits(directory: Path) -> dict[str, list[Entry]]:
    """The manifest's entries of each split (train, val, test), in manifest order."""
    entries = read_manifest(directory)
    return {split: [e for e in entries if e.split == split] for split in ("train", "val", "test")}


def read_classes(directory: Path) -> list[str]:
    return (directory / CLASSES).read_text().split()


def read_trials(directory: Path) -> list[Trial]:
    with open(directory / TRIALS, newline="") as handle:
        return [Trial(int(row["label"]), row["enrol"], row["test"]) for row in csv.DictReader(handle, delimiter="\t")]


def manifest_hash(directory: Path) -> str:
    """sha256 of the manifest file: stores record it so a cache can be matched to its data."""
    return hashlib.sha256((directory / MANIFEST).read_bytes()).hexdigest()
