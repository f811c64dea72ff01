"""The stores the stages write: spectrogram shards, face-crop frames and the teacher cache.

Each schema is a frozen dataclass of the attributes its store records. It creates the store (fields
and attributes in one place) and checks an existing store: `resume_problems` against this schema
before a writer extends it, `TeacherCacheSpec.problems` against what a reading stage expects (its
unset attributes are not checked). A problem is a sentence without the store's path;
`raise_problems` puts the path in front and raises them as one StoreError.

Chunk sizes aim at 128-512 KB: a training batch reads a few rows of many utterances and a read
decompresses whole chunks, so small chunks keep random reads cheap, while the chunk count (and with
zarr's 16-chunk shards, the file count) stays bounded.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from cache.base import FieldSpec, StoreError
from cache.parts import PartedReader
from cache.ragged import RaggedReader, RaggedWriter
from cache.store import create_store, open_for_append, open_store, something_at

EMBEDDING_CHUNK_BYTES = 256 << 10
TEACHER_CACHE_FORMAT = 1
Reader = RaggedReader | PartedReader


def spectrogram_fields(n_freq: int) -> list[FieldSpec]:
    """Stage 0: (ΣF, n_freq) float16 spectrogram rows, raw (a 5 s crop is copied from one or two chunks of a memory
    map); 512 rows of 257 bins is a 257 KB chunk, what a process checksums on its first touch of it."""
    return [FieldSpec("spectrogram", "float16", (n_freq,), ragged=True, chunk_rows=512, layout="raw")]


def waveform_fields() -> list[FieldSpec]:
    """16-bit PCM samples, one ragged row per sample (8 s of 16 kHz audio per 256 KB chunk)."""
    return [FieldSpec("waveform", "int16", (), ragged=True, chunk_rows=128_000, layout="raw")]


def face_fields(face_size: int, encoding: str = "raw") -> list[FieldSpec]:
    """Stage 0's face crops, by encoding (FACE_FIELDS; `pipeline/face_store.py` writes and reads them)."""
    if encoding not in FACE_FIELDS:
        raise ValueError(f"face encoding {encoding!r} is not one of {sorted(FACE_FIELDS)}")
    return FACE_FIELDS[encoding](face_size)


def _raw_face_fields(face_size: int) -> list[FieldSpec]:
    """(ΣT, S, S, 3) uint8 pixels, compressed by the backend's codec; 32 rows of 64×64×3 is a 384 KB chunk."""
    return [FieldSpec("frames", "uint8", (face_size, face_size, 3), ragged=True, chunk_rows=32)]


def _jpeg_face_fields(face_size: int) -> list[FieldSpec]:
    """Each frame's JPEG bytes after the header its key's frames share, concatenated per key, (ΣB,) uint8, their
    count per frame, (ΣT,) int32 (frame counts and a frame's byte range come from the counts alone), and the shared
    header once per key, (ΣH,) uint8. All uncompressed (JPEG is compressed already; raw fields are read with one
    pread per chunk). A 5 s crop's bytes are about 0.2 MB at 64 px, 0.4 MB at 112 px and 1-2 MB at 224 px (`avl
    bench-faces`, quality 90): one or two 512 KB chunks, three or four at 224 px."""
    return [FieldSpec("jpeg", "uint8", (), ragged=True, chunk_rows=JPEG_CHUNK_BYTES, layout="raw"),
            FieldSpec("jpeg_bytes", "int32", (), ragged=True, chunk_rows=16384, layout="raw"),
            FieldSpec("jpeg_header", "uint8", (), ragged=True, chunk_rows=64 << 10, layout="raw")]


# How face crops are stored, by encoding: the fields that hold them (a store that records no encoding is raw).
FACE_FIELDS = {"raw": _raw_face_fields, "jpeg": _jpeg_face_fields}
JPEG_CHUNK_BYTES = 512 << 10


