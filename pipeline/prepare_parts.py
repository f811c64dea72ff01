"""Stage 0's last step (manifest and records from what the stores hold), and stage 0 in parts across processes or
machines.

In parts, part I of N decodes utterances I, I + N, I + 2N, ... of the adapter's list (a pure function of the list;
interleaving mixes speakers, videos and clip lengths about evenly over the parts) into `part-0000I.<zarr|h5>` of each
store, which read as one store (`cache/parts.py`), and once its share is decoded leaves the record
PREPARE/parts/part-0000I.json (what it skipped, and why). Each part resumes on its own, from its own stores. When
every part has a record, one process finishes the run (manifest in the adapter's order, skipped.tsv merged from the
records, dataset.json, prepare.json, every part marked complete with the manifest's hash):
- under torchrun, rank 0, after a barrier; the process group is made with a timeout of days, not gloo's default
  30 minutes, as parts of a day-long decode can end hours apart;
- without torchrun (a job array, `--part I --num-parts N`), the part that finds every other part's record after
  writing its own: the part whose record is written last always does. `avl stage prepare --config
  PREPARE/config.toml` (num_parts set, no part) finishes a run whose parts are all done, and decodes nothing.
A finisher without torchrun holds the run directory's lock and every part's, so no part is written while it reads
and marks them.
"""

from __future__ import annotations

import hashlib
import os
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from cache import locks
from cache.parts import is_parts_directory, part_path, part_paths
from cache.schema import StoreSchema, raise_problems
from cache.store import RaggedWriter, StoreError, detect_backend, open_for_append, open_store, something_at
from pipeline import config as config_io
from pipeline import runs
from pipeline.datasets.base import Trial, Utterance
from pipeline.trial_speakers import ALLOW_OPTION, refuse_trial_speakers_in_training
from pipeline.errors import MissingInputError
from pipeline.features import SPEC_FRAMES_PER_VIDEO_FRAME, VIDEO_FPS
from pipeline.manifest import (
    CONFIG,
    PARTS,
    Entry,
    manifest_hash,
    part_record_path,
    read_part_records,
    tsv,
    write_manifest,
    write_part_record,
    write_text_atomically,
)
from pipeline.media.contact_sheet import write_contact_sheet

IDENTIFICATION_SPLITS = ("train", "val", "test")
CONTACT_SHEET = "faces.png"
# a part that has just written its record still holds its lock for a moment: the finisher waits that long for it
PART_LOCK_WAIT_SECONDS = 60.0


@dataclass(frozen=True)
class Listing:
    """What the dataset adapter lists, as stage 0 prepares it."""

    summary: dict  # adapter.describe(): dataset.json
    listed: int  # utterances the adapter lists
    utterances: list[Utterance]  # those in a split or a trial, in the adapter's order: the manifest's order
    classes: list[str]
    trials: list[Trial]


def share(utterances: list, part: tuple[int, int] | None) -> list:
    """Part (I, N)'s utterances: I, I + N, I + 2N, ... of the list; all of them for None (one process)."""
    return utterances if part is None else utterances[part[0] :: part[1]]


def share_digest(utterances: list[Utterance]) -> str:
    """sha256 of a share's keys: a record counts only for the share the current listing gives its part."""
    return hashlib.sha256("\n".join(u.key for u in utterances).encode()).hexdigest()


def lock_file(out: Path, part: tuple[int, int] | None) -> Path:
    """The lock a stage-0 process holds while it writes: its part's, or the prepare directory's."""
    return locks.inside(out) if part is None else out / PARTS / f"part-{part[0]:05d}.lock"


def save_config(config, path: Path) -> Path:
    """Save a stage's resolved config atomically: every part of a run writes it, and none may read half of it."""
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    config_io.save(config, temporary)
    os.replace(temporary, path)
    return path


def finish_command(config: Path, part: tuple[int, int] | None) -> str:
    """The command that resumes and finishes a store (or part) of this run."""
    return f"avl stage prepare --config {config}" + ("" if part is None else f" --part {part[0]}")


def _is_one_store(path: Path) -> bool:
    try:
        detect_backend(path)
        return True
    except StoreError:
        return False


