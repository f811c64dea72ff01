"""What every part of the ragged-array store shares: the backend interface, field specs and the store's own metadata.

A ragged field holds the rows of every key concatenated along axis 0, (ΣT, *row_shape), plus an
`offsets/<field>` int64 array (N+1); a per-item field holds one row per key, (N, *row_shape). Keys
are the `keys` text array (N,). Metadata (user attrs plus `avl_store`: format version, backend,
field specs, committed count, complete flag) is one JSON dict that each backend writes in one go.

Format 3 lets a field be stored uncompressed (`FieldSpec.layout = "raw"`), read straight from its files
(`cache/rawread.py`). Format 2 checksums every stored chunk (`checksums`: the backend's codec, crc32c or Fletcher-32) and the
committed keys as one sha256 (`keys_sha256`: HDF5 cannot checksum the text of its keys). A chunk that
fails its checksum is a `DamagedChunkError`; a store without checksums (format 1) is read with a warning.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cache.errors import UserError

FORMAT_VERSION = 3  # 2: chunks and keys carry checksums; 3: fields may be raw (uncompressed, read by pread)
META_KEY = "avl_store"
KEYS = "keys"
# store-level facts beside the commit state, kept across reopenings: how many keys the writing
# command means to commit, the command that finishes the store, which part of a sharded store it is,
# and the format and checksums it was created with (a store of format 1 stays one when extended)
INFO_EXTRAS = ("expected_keys", "finish_with", "part", "checksums", "format_version")
INDEX_CHUNK_ROWS = 16384  # keys and offsets are read whole when a store is opened
# compressed: the backend's codec (zarr blosc-zstd, HDF5 gzip); raw: uncompressed, for fields read in small random
# slices (spectrogram crops, embeddings) whose library read costs far more per call than the copy
LAYOUTS = ("compressed", "raw")
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class StoreError(UserError, RuntimeError):
    """A store is missing, malformed, incomplete or in the way; the message starts with its path."""


class DamagedChunkError(StoreError):
    """Stored bytes failed their checksum or could not be decoded; raised by a backend for rows of one array."""

    def __init__(self, path: Path, array: str, start: int, stop: int, detail: str) -> None:
        self.path, self.array, self.start, self.stop = path, array, start, stop
        self.detail = " ".join(detail.split())  # library messages may span lines; the user gets one
        super().__init__(f"{path}: array {array!r}, rows {start}-{stop - 1}: damaged data ({self.detail}); "
                         "rebuild the store with the command that wrote it (--overwrite)")


class UncheckedStoreWarning(UserWarning):
    """A store written before chunks carried checksums: damage in it can go unnoticed."""


_warned_unchecked: set[str] = set()


def warn_unchecked(path: Path) -> None:
    """Warn, once per store and process, that the store at `path` carries no checksums."""
    if str(path) not in _warned_unchecked:
        _warned_unchecked.add(str(path))
        warnings.warn(UncheckedStoreWarning(
            f"{path}: this store carries no checksums (written before format {FORMAT_VERSION}), so damaged bytes "
            "in it may go unnoticed; rebuild it with --overwrite to have them checked"), stacklevel=3)


def describe_keys(keys: list[str]) -> str:
    """The keys some rows belong to, in a few words: one or a few by name, many by count and ends."""
    if len(keys) == 1:
        return f"key {keys[0]!r}"
    if len(keys) <= 3:
        return "keys " + ", ".join(map(repr, keys))
    return f"{len(keys)} keys, {keys[0]!r} to {keys[-1]!r}"


def keys_digest(keys: Iterable[str], digest: hashlib._Hash | None = None) -> hashlib._Hash:
    """sha256 over the keys in order (each UTF-8, then a NUL), continuing `digest` if given."""
    digest = digest or hashlib.sha256()
    keys = list(keys)
    if keys:
        digest.update(("\0".join(keys) + "\0").encode())
    return digest


class Backend(Protocol):
    """What a backend adapts: named arrays of rows, resizable along axis 0, and one metadata dict."""

    name: str
    checksum: str | None  # what each chunk carries when created with checksum=True; None: nothing to check
    on_disk: bool  # writes take disk space, so a commit checks there is room first

    def __init__(self, path: Path, mode: str) -> None: ...
    @staticmethod
    def detect(path: Path) -> bool: ...
    def create_array(
        self, name: str, dtype: str, row_shape: tuple[int, ...], chunk_rows: int, checksum: bool = True,
        layout: str = "compressed",
    ) -> None: ...
    def chunk_rows(self, name: str) -> int: ...
    def rewritten_rows(self, name: str) -> int: ...
    def length(self, name: str) -> int: ...
    def write_rows(self, name: str, start: int, rows: np.ndarray) -> None: ...
    def truncate(self, name: str, length: int) -> None: ...
    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray: ...
    def raw_chunks(self, name: str) -> Any: ...  # a cache.rawread.RawChunks for a raw array, or None: use read_rows
    def stored_bytes(self, name: str) -> int: ...
    def read_meta(self) -> dict[str, Any]: ...
    def write_meta(self, meta: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class FieldSpec:
    """One named array of a store: ragged (any number of rows per key) or per-item (one row per key)."""

    name: str
    dtype: str
    row_shape: tuple[int, ...] = ()
    ragged: bool = True
    chunk_rows: int = 4096
    layout: str = "compressed"

    def __post_init__(self) -> None:
        if not _FIELD_NAME.fullmatch(self.name) or self.name in (KEYS, "offsets"):
            raise ValueError(f"field name {self.name!r}: must be an identifier other than 'keys' and 'offsets'")
        if np.dtype(self.dtype).kind not in "biufc":
            raise ValueError(f"field {self.name!r}: dtype {self.dtype!r} is not numeric")
        if any(int(n) < 0 for n in self.row_shape) or self.chunk_rows < 1:
            raise ValueError(f"field {self.name!r}: bad row_shape {self.row_shape} or chunk_rows {self.chunk_rows}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"field {self.name!r}: layout {self.layout!r} is not one of {LAYOUTS}")
        # canonical forms, so a spec equals itself after a JSON round trip
        object.__setattr__(self, "dtype", np.dtype(self.dtype).name)
        object.__setattr__(self, "row_shape", tuple(int(n) for n in self.row_shape))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; the default layout is left out, so compressed fields read as format 2 wrote them."""
        spec = {**asdict(self), "row_shape": list(self.row_shape)}
        if self.layout == "compressed":
            del spec["layout"]
        return spec

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> FieldSpec:
        """Inverse of to_dict."""
        return cls(**spec)


