"""Reading uncompressed ("raw" layout) fields straight from their files: one `os.preadv` per chunk a read spans.

A raw field is stored by the backend library like any other (zarr shards of [bytes, crc32c] chunks; HDF5
chunks with Fletcher-32 only), so writing, truncating and `avl cache verify` need nothing new. What is new
is the read: the library's per-call cost (zarr: ~2 ms for any slice) dwarfs copying a 5 s crop (257 KB), so
a reader asks the backend where each chunk's bytes lie (`RawChunks.locate`) and copies the rows it wants
out of a read-only memory map of the file. Each chunk's checksum is verified here, in full, the
first time a process touches it (crc32c with google_crc32c, the library zarr itself uses; HDF5's Fletcher-32
recomputed in numpy, see `fletcher32_matches`); a chunk that fails is a `DamagedChunkError`, as a library read
would raise. Memory maps rather than `pread`: a pread of a 257 KB crop looks up its 63 pages in the page
cache on every call and ran at a third of a memory copy; mapped pages stay mapped (measured in
`cache/bench_crops.py`). A file shorter than its index says is an error naming it; one truncated by
another process while mapped would end the reading process with SIGBUS: stores are never truncated after
they are complete, and stage 3 reads only complete stores.
"""

from __future__ import annotations

import mmap
import os
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Protocol

import google_crc32c
import numpy as np

from cache.base import DamagedChunkError

CHECKSUM_BYTES = 4  # crc32c (zarr) and Fletcher-32 (HDF5) both follow the chunk's data
OPEN_FILES = 64  # zarr shards are files: keep the most recently read ones open, close the rest
# raw reads copy bytes as stored (little-endian), so a big-endian host reads through the library instead
RAW_READS_POSSIBLE = sys.byteorder == "little"


class RawChunks(Protocol):
    """Where the chunks of one uncompressed array lie in its files (a backend builds one per array)."""

    chunk_rows: int
    checksum: str | None  # "crc32c", "fletcher32" or None

    def locate(self, chunk: int) -> tuple[str, int] | None:
        """(file, byte offset of the chunk's first row), or None for a chunk that was never stored (fill value)."""
        ...


def crc32c_matches(data: np.ndarray, stored: bytes) -> bool:
    """zarr's crc32c codec: the checksum of the bytes, as a little-endian uint32 after them."""
    return google_crc32c.value(data).to_bytes(4, "little") == stored


