"""Zarr v3 backend of the ragged store: one group directory of sharded, zstd-compressed, checksummed arrays.

Each chunk inside a shard carries zarr's crc32c codec (the shard index has its own), so a flipped byte
in a chunk fails its read instead of decompressing to wrong values; a chunk that fails to decode is a
`DamagedChunkError` naming the array and the rows read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle, Crc32cCodec, ZstdCodec

from cache.base import DamagedChunkError, StoreError
from cache.rawread import CHECKSUM_BYTES, RAW_READS_POSSIBLE, crc32c_matches

CHUNKS_PER_SHARD = 16  # a shard is one file: the file count is the chunk count / 16
# zarr's LocalStore writes every file as <name>.<uuid>.partial and then renames it, so a killed writer
# leaves these behind; they are never part of the store
PARTIAL_SUFFIX = ".partial"


def partial_files(path: Path) -> list[Path]:
    """Temporary files of interrupted writes under a zarr store."""
    return sorted(p for p in Path(path).rglob(f"*{PARTIAL_SUFFIX}") if p.is_file())


def remove_partial_files(path: Path) -> None:
    """Delete what killed writers left; only a writer (the store has one at a time) may call this."""
    for leftover in partial_files(path):
        leftover.unlink(missing_ok=True)


def _damage(error: Exception) -> str:
    """What went wrong with a chunk, without the checksum bytes zarr quotes."""
    if "checksum" in str(error):
        return "a chunk or shard index failed its crc32c checksum"
    return f"a chunk could not be decoded: {error}"


class ZarrBackend:
    """Named resizable arrays and a JSON metadata dict in a zarr group; mode is "w", "r+" or "r"."""

    name = "zarr"
    checksum = "crc32c"
    on_disk = True

    def __init__(self, path: Path, mode: str) -> None:
        self.path = Path(path)
        if mode == "r+":
            remove_partial_files(path)
        try:
            self.group = zarr.open_group(str(path), mode=mode)
        except ValueError as error:  # a damaged zarr.json is not JSON
            raise StoreError(f"{path}: its metadata (zarr.json) cannot be read: {' '.join(str(error).split())}") from None
        self._arrays: dict[str, zarr.Array] = {}

    @staticmethod
    def detect(path: Path) -> bool:
        """True if `path` is a zarr v3 directory."""
        return path.is_dir() and (path / "zarr.json").is_file()

    def create_array(
        self, name: str, dtype: str, row_shape: tuple[int, ...], chunk_rows: int, checksum: bool = True,
        layout: str = "compressed",
    ) -> None:
        """Create an empty (0, *row_shape) array chunked along rows; dtype "str" holds unicode text.

        A raw array's chunks are their rows then a crc32c, so `raw_chunks` can find any row in its shard file."""
        text = dtype == "str"
        # byte shuffle groups the bytes of each number, which is what makes float rows compress
        compressor = ZstdCodec(level=3) if text else BloscCodec(cname="zstd", clevel=3, shuffle=BloscShuffle.shuffle)
        if layout == "raw" and not text:
            compressor = None
        self.group.create_array(
            name,
            shape=(0, *row_shape),
            dtype=str if text else dtype,
            chunks=(chunk_rows, *row_shape),
            shards=(chunk_rows * CHUNKS_PER_SHARD, *row_shape),
            # these codecs run on each chunk inside its shard: the checksum covers the compressed bytes
            compressors=[c for c in (compressor, Crc32cCodec() if checksum else None) if c is not None] or None,
        )

    def chunk_rows(self, name: str) -> int:
        """Rows per chunk (the unit a checksum covers), not per shard."""
        return self._array(name).chunks[0]

    def rewritten_rows(self, name: str) -> int:
        """Rows a write may store again beside the new ones: the shard it ends in is rewritten whole."""
        return self._array(name).shards[0]

    def _array(self, name: str) -> zarr.Array:
        if name not in self._arrays:
            self._arrays[name] = self.group[name]
        return self._arrays[name]

    def length(self, name: str) -> int:
        """Rows in the array, committed or not."""
        return self._array(name).shape[0]

    def write_rows(self, name: str, start: int, rows: np.ndarray) -> None:
        """Resize the array to start + len(rows) and write rows there."""
        array = self._array(name)
        array.resize((start + len(rows), *array.shape[1:]))
        if len(rows):
            try:
                array[start : start + len(rows)] = rows
            except (ValueError, RuntimeError) as error:  # a partly filled chunk is decoded to be extended
                raise DamagedChunkError(self.path, name, start, start + len(rows), _damage(error)) from None

    def truncate(self, name: str, length: int) -> None:
        """Drop rows past `length` (shards wholly past it are deleted)."""
        array = self._array(name)
        if array.shape[0] > length:
            array.resize((length, *array.shape[1:]))

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of the array; a chunk that fails its checksum or its decoding is a DamagedChunkError."""
        array = self._array(name)
        try:
            return array[start:stop]
        except (ValueError, RuntimeError) as error:  # crc32c mismatch: ValueError; blosc or zstd: RuntimeError
            raise DamagedChunkError(self.path, name, start, stop, _damage(error)) from None

    def raw_chunks(self, name: str) -> ShardChunks | None:
        """Where the chunks of an uncompressed array lie in its shard files; None for any other array."""
        array = self._array(name)
        spec = json.loads(json.dumps(array.metadata.to_dict(), default=str))  # tuples → lists, as in zarr.json
        codecs = spec["codecs"]
        inner = codecs[0].get("configuration", {}) if len(codecs) == 1 else {}
        checksum = inner.get("codecs", [None])[1:] == [{"name": "crc32c"}]
        little = {"name": "bytes", "configuration": {"endian": "little"}}
        as_stored = little if array.dtype.itemsize > 1 else {"name": "bytes"}  # single bytes have no endianness
        if not RAW_READS_POSSIBLE or codecs[0]["name"] != "sharding_indexed" \
                or inner.get("codecs") not in ([as_stored], [as_stored, {"name": "crc32c"}]) \
                or inner.get("index_codecs") != [little, {"name": "crc32c"}] or inner.get("index_location") != "end" \
                or spec["chunk_key_encoding"] != {"name": "default", "configuration": {"separator": "/"}}:
            return None
        directory = Path(self.group.store.root).resolve() / self.group.path / name
        return ShardChunks(self.path, name, directory, array, checksum)

    def stored_bytes(self, name: str) -> int:
        """Bytes of the array's files (metadata and shards)."""
        directory = Path(self.group.store.root) / self.group.path / name  # arrays hold no nested arrays
        return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())

    def read_meta(self) -> dict[str, Any]:
        """The group attributes."""
        return self.group.attrs.asdict()

    def write_meta(self, meta: dict[str, Any]) -> None:
        """Replace the group attributes; LocalStore writes zarr.json atomically (temp file + rename)."""
        self.group.attrs.put(meta)

    def close(self) -> None:
        """Drop the array handles (zarr keeps no open files between calls)."""
        self._arrays.clear()


