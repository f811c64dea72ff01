"""A store checked against the run it belongs to: the manifest of a prepare directory and a teacher checkpoint.

The storage layer knows nothing of manifests or checkpoints; this module reads them and hands the
storage layer's checks (`cache/inspect.py`, `cache/schema.py`) what they should find.
"""

from __future__ import annotations

from pathlib import Path

from cache.inspect import verify_store
from cache.schema import TeacherCacheSpec
from pipeline.manifest import MANIFEST, manifest_hash, read_manifest
from pipeline.runs import file_sha256


def verify(path: Path, manifest: Path | None = None, teacher: Path | None = None) -> list[str]:
    """Every problem of the store at `path` (an empty list: it is sound): its structure, whether it holds the
    keys of a manifest (a prepare directory or its manifest.tsv) and was made from it, and whether a teacher
    checkpoint made it."""
    problems, keys, expected = [], None, {}
    if manifest is not None:
        directory = Path(manifest).parent if Path(manifest).name == MANIFEST else Path(manifest)
        try:
            keys = {entry.key: entry.split for entry in read_manifest(directory)}
            expected["manifest_sha256"] = manifest_hash(directory)
        except FileNotFoundError as error:
            problems.append(str(error))
    if teacher is not None:
        if Path(teacher).is_file():
            expected["teacher_fingerprint"] = file_sha256(Path(teacher))
        else:
            problems.append(f"{teacher}: no such teacher checkpoint")
    return verify_store(path, keys, TeacherCacheSpec(**expected)) + problems