def cache_fields(embed_dim: int, num_classes: int, dtype: str, sequential: bool = False) -> list[FieldSpec]:
    """Stage 2 (DESIGN.md): ragged per-frame and per-segment rows, per-utterance rows; a sequential teacher
    adds ragged per-window rows (window = training crop, stride 1 segment): `aggregator` and `window_soft`.
    Every field is raw: stage 3 reads a few rows of each per crop, and embeddings barely compress."""
    embedding_rows = max(64, EMBEDDING_CHUNK_BYTES // (embed_dim * np.dtype(dtype).itemsize))  # 256 at 512-d fp16
    window_fields = [
        FieldSpec("aggregator", dtype, (embed_dim,), ragged=True, chunk_rows=embedding_rows, layout="raw"),
        FieldSpec("window_soft", "float32", (num_classes,), ragged=True,
                  chunk_rows=max(64, EMBEDDING_CHUNK_BYTES // (num_classes * 4)), layout="raw"),
    ]
    return [
        FieldSpec("frames", dtype, (embed_dim,), ragged=True, chunk_rows=embedding_rows, layout="raw"),
        FieldSpec("frame_prob", "float32", (), ragged=True, chunk_rows=4096, layout="raw"),
        FieldSpec("frame_pred", "int32", (), ragged=True, chunk_rows=4096, layout="raw"),
        FieldSpec("segments", dtype, (embed_dim,), ragged=True, chunk_rows=embedding_rows, layout="raw"),
        FieldSpec("peak", dtype, (embed_dim,), ragged=False, chunk_rows=embedding_rows, layout="raw"),
        FieldSpec("soft", "float32", (num_classes,), ragged=False, chunk_rows=256, layout="raw"),
    ] + (window_fields if sequential else [])


def raise_problems(path: str | os.PathLike, problems: list[str], hint: str | None = None) -> None:
    """Raise one StoreError naming every problem (and then `hint`, how to get past them); none: return."""
    if problems:
        raise StoreError(f"{path}: {'; '.join(problems)}" + (f"; {hint}" if hint else ""))


def _json(value: Any) -> Any:
    """A value as the store gives it back: tuples become lists."""
    return list(value) if isinstance(value, tuple) else value


class StoreSchema:
    """A store's recorded attributes (the dataclass fields, after `kind`) and the fields they imply."""

    kind: ClassVar[str]

    def attrs(self) -> dict[str, Any]:
        """The attributes to record, as JSON values."""
        return {"kind": self.kind, **{name: _json(value) for name, value in asdict(self).items()}}

    def fields(self) -> list[FieldSpec]:
        """The arrays the store holds."""
        raise NotImplementedError

    def create(self, path: str | os.PathLike, backend: str = "zarr", overwrite: bool = False,
               part: tuple[int, int] | None = None) -> RaggedWriter:
        """A new empty store of this schema (see `create_store`)."""
        return create_store(path, self.fields(), self.attrs(), backend=backend, overwrite=overwrite, part=part)

    # what a store written before an attribute existed holds instead of it (a face store without `encoding` is raw)
    legacy_attrs: ClassVar[dict[str, Any]] = {}

    def resume_problems(self, store: Reader) -> list[str]:
        """What stops a writer of this schema from extending `store`: each attribute recorded otherwise."""
        recorded = {**self.legacy_attrs, **store.attrs}
        return [f"was written with {name}={recorded.get(name)!r}, this run uses {value!r}"
                for name, value in self.attrs().items() if recorded.get(name) != value]

    def open_or_create(self, path: Path, backend: str, overwrite: bool, hint: str) -> RaggedWriter:
        """A writer for `path`: new, or resuming a store an earlier run of this schema left incomplete."""
        if something_at(path) and not overwrite:
            with open_store(path, require_complete=False) as existing:
                raise_problems(path, self.resume_problems(existing), hint)
            return open_for_append(path)
        return self.create(path, backend, overwrite)


@dataclass(frozen=True)
class PreparedStoreSpec(StoreSchema):
    """A stage-0 store: the corpus it was decoded from, recorded first, before each kind's own attributes."""

    dataset: str
    dataset_root: str
    video_fps: int


@dataclass(frozen=True)
class SpectrogramStoreSpec(PreparedStoreSpec):
    """Stage 0's spectrogram shards; `spectrogram` is the recorded SpectrogramParams."""

    kind: ClassVar[str] = "spectrograms"
    spectrogram: dict[str, Any]

    def fields(self) -> list[FieldSpec]:
        """One ragged float16 field of n_fft // 2 + 1 bins (a one-sided STFT)."""
        return spectrogram_fields(self.spectrogram["n_fft"] // 2 + 1)


@dataclass(frozen=True)
class WaveformStoreSpec(PreparedStoreSpec):
    """Stage 0's waveforms (`prepare --waveforms`): what an audio teacher and a degraded student start from."""

    kind: ClassVar[str] = "waveforms"
    sample_rate: int

    def fields(self) -> list[FieldSpec]:
        return waveform_fields()


LEGACY_FACE_ATTRS = {"encoding": "raw", "quality": None}  # what a face store without these attributes holds


@dataclass(frozen=True)
class FaceStoreSpec(PreparedStoreSpec):
    """Stage 0's face-crop frames; `crop` says how the faces were cut out."""

    kind: ClassVar[str] = "faces"
    legacy_attrs: ClassVar[dict[str, Any]] = LEGACY_FACE_ATTRS
    face_size: int
    crop: str
    encoding: str = "raw"  # a key of FACE_FIELDS
    quality: int | None = None  # JPEG quality, 1-100; None for raw

    def __post_init__(self) -> None:
        face_fields(self.face_size, self.encoding)  # refuses an unknown encoding
        jpeg = self.encoding == "jpeg"
        if not (self.quality is not None and 1 <= self.quality <= 100 if jpeg else self.quality is None):
            raise ValueError(f"face store: quality {self.quality!r} with encoding {self.encoding!r} (jpeg takes a "
                             "quality in 1..100, raw none)")

    def fields(self) -> list[FieldSpec]:
        """The fields of this encoding: ragged face_size × face_size RGB crops, as pixels or JPEG bytes."""
        return face_fields(self.face_size, self.encoding)



def face_encoding(attrs: Mapping[str, Any]) -> str:
    """The encoding a face store's attributes record: raw when they record none (written before encodings)."""
    return attrs.get("encoding", LEGACY_FACE_ATTRS["encoding"])


@dataclass(frozen=True)
class TeacherCacheSpec(StoreSchema):
    """Stage 2's teacher cache: how it was made. As a reader's expectation, an attribute left None is not checked."""

    kind: ClassVar[str] = "teacher-embeddings"
    teacher_fingerprint: str | None = None  # sha256 of the checkpoint; a reader may expect a prefix of it
    teacher_arch: str | None = None
    teacher_tiny: bool | None = None
    teacher_sequential: bool | None = None
    teacher_precision: str | None = None
    embed_dim: int | None = None
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None
    video_fps: int | None = None
    segment_frames: int | None = None
    window_seconds: int | None = None
    dtype: str | None = None
    batch_frames: int | None = None
    dataset: str | None = None
    dataset_root: str | None = None
    face_size: int | None = None
    face_crop: str | None = None
    manifest_sha256: str | None = None
    splits: tuple[str, ...] | None = None  # the exported splits: readers check coverage of these only

    def attrs(self) -> dict[str, Any]:
        """The attributes to record, with the cache format version."""
        return {"kind": self.kind, "format_version": TEACHER_CACHE_FORMAT,
                **{name: value for name, value in super().attrs().items() if name != "kind"}}

    def fields(self) -> list[FieldSpec]:
        """The per-frame, per-segment and per-utterance targets; a sequential teacher's per-window ones too."""
        return cache_fields(self.embed_dim, self.num_classes, self.dtype, bool(self.teacher_sequential))

    def resume_problems(self, store: Reader, part: tuple[int, int] | None = None) -> list[str]:
        """What stops this export from extending `store`: another teacher, another setting or another part."""
        made_by = store.attrs.get("teacher_fingerprint")
        if made_by != self.teacher_fingerprint:
            return [f"cache was made by teacher {str(made_by)[:12]}, this teacher is {self.teacher_fingerprint[:12]}"]
        problems = super().resume_problems(store)
        if store.part != part:
            problems.append(f"is part {store.part} (index, count), this export writes part {part}")
        return problems

    def problems(self, store: Reader, training_keys: Collection[str] = (), test_keys: Collection[str] = (),
                 target_field: str | None = None, window_rows: Mapping[str, int] | None = None) -> list[str]:
        """Whether `store` is the cache a reader expects: every set attribute (the teacher fingerprint by prefix),
        `training_keys` present, no `test_keys` (they would leak the test fold into training), the field the
        reader's targets come from, and `window_rows[key]` rows of it per key."""
        problems = [problem for attribute in dataclasses.fields(self) if getattr(self, attribute.name) is not None
                    for problem in self._attribute_problems(store.attrs, attribute.name)]
        if leaked := sorted(set(test_keys) & set(store.keys)):
            problems.append(f"holds {len(leaked)} test-fold utterances (e.g. {leaked[:3]}); training on it would leak "
                            "the test fold: remove it and run again")
        if missing := [key for key in training_keys if key not in store]:
            problems.append(f"lacks {len(missing)} of {len(training_keys)} training utterances, e.g. {missing[:3]}")
        if target_field is not None and target_field not in store.fields:
            kind = "sequential" if store.attrs.get("teacher_sequential") else "non-sequential"
            made_by = f"a {kind} teacher, {store.attrs.get('teacher_arch')}"
            problems.append(f"cache has no {target_field!r} rows (made by {made_by}); "
                            f"this run reads {target_field!r} targets, which only a sequential teacher's cache holds: "
                            "`avl stage train-teacher --sequential`, then export it")
        elif target_field is not None and window_rows:
            wrong = {key: store.length(key, target_field) for key, rows in window_rows.items()
                     if key in store and store.length(key, target_field) != rows}
            if wrong:
                key, rows = next(iter(wrong.items()))
                problems.append(f"{len(wrong)} utterances have another number of window rows than this run's crops "
                                f"need, e.g. {key!r} has {rows}, not {window_rows[key]}")
        return problems

    def _attribute_problems(self, recorded: Mapping[str, Any], name: str) -> list[str]:
        expected, got = _json(getattr(self, name)), recorded.get(name)
        if name == "teacher_fingerprint":
            if got is None:
                return ["the store records no teacher_fingerprint"]
            return [] if str(got).startswith(expected) else [f"the store was made by teacher {str(got)[:12]}, "
                                                               f"expected {expected[:12]}"]
        if name == "manifest_sha256":
            if got is None:
                return ["the store records no manifest_sha256, so it cannot be matched to a manifest"]
            return [] if got == expected else [f"the store was made for manifest {got[:12]}, expected {expected[:12]}"]
        if got == expected:
            return []
        if name == "window_seconds":
            return [f"cache windows are window_seconds={got} s, this run's crops are crop_seconds={expected} s; they "
                    f"must match (export again with window_seconds={expected}, or pass --crop-seconds {got})"]
        return [f"cache has {name}={got!r}, this run needs {expected!r}"]

    def check(self, path: str | os.PathLike, store: Reader, **expected: Any) -> None:
        """`problems(store, **expected)`, raised as one StoreError."""
        raise_problems(path, self.problems(store, **expected))


def coverage_problems(store: Reader, manifest: Mapping[str, str]) -> list[str]:
    """Keys of a manifest (key → split) that `store` lacks or should not hold: a teacher cache holds the splits it
    records exporting, any other store every key."""
    problems = []
    splits = store.attrs.get("splits")
    covered = [key for key, split in manifest.items() if splits is None or split in splits]
    if missing := [key for key in covered if key not in store]:
        what = "manifest keys" if splits is None else f"manifest keys of splits {splits}"
        problems.append(f"{len(missing)} of {len(covered)} {what} are missing from the store, e.g. {missing[:3]}")
    if splits is not None:
        extra = [(key, split) for key, split in manifest.items() if split not in splits and key in store]
        if extra:
            found = sorted({split for _, split in extra})
            problems.append(f"the store holds {len(extra)} keys of splits {found} it was not to export (splits "
                            f"{splits}), e.g. {[key for key, _ in extra[:3]]}")
    return problems
