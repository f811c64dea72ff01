"""Fold manifests of a subject-independent protocol: one prepared corpus, re-split per fold, whose stores every
fold links to instead of decoding again."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from cache.store import open_store
from pipeline import runs
from pipeline.datasets.base import DatasetError
from pipeline.errors import RunExistsError
from pipeline.manifest import Entry, manifest_hash, read_classes, read_manifest, read_trials, write_manifest

STORES = ("spectrograms", "faces")  # the stage-0 stores every fold links to
SPLITS = ("train", "val", "test")


def stores_complete(prepared: Path) -> bool:
    """Whether a prepare directory holds every store a fold links to, each complete."""
    for stem in STORES:
        try:
            reader = open_store(runs.find_store(prepared, stem), require_complete=False)
        except FileNotFoundError:
            return False
        reader.close()
        if not reader.complete:
            return False
    return True


def fold_entries(entries: list[Entry], adapter) -> list[Entry]:
    """The shared manifest's entries with the split the adapter's fold gives each; refuses a key it does not list."""
    splits = {utterance.key: utterance.split for utterance in adapter.utterances()}
    unknown = [entry.key for entry in entries if entry.key not in splits]
    if unknown:
        raise DatasetError(f"{adapter.root}: {len(unknown)} prepared utterances are not in the corpus's fold "
                           f"{adapter.fold} listing, e.g. {unknown[:3]}; the corpus changed since it was prepared: "
                           "remove RUN_DIR/shared and run again")
    return [replace(entry, split=splits[entry.key]) for entry in entries]


def speakers_by_split(adapter, entries: list[Entry]) -> dict[str, list[str]]:
    speaker = {utterance.key: utterance.speaker for utterance in adapter.utterances()}
    return {split: sorted({speaker[e.key] for e in entries if e.split == split}) for split in SPLITS}


def link_store(link: Path, target: Path) -> None:
    """A relative symlink `link` → `target` (the run directory can move); an existing other file is an error."""
    relative = os.path.relpath(target, link.parent)
    if link.is_symlink() and os.readlink(link) == relative:
        return
    if link.exists() or link.is_symlink():
        raise RunExistsError(f"{link}: exists and is not a link to {target}; remove it to let the protocol link "
                             "the shared store")
    link.symlink_to(relative, target_is_directory=target.is_dir())


def prepare_fold(fold_run_dir: Path, adapter, shared: Path) -> Path:
    """The prepare directory of the adapter's fold in `fold_run_dir`: the manifest of `shared` re-split for the
    fold, its classes and trials, links to its stores, dataset.json and fold.json.

    Unchanged when it already holds this manifest; a different one is refused once the fold's teacher exists
    (its results would belong to another split)."""
    fold = adapter.fold
    entries = fold_entries(read_manifest(shared), adapter)
    speakers = speakers_by_split(adapter, entries)
    for split in SPLITS:
        if not speakers[split]:
            raise DatasetError(f"{adapter.root}: fold {fold} has no {split} utterances (subjects by split: "
                               f"{speakers}); the protocol needs a validation subject to choose λ without the test "
                               "fold, so RAVDESS needs at least 3 actors and IEMOCAP 2 sessions")
    if set(speakers["test"]) & set(speakers["train"] + speakers["val"]):
        raise DatasetError(f"{adapter.root}: fold {fold} puts test subjects {speakers['test']} in train or val too")
    out = runs.prepare_dir(fold_run_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "manifest.tsv"
    if not manifest.exists() or read_manifest(out) != entries:
        teacher = runs.teacher_dir(fold_run_dir)
        if manifest.exists() and teacher.exists():
            raise DatasetError(f"{manifest}: differs from fold {fold} of the prepared corpus, and {teacher} was "
                               "trained on it; remove the fold's directory to redo the fold")
        write_manifest(out, entries, read_classes(shared), read_trials(shared))
    for stem in STORES:
        store = runs.find_store(shared, stem)
        link_store(out / store.name, store)
    runs.write_json(out / "dataset.json", {**adapter.describe(), "shared_prepare": str(shared)})
    runs.write_json(out / "fold.json", {
        "fold": fold, "speakers": speakers,
        "utterances": {split: sum(e.split == split for e in entries) for split in (*SPLITS, "none")},
        "manifest_sha256": manifest_hash(out), "shared_manifest_sha256": manifest_hash(shared),
    })
    return out