EMPTY = 2**64 - 1  # a shard index entry of a chunk that was never stored (all fill value)


class ShardChunks:
    """Byte offsets of a raw array's chunks, read from each shard's index once (`cache.rawread.RawChunks`).

    The zarr v3 sharding codec ends a shard file with its index: (offset, nbytes) as little-endian uint64 per
    inner chunk, then the index's crc32c. A missing shard file, like an EMPTY entry, is a chunk of fill values.
    """

    def __init__(self, store: Path, name: str, directory: Path, array: zarr.Array, checksum: bool) -> None:
        self.store, self.name, self.directory = store, name, directory
        self.chunk_rows = array.chunks[0]
        self.checksum = "crc32c" if checksum else None
        self._per_shard = array.shards[0] // self.chunk_rows
        self._suffix = ("0",) * (array.ndim - 1)  # the shard's position along the other (whole) axes
        self._bytes = array.dtype.itemsize * int(np.prod(array.chunks)) + CHECKSUM_BYTES * checksum
        self._index: dict[int, np.ndarray | None] = {}
        self._where: dict[int, tuple[str, int] | None] = {}

    def locate(self, chunk: int) -> tuple[str, int] | None:
        if chunk in self._where:
            return self._where[chunk]
        shard, inner = divmod(chunk, self._per_shard)
        if shard not in self._index:
            self._index[shard] = self._read_index(shard)
        index = self._index[shard]
        where = None
        if index is not None and index[inner, 0] != EMPTY:
            offset, nbytes = (int(n) for n in index[inner])
            if nbytes != self._bytes:
                rows = (chunk * self.chunk_rows, (chunk + 1) * self.chunk_rows)
                raise DamagedChunkError(self.store, self.name, *rows, f"its shard index says {nbytes} bytes, "
                                        f"expected {self._bytes}")
            where = (str(self._path(shard)), offset)
        self._where[chunk] = where
        return where

    def _path(self, shard: int) -> Path:
        return self.directory.joinpath("c", str(shard), *self._suffix)

    def _read_index(self, shard: int) -> np.ndarray | None:
        path = self._path(shard)
        size = self._per_shard * 16 + CHECKSUM_BYTES
        rows = (shard * self._per_shard * self.chunk_rows, (shard + 1) * self._per_shard * self.chunk_rows)
        try:
            with open(path, "rb") as handle:
                handle.seek(-size, 2)
                raw = handle.read(size)
        except FileNotFoundError:
            return None
        except OSError as error:  # shorter than an index
            raise DamagedChunkError(self.store, self.name, *rows, f"{path.name}: {error.strerror}") from None
        data = np.frombuffer(raw, dtype=np.uint8)
        if not crc32c_matches(data[:-CHECKSUM_BYTES], raw[-CHECKSUM_BYTES:]):
            raise DamagedChunkError(self.store, self.name, *rows, "a chunk or shard index failed its crc32c checksum")
        return data[:-CHECKSUM_BYTES].view("<u8").reshape(self._per_shard, 2)
