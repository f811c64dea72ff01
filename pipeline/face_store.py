"""Face-crop frames in either encoding: stage 0 encodes them (`FACE_ENCODINGS[name].encode`), and everything that
reads them (stages 1 and 2, the contact sheet, the benchmarks) opens the store with `open_faces`, which reads the
encoding the store records.

raw: each frame's uint8 pixels in field `frames`, (ΣT, S, S, 3), compressed by the backend's codec: exact, but
0.6-0.7 GB per hour of video at 64 px and 8-12 GB at 224 px (`avl bench-faces`; JPEG at quality 90 takes 5-11x
less). jpeg: each frame is a JPEG
(`torchvision.io.encode_jpeg`). The header bytes that every frame of a key repeats (tables, frame and scan headers)
are kept once per key in field `jpeg_header`; the rest of each frame is concatenated per key in field `jpeg`, and
its byte count is a row of field `jpeg_bytes` (cache/schema.py). A read takes the key's byte counts up to the last
frame it wants, then the bytes those frames span, and decodes only those frames in one batched
`torchvision.io.decode_jpeg` call, on the CPU or on a GPU (`decode_device`). A store that records no encoding
(written before there were encodings) is raw.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

from cache.schema import face_encoding, face_fields
from cache.store import PartedReader, RaggedReader, StoreError, open_store

DEFAULT_JPEG_QUALITY = 90


class FaceFrames:
    """A face store's frames as (k, S, S, 3) uint8 arrays, whatever its encoding.

    Safe to pickle into DataLoader workers: it wraps the store's reader, which opens its files lazily in each
    process."""

    encoding: ClassVar[str]
    length_field: ClassVar[str]  # the ragged field with one row per frame

    def __init__(self, path: Path, store: RaggedReader | PartedReader, decode_device: str | torch.device = "cpu"):
        self.path, self.store, self.decode_device = path, store, torch.device(decode_device)
        self.attrs, self.keys = store.attrs, store.keys
        self.face_size = self._face_size()
        missing = [spec.name for spec in face_fields(self.face_size, self.encoding) if spec.name not in store.fields]
        if missing:
            raise StoreError(f"{path}: not a face store of encoding {self.encoding!r}: it has no field(s) {missing} "
                             f"(fields: {list(store.fields)})")

    @staticmethod
    def encode(frames: np.ndarray, quality: int | None) -> dict[str, np.ndarray]:
        """One utterance's (T, S, S, 3) uint8 crops as the values of the store's fields."""
        raise NotImplementedError

    def _face_size(self) -> int:
        return int(self.attrs["face_size"])

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: object) -> bool:
        return key in self.store

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, keys={len(self)}, face_size={self.face_size})"

    def length(self, key: str) -> int:
        """Frames of `key`."""
        return self.store.length(key, self.length_field)

    def read(self, key: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        """Frames [start:stop) of `key` (slice semantics), (k, S, S, 3) uint8."""
        return self._as_array(self.read_tensor(key, start, stop))

    def take(self, key: str, picks: np.ndarray) -> np.ndarray:
        """Frames `picks` of `key` (any order, repeats allowed), (len(picks), S, S, 3) uint8; reads only the span
        they cover."""
        picks = np.asarray(picks, dtype=np.int64)
        n_frames = self.length(key)
        if picks.size and not (0 <= picks.min() and picks.max() < n_frames):
            raise IndexError(f"{self.path}: key {key!r} has {n_frames} frames; asked for frames "
                             f"{picks.min()}..{picks.max()}")
        if not picks.size:
            return np.empty((0, self.face_size, self.face_size, 3), dtype=np.uint8)
        return self._as_array(self._take(key, picks))

    def read_tensor(self, key: str, start: int | None = None, stop: int | None = None) -> torch.Tensor:
        """`read` as a (k, S, S, 3) uint8 tensor on the decode device (a GPU decode stays on the GPU)."""
        first, end, _ = slice(start, stop).indices(self.length(key))
        if end <= first:
            return torch.empty((0, self.face_size, self.face_size, 3), dtype=torch.uint8, device=self.decode_device)
        return self._take(key, np.arange(first, end))

    def _take(self, key: str, picks: np.ndarray) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def _as_array(frames: torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray(frames.cpu().numpy())

    def close(self) -> None:
        """Close this process's file handles; a later read opens new ones."""
        self.store.close()

    def __enter__(self) -> FaceFrames:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class RawFaces(FaceFrames):
    """Pixels as stored: exact."""

    encoding = "raw"
    length_field = "frames"

    @staticmethod
    def encode(frames: np.ndarray, quality: int | None) -> dict[str, np.ndarray]:
        """The crops themselves."""
        return {"frames": frames}

    def _face_size(self) -> int:
        return int(self.store.fields["frames"].row_shape[0]) if "frames" in self.store.fields else super()._face_size()

    def _take(self, key: str, picks: np.ndarray) -> torch.Tensor:
        first = int(picks.min())
        frames = self.store.read(key, "frames", first, int(picks.max()) + 1)  # one read of the span
        if len(frames) != len(picks) or np.any(np.diff(picks) != 1):  # not a slice: pick from the span
            frames = frames[picks - first]
        return torch.from_numpy(frames).to(self.decode_device)