def refuse_mixing(stores: list[Path], num_parts: int | None, config: Path) -> None:
    """A run in parts and a run in one process never write the same stores, whatever --overwrite says (as stage 2)."""
    for store in stores:
        if num_parts is None and is_parts_directory(store):
            raise StoreError(f"{store}: holds the parts of a stage 0 run in parts; finish that run "
                             f"(`{finish_command(config, None)}`, with --part I for a part not done), or remove "
                             f"{store.parent} or pass another --run-dir to prepare in one process")
        if num_parts is not None and something_at(store) and _is_one_store(store):
            raise StoreError(f"{store}: holds the whole store of a stage 0 run in one process; resume it without "
                             "--part, --num-parts and torchrun, or remove it or pass another --run-dir to prepare in parts")
        if num_parts is not None and (existing := part_paths(store)):
            with open_store(existing[0], require_complete=False) as first:
                count = first.part[1] if first.part else None
            if count != num_parts:
                raise StoreError(f"{store}: holds parts of a run in {count} parts, not {num_parts}; run with "
                                 f"--num-parts {count}, or remove it or pass another --run-dir")


def open_writer(schema: StoreSchema, store: Path, backend: str, overwrite: bool, hint: str,
                part: tuple[int, int] | None) -> RaggedWriter:
    """A writer of `store`, or of its part: new, or resuming what an earlier run with the same settings left."""
    if part is None:
        return schema.open_or_create(store, backend, overwrite, hint)
    path = part_path(store, part[0], backend)
    if something_at(path) and not overwrite:
        with open_store(path, require_complete=False) as existing:
            problems = schema.resume_problems(existing)
            if existing.part != part:
                problems.append(f"is part {existing.part} (index, count), this run writes part {part}")
            raise_problems(path, problems, hint)
        return open_for_append(path)
    return schema.create(path, backend, overwrite, part=part)