def fletcher32_matches(data: np.ndarray, stored: bytes) -> bool:
    """HDF5's Fletcher-32 filter (H5_checksum_fletcher32), recomputed in closed form.

    HDF5 sums big-endian 16-bit words: sum1 = Σ w_i, sum2 = Σ of the running sum1, each folded mod 65535
    as it goes and stored little-endian as (sum2 << 16) | sum1. Folding keeps residues mod 65535, so the
    exact sums' residues must equal the stored halves' (65535 and 0 are the same residue). h5py exposes no
    checksum function, hence by hand; tests/test_raw_reads.py checks it against chunks HDF5 wrote.
    """
    n_words = len(data) // 2
    words = data[: 2 * n_words].view(">u2")
    blocks = -(-n_words // FLETCHER_BLOCK)
    padded = np.zeros(blocks * FLETCHER_BLOCK, dtype=np.float64)
    padded[:n_words] = words
    # per block: Σ w and Σ j·w (j the position in the block), exact in float64 (< 2^53) and one BLAS call
    per_block = padded.reshape(blocks, FLETCHER_BLOCK) @ _BLOCK_WEIGHTS  # (blocks, 2)
    block_sums, block_moments = per_block[:, 0].astype(np.int64), per_block[:, 1].astype(np.int64)
    sum1 = int(block_sums.sum())
    position_sum = int((np.arange(blocks, dtype=np.int64) * FLETCHER_BLOCK * block_sums).sum() + block_moments.sum())
    sum2 = n_words * sum1 - position_sum  # word i is counted n - i times
    if len(data) % 2:  # an odd last byte is the high half of one more word
        sum1 += int(data[-1]) << 8
        sum2 += sum1
    value = int.from_bytes(stored, "little")
    return (value & 0xFFFF) % 65535 == sum1 % 65535 and (value >> 16) % 65535 == sum2 % 65535


FLETCHER_BLOCK = 1024
_BLOCK_WEIGHTS = np.stack([np.ones(FLETCHER_BLOCK), np.arange(FLETCHER_BLOCK, dtype=np.float64)], axis=1)  # (B, 2)
CHECKSUMS = {"crc32c": crc32c_matches, "fletcher32": fletcher32_matches}


class OpenMaps:
    """Read-only memory maps of files by path, as uint8 arrays; the least recently used dropped beyond OPEN_FILES."""

    def __init__(self) -> None:
        self._maps: OrderedDict[str, np.ndarray] = OrderedDict()

    def bytes_of(self, path: str) -> np.ndarray:
        view = self._maps.get(path)
        if view is not None:
            self._maps.move_to_end(path)
            return view
        with open(path, "rb") as handle:  # the map keeps its own descriptor
            size = os.fstat(handle.fileno()).st_size
            view = np.frombuffer(mmap.mmap(handle.fileno(), size, access=mmap.ACCESS_READ), dtype=np.uint8) \
                if size else np.empty(0, dtype=np.uint8)
        self._maps[path] = view
        if len(self._maps) > OPEN_FILES:
            self._maps.popitem(last=False)  # unmapped once no array uses it
        return view

    def close(self) -> None:
        self._maps.clear()


class RawField:
    """Rows of one raw array read with preadv, every chunk checksummed on this process's first touch of it."""

    def __init__(self, store: Path, name: str, chunks: RawChunks, dtype: np.dtype, row_shape: tuple[int, ...],
                 fill_value: float, files: OpenMaps) -> None:
        self.store, self.name, self.chunks, self.files = store, name, chunks, files
        self.dtype, self.row_shape, self.fill_value = np.dtype(dtype), row_shape, fill_value
        self.row_bytes = self.dtype.itemsize * int(np.prod(row_shape, dtype=np.int64))
        self._check = CHECKSUMS[chunks.checksum] if chunks.checksum else None
        self._verified: set[int] = set()

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) (stop > start, within the committed rows)."""
        out = np.empty((stop - start, *self.row_shape), dtype=self.dtype)
        flat = out.reshape(-1).view(np.uint8)  # (rows · row_bytes,) the preads fill in place
        per_chunk = self.chunks.chunk_rows
        for chunk in range(start // per_chunk, (stop - 1) // per_chunk + 1):
            first, last = max(start, chunk * per_chunk), min(stop, (chunk + 1) * per_chunk)
            where = self.chunks.locate(chunk)
            if where is None:  # never stored: every value is the fill value
                out[first - start : last - start] = self.fill_value
                continue
            path, offset = where
            if chunk not in self._verified:
                self._verify(chunk, path, offset)
            begin = offset + (first - chunk * per_chunk) * self.row_bytes
            flat[(first - start) * self.row_bytes : (last - start) * self.row_bytes] = \
                self._bytes(path, begin, (last - first) * self.row_bytes, first, last)
        return out

    def _verify(self, chunk: int, path: str, offset: int) -> None:
        per_chunk = self.chunks.chunk_rows
        rows = (chunk * per_chunk, (chunk + 1) * per_chunk)
        data = self._bytes(path, offset, per_chunk * self.row_bytes + CHECKSUM_BYTES * bool(self._check), *rows)
        if self._check is not None and not self._check(data[:-CHECKSUM_BYTES], bytes(data[-CHECKSUM_BYTES:])):
            raise DamagedChunkError(self.store, self.name, *rows, f"a chunk in {os.path.basename(path)} failed its "
                                    f"{self.chunks.checksum} checksum")
        self._verified.add(chunk)

    def _bytes(self, path: str, offset: int, size: int, first: int, last: int) -> np.ndarray:
        """`size` mapped bytes of `path` from `offset`; a file that ends before them is a DamagedChunkError."""
        try:
            data = self.files.bytes_of(path)[offset : offset + size]
        except OSError as error:
            raise DamagedChunkError(self.store, self.name, first, last,
                                    f"{os.path.basename(path)}: {error.strerror}") from None
        if len(data) != size:
            raise DamagedChunkError(self.store, self.name, first, last, f"{os.path.basename(path)} ends "
                                    f"{size - len(data)} bytes before the chunk its index points to (a truncated file)")
        return data
