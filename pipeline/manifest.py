"""The prepared manifest (stage 0 output): one TSV row per utterance, class names, and trials; and the records
the parts of a stage 0 run in parts leave (`pipeline/prepare_parts.py`) until one of them writes the manifest."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.datasets.base import Trial
from pipeline.errors import MissingInputError

MANIFEST = "manifest.tsv"
CLASSES = "classes.txt"
TRIALS = "trials.tsv"
COLUMNS = ("key", "label", "split", "n_video_frames", "seconds", "source")
PARTS = "parts"  # PREPARE/parts/: the record of every part of a parted stage 0 that has decoded its share
CONFIG = "config.toml"  # the settings stage 0 saves beside its outputs: also the command that finishes it


@dataclass(frozen=True)
class Entry:
    """One prepared utterance."""

    key: str
    label: str
    split: str
    n_video_frames: int
    seconds: float
    source: str


def write_text_atomically(path: Path, text: str) -> Path:
    """Write via a temporary file and a rename, so a stage reading it (maybe on another machine) never sees half."""
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
    return path


def tsv(rows) -> str:
    """Rows as tab-separated text, one line each."""
    buffer = io.StringIO()
    csv.writer(buffer, delimiter="\t", lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def write_manifest(directory: Path, entries: list[Entry], classes: list[str], trials: list[Trial]) -> None:
    # the manifest last: a stage that finds it finds the classes and trials written with it
    write_text_atomically(directory / CLASSES, "".join(f"{name}\n" for name in classes))
    write_text_atomically(directory / TRIALS, tsv([("label", "enrol", "test"),
                                                   *((trial.label, trial.enrol, trial.test) for trial in trials)]))
    write_text_atomically(directory / MANIFEST, tsv([COLUMNS, *(
        (e.key, e.label, e.split, e.n_video_frames, f"{e.seconds:.3f}", e.source) for e in entries)]))


def read_manifest(directory: Path) -> list[Entry]:
    path = directory / MANIFEST
    if not path.exists():
        raise MissingInputError(f"{path}: no manifest; " + (unfinished_parts(directory) or "run `avl stage prepare` first"))
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


def part_record_path(directory: Path, index: int) -> Path:
    return directory / PARTS / f"part-{index:05d}.json"


def write_part_record(directory: Path, index: int, record: dict) -> Path:
    """Say that part `index` has decoded its share (what it skipped and why included), atomically."""
    path = part_record_path(directory, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomically(path, json.dumps(record, indent=1) + "\n")


def read_part_records(directory: Path) -> dict[int, dict]:
    """Part index → record, for every part record in `directory` ({} for a stage 0 run as one process)."""
    records = {}
    for path in sorted((directory / PARTS).glob("part-*.json")):
        try:
            record = json.loads(path.read_text())
            records[int(record["part"])] = record
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being replaced this instant, or not ours: its part counts as not done
    return records


def unfinished_parts(directory: Path) -> str | None:
    """Why a stage 0 run in parts has no manifest yet and how to finish it; None if it did not run in parts."""
    records = read_part_records(directory)
    if not records:
        return None
    count = max(int(record["num_parts"]) for record in records.values())
    missing = [index for index in range(count) if index not in records]
    config = directory / CONFIG
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        return (f"stage 0 ran in {count} parts and parts {shown} have not finished decoding; run each with "
                f"`avl stage prepare --config {config} --part I` (the last part to finish writes the manifest)")
    return f"stage 0 ran in {count} parts and all have decoded their share; finish it with `avl stage prepare --config {config}`"