class JpegFaces(FaceFrames):
    """One JPEG per frame; reads decode only the frames asked for, each distinct frame once.

    The JPEGs of one utterance share their first ~620 bytes (same size and quality: same tables, frame and scan
    headers), a third of a 64 px frame: a key stores them once and each frame only the rest; a read puts them back."""

    encoding = "jpeg"
    length_field = "jpeg_bytes"

    @staticmethod
    def encode(frames: np.ndarray, quality: int | None) -> dict[str, np.ndarray]:
        """Each crop as a JPEG of `quality`: the shared header once, each frame's remaining bytes concatenated and
        their count per frame."""
        images = list(torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2))  # T × (3, S, S)
        encoded = [jpeg.numpy() for jpeg in encode_jpeg(images, quality=quality or DEFAULT_JPEG_QUALITY)] if images \
            else []
        header = shared_header(encoded)
        rest = [jpeg[len(header) :] for jpeg in encoded]
        return {"jpeg": np.concatenate(rest) if rest else np.zeros(0, dtype=np.uint8),
                "jpeg_bytes": np.array([len(jpeg) for jpeg in rest], dtype=np.int32), "jpeg_header": header}

    def _take(self, key: str, picks: np.ndarray) -> torch.Tensor:
        wanted, order = np.unique(picks, return_inverse=True)  # sorted distinct frames
        first, last = int(wanted[0]), int(wanted[-1])
        sizes = self.store.read(key, "jpeg_bytes", 0, last + 1).astype(np.int64)  # frames 0..last
        ends = np.cumsum(sizes)
        begin = int(ends[first] - sizes[first])
        data = torch.from_numpy(self.store.read(key, "jpeg", begin, int(ends[last])))  # the bytes of first..last
        pieces = torch.split(data, sizes[first : last + 1].tolist())  # views, one per frame
        header = torch.from_numpy(self.store.read(key, "jpeg_header"))
        jpegs = [torch.cat([header, pieces[frame - first]]) for frame in wanted]
        images = self._decode(key, jpegs, first, last)
        if len(wanted) == len(picks) and np.array_equal(wanted, picks):  # a slice: already in order
            return images
        return images[torch.from_numpy(order.reshape(-1)).to(images.device)]

    def _decode(self, key: str, jpegs: list[torch.Tensor], first: int, last: int) -> torch.Tensor:
        """(k, S, S, 3) uint8 on the decode device; bytes that are no JPEG of this size are a StoreError."""
        where = f"{self.path}: key {key!r}, frames {first}-{last}"
        try:
            images = decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=self.decode_device)
        except RuntimeError as error:
            detail = " ".join(str(error).split()).rsplit(".cpp:", 1)[-1].lstrip("0123456789, ")  # drop the C++ file
            raise StoreError(f"{where}: the stored JPEG data does not decode ({detail}); rebuild the store with "
                             "`avl stage prepare --overwrite`") from None
        expected = (3, self.face_size, self.face_size)
        if wrong := [tuple(image.shape) for image in images if tuple(image.shape) != expected]:
            raise StoreError(f"{where}: a stored JPEG decodes to {wrong[0]} pixels, not the store's {expected}; "
                             "rebuild the store with `avl stage prepare --overwrite`")
        return torch.stack(images).permute(0, 2, 3, 1)  # (k, S, S, 3), channels-last memory


def shared_header(jpegs: list[np.ndarray]) -> np.ndarray:
    """The bytes every JPEG of `jpegs` begins with, through the end of the first's start-of-scan segment (the markers
    before the entropy-coded data); empty when they differ there or the markers cannot be followed."""
    if not jpegs:
        return np.zeros(0, dtype=np.uint8)
    first, position = jpegs[0], 2  # after the start-of-image marker
    while position + 4 <= len(first) and first[position] == 0xFF:
        marker, length = first[position + 1], int(first[position + 2]) << 8 | int(first[position + 3])
        position += 2 + length  # a marker segment: 0xFF, its code, then its length (which counts itself)
        if marker == 0xDA:  # start of scan: the image data follows
            header = first[:position]
            same = all(len(jpeg) > position and np.array_equal(jpeg[:position], header) for jpeg in jpegs)
            return header.copy() if same else np.zeros(0, dtype=np.uint8)
    return np.zeros(0, dtype=np.uint8)


# How stage 0 stores face crops; `avl stage prepare --face-encoding` chooses (cache/schema.py has their fields).
FACE_ENCODINGS: dict[str, type[FaceFrames]] = {"jpeg": JpegFaces, "raw": RawFaces}


def open_faces(path: str | os.PathLike, require_complete: bool = True,
               decode_device: str | torch.device = "cpu") -> FaceFrames:
    """The frames of the face store at `path` (a store or a directory of parts), in the encoding it records."""
    path = Path(path)
    store = open_store(path, require_complete=require_complete)
    encoding = face_encoding(store.attrs)
    if encoding not in FACE_ENCODINGS:
        store.close()
        raise StoreError(f"{path}: face encoding {encoding!r} is unknown to this code (known: {sorted(FACE_ENCODINGS)})")
    return FACE_ENCODINGS[encoding](path, store, decode_device)