def finish(out: Path, listing: Listing, skipped: list[tuple[str, str]], stores: list[Path], faces: dict) -> dict:
    """Write manifest, skipped.tsv, dataset.json and prepare.json from the stores, then mark each store (or each of
    its parts) complete with the manifest's hash; returns prepare.json. `stores`: the spectrogram store, then the face
    store if there is one, then the waveform store if there is one; `faces`: prepare.json's account of the face
    crops (None without a face store)."""
    skipped_keys = {key for key, _ in skipped}
    kept = [u for u in listing.utterances if u.key not in skipped_keys]
    for store in stores:
        with open_store(store, require_complete=False) as reader:
            if missing := [u.key for u in kept if u.key not in reader]:
                raise StoreError(f"{store}: lacks {len(missing)} of the {len(kept)} utterances stage 0 keeps, e.g. "
                                 f"{missing[:3]}; run stage 0 again to decode them")
    with open_store(stores[0], require_complete=False) as spectrograms:
        # 4 spectrogram rows per video frame (checked per clip when decoded), whatever the face store's encoding
        frames = {u.key: spectrograms.length(u.key, "spectrogram") // SPEC_FRAMES_PER_VIDEO_FRAME for u in kept}
    audio_only = faces["faces"] is None
    entries = [Entry(u.key, u.label, u.split if u.split in IDENTIFICATION_SPLITS else "none", frames[u.key],
                     frames[u.key] / VIDEO_FPS, str(u.audio_path if audio_only else u.video_path)) for u in kept]
    kept_trials = [t for t in listing.trials if t.enrol not in skipped_keys and t.test not in skipped_keys]
    refuse_trial_speakers_in_training(entries, kept_trials, listing.summary.get(ALLOW_OPTION, False),
                                      f"{out / 'dataset.json'}")
    write_manifest(out, entries, listing.classes, kept_trials)
    write_text_atomically(out / "skipped.tsv", tsv([("key", "reason"), *skipped]))
    # the adapter's counts are of what it lists: say how many of those the manifest leaves out, and why
    runs.write_json(out / "dataset.json", {**listing.summary, "manifest": {
        "utterances": len(entries),
        "dropped": {"in_no_split_and_no_trial": listing.listed - len(listing.utterances),
                    "unreadable_media": len(skipped)},
        "unreadable_media_listed_in": "skipped.tsv"}})

    digest = manifest_hash(out)
    for store in stores:
        for path in part_paths(store) if is_parts_directory(store) else [store]:
            with open_for_append(path) as writer:
                writer.set_attrs(manifest_sha256=digest)
                writer.mark_complete()
    summary = {
        "utterances": len(entries),
        "skipped": len(skipped),
        "classes": len(listing.classes),
        "trials": len(kept_trials),
        "hours": sum(e.seconds for e in entries) / 3600,
        "splits": {split: sum(e.split == split for e in entries) for split in (*IDENTIFICATION_SPLITS, "none")},
        "manifest_sha256": digest,
        **faces,
    }
    runs.write_json(out / "prepare.json", summary)
    if not audio_only and entries:
        write_contact_sheet(stores[1], entries, listing.classes, out / CONTACT_SHEET)
    tqdm.write(f"prepare: {len(entries)} utterances ({len(skipped)} skipped), {len(listing.classes)} classes → {out}")
    return summary


def start_part(out: Path, part: tuple[int, int]) -> None:
    """Drop this part's record: the part is being decoded (again), so it is not done until it writes a new one."""
    part_record_path(out, part[0]).unlink(missing_ok=True)


def record_part(out: Path, listing: Listing, part: tuple[int, int], skipped: list[tuple[str, str]],
                stats: dict) -> None:
    """Record that `part` has decoded its share, with what it skipped and why."""
    mine = share(listing.utterances, part)
    write_part_record(out, part[0], {"part": part[0], "num_parts": part[1], "utterances": len(mine),
                                     "share_sha256": share_digest(mine), "skipped": [list(s) for s in skipped],
                                     **stats})


def missing_parts(out: Path, listing: Listing, count: int) -> list[int]:
    """The parts of a run in `count` parts without a record of their share of this listing."""
    records = read_part_records(out)
    return [index for index in range(count)
            if (record := records.get(index)) is None or record.get("num_parts") != count
            or record.get("share_sha256") != share_digest(share(listing.utterances, (index, count)))]


def _missing_message(out: Path, missing: list[int], count: int) -> str:
    shown = ", ".join(map(str, missing[:10])) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
    return (f"{out}: stage 0 in {count} parts is not finished: part(s) {shown} have not decoded their share (no "
            f"record in {out / PARTS}, or one of another listing of the corpus); run each with "
            f"`avl stage prepare --config {out / CONFIG} --part I`; the last to finish writes the manifest")


def finish_parts(out: Path, listing: Listing, stores: list[Path], faces: dict, count: int,
                 lock_parts: bool = True, busy_ok: bool = False) -> dict | None:
    """Finish a run in `count` parts whose parts have all decoded their share; returns prepare.json.

    lock_parts: hold every part's lock while finishing (under torchrun the other ranks hold theirs at the barrier,
    done writing). busy_ok: a part not done, or another process finishing, is said and returns None (a part that
    found every record but was not the one to finish), not an error."""
    try:
        with ExitStack() as held:
            held.enter_context(locks.hold(locks.inside(out)))
            for index in range(count) if lock_parts else ():
                held.enter_context(locks.hold(lock_file(out, (index, count)), wait_seconds=PART_LOCK_WAIT_SECONDS))
            if missing := missing_parts(out, listing, count):  # read again under the locks: now no part is written
                if busy_ok:
                    tqdm.write(f"prepare: {_missing_message(out, missing, count)}")
                    return None
                raise MissingInputError(_missing_message(out, missing, count))
            records = read_part_records(out)
            reasons = {key: reason for index in range(count) for key, reason in records[index]["skipped"]}
            skipped = [(u.key, reasons[u.key]) for u in listing.utterances if u.key in reasons]
            return finish(out, listing, skipped, stores, faces)
    except locks.LockedError as error:
        if not busy_ok:
            raise
        tqdm.write(f"prepare: this part is done; not finishing the run here: {error}")
        return None


def finish_if_last(out: Path, listing: Listing, stores: list[Path], faces: dict, part: tuple[int, int]) -> None:
    """After a part without torchrun has written its record: finish the run if every other part is done too."""
    if missing := missing_parts(out, listing, part[1]):
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        tqdm.write(f"prepare: part {part[0]} of {part[1]} is done; part(s) {shown} are not yet: the last part to "
                   "finish writes the manifest")
        return
    finish_parts(out, listing, stores, faces, part[1], busy_ok=True)