def offsets_name(field: str) -> str:
    """The array holding the offsets of ragged `field`."""
    return f"offsets/{field}"


def store_meta(
    backend: str, fields: dict[str, FieldSpec], attrs: dict, committed: int, complete: bool, extras: dict,
    keys_sha256: str | None = None,
) -> dict:
    """The whole metadata dict of a store: user attrs plus the store's own info under META_KEY.

    `extras` carries what stays as the store was created: its format version and checksums, for example.
    """
    info = {
        "format_version": FORMAT_VERSION,
        "backend": backend,
        "fields": [spec.to_dict() for spec in fields.values()],
        "committed": committed,
        "complete": complete,
        "keys_sha256": keys_sha256,
        **extras,
    }
    return {**attrs, META_KEY: info}


def not_complete_message(path: Path, committed: int, expected: int | None, finish_with: str | None) -> str:
    """Why a store is refused: how far its writer came and how to finish it."""
    progress = f"{committed} of {expected} keys" if expected is not None else f"{committed} keys"
    how = f"finish it with `{finish_with}`" if finish_with else "re-run the command that wrote it to finish it"
    return f"{path}: store is not complete ({progress} committed); {how} (it resumes where it stopped)"


def check_attrs(path: Path, attrs: dict[str, Any]) -> None:
    """Refuse user attributes that the store cannot hold: the reserved name, or values JSON cannot write."""
    if META_KEY in attrs:
        raise ValueError(f"{path}: attribute name {META_KEY!r} is reserved for the store's own metadata")
    for name, value in attrs.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: attribute {name!r} is not JSON-serialisable: {error}") from None


def parse_meta(path: Path, backend: Backend) -> tuple[dict, dict[str, FieldSpec], dict[str, Any]]:
    """(avl_store info, fields, user attrs) of an opened store."""
    meta = dict(backend.read_meta())
    if META_KEY not in meta:
        raise StoreError(f"{path}: not an avl store (no {META_KEY!r} metadata)")
    info = meta.pop(META_KEY)
    if info["format_version"] > FORMAT_VERSION:
        raise StoreError(f"{path}: store format {info['format_version']} is newer than this code ({FORMAT_VERSION})")
    fields = {spec["name"]: FieldSpec.from_dict(spec) for spec in info["fields"]}
    if backend.checksum is not None and info.get("checksums") is None:
        warn_unchecked(path)
    return info, fields, meta


def check_keys(path: Path, keys: list[str], info: dict) -> hashlib._Hash:
    """The digest of the committed keys, refused unless it is the one the store recorded (if it recorded one)."""
    digest = keys_digest(keys)
    if info.get("keys_sha256") is not None and digest.hexdigest() != info["keys_sha256"]:
        raise DamagedChunkError(path, KEYS, 0, len(keys), f"the {len(keys)} committed keys do not match their "
                                "recorded sha256: the names of some keys are damaged")
    return digest


def committed_rows(path: Path, backend: Backend, fields: dict[str, FieldSpec], committed: int) -> dict[str, int]:
    """Rows of every array in the committed state; an array shorter than that means a damaged store."""
    def check(name: str, n: int) -> int:
        if backend.length(name) < n:
            raise StoreError(f"{path}: array {name!r} has {backend.length(name)} rows, fewer than the {n} committed")
        return n

    rows = {KEYS: check(KEYS, committed)}
    for name, spec in fields.items():
        if spec.ragged:
            rows[offsets_name(name)] = check(offsets_name(name), committed + 1)
            end = int(backend.read_rows(offsets_name(name), committed, committed + 1)[0])
            rows[name] = check(name, end)
        else:
            rows[name] = check(name, committed)
    return rows
