"""Damaged bytes never go unnoticed: random byte flips inside the data chunks of finished stores (every backend on
disk × every store kind a stage writes) are each found by `avl cache verify` and by a read, which names the store,
the field and the keys; stores of format 1 (no checksums) are read with one warning."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cache.backends import BACKENDS, DISK_BACKENDS, SUFFIXES
from cache.base import META_KEY, UncheckedStoreWarning
from cache.schema import FaceStoreSpec, SpectrogramStoreSpec, TeacherCacheSpec
from cache.store import StoreError, create_store, open_for_append, open_store
from cache.zarr_store import CHUNKS_PER_SHARD
from pipeline.cli import app
from pipeline.stores import verify

FLIPS_PER_STORE = 10  # trials per backend and store kind, each on a fresh copy of the finished store
SOURCE = {"dataset": "synthetic", "dataset_root": "/corpus", "video_fps": 25}
SCHEMAS = {
    "teacher cache": TeacherCacheSpec(teacher_fingerprint="f" * 64, embed_dim=512, num_classes=4, dtype="float16",
                                      video_fps=25, segment_frames=25),
    "spectrograms": SpectrogramStoreSpec(**SOURCE, spectrogram={"n_fft": 512}),
    "faces": FaceStoreSpec(**SOURCE, face_size=16, crop="centre 0.6"),
}
LENGTHS = [150, 40, 0, 125, 90, 160, 75, 101]  # video frames per key: several chunks per field, an empty key
ROWS_PER_FRAME = {"spectrogram": 4, "segments": 1 / 25}  # other ragged fields have one row per video frame


def rows_of(field: str, n_frames: int) -> int:
    return int(np.ceil(n_frames * ROWS_PER_FRAME.get(field, 1)))


def write_finished_store(path: Path, kind: str, backend: str, seed: int = 0) -> None:
    """A complete store of `kind`, random rows of the real fields and chunk sizes."""
    rng = np.random.default_rng(seed)
    schema = SCHEMAS[kind]
    with schema.create(path, backend) as writer:
        for i, n_frames in enumerate(LENGTHS):
            item = {}
            for spec in schema.fields():
                shape = ((rows_of(spec.name, n_frames),) if spec.ragged else ()) + spec.row_shape
                item[spec.name] = (rng.integers(0, 256, shape) if spec.dtype == "uint8"
                                   else rng.standard_normal(shape))
            writer.write(f"spk{i % 3}/utt{i:02d}", item)
        writer.mark_complete()


def data_chunks(path: Path, backend: str) -> list[tuple[str, int, Path, int, int]]:
    """(field, chunk index, file, byte offset, byte count) of the stored payload of every chunk of every field."""
    fields = open_store(path).fields
    chunks = []
    if backend == "hdf5":
        with h5py.File(path, "r") as file:
            for name, spec in fields.items():
                dataset = file[name]
                for i in range(dataset.id.get_num_chunks()):
                    info = dataset.id.get_chunk_info(i)
                    chunks.append((name, info.chunk_offset[0] // spec.chunk_rows, path, info.byte_offset, info.size))
        return chunks
    index_bytes = CHUNKS_PER_SHARD * 16 + 4  # (offset, nbytes) uint64 pairs, then the index's crc32c
    for name in fields:
        for shard in sorted((path / name / "c").rglob("*")):
            if not shard.is_file():
                continue
            shard_number = int(shard.relative_to(path / name / "c").parts[0])
            data = shard.read_bytes()
            index = np.frombuffer(data[-index_bytes:-4], dtype="<u8").reshape(-1, 2)
            for j, (offset, size) in enumerate(index.tolist()):
                if offset != 2**64 - 1:  # an empty chunk is not stored
                    chunks.append((name, shard_number * CHUNKS_PER_SHARD + j, shard, offset, size))
    return chunks


def flip_bytes(file: Path, offset: int, size: int, rng: np.random.Generator) -> int:
    """XOR 1-3 random bytes inside [offset, offset + size) of `file` with random non-zero values; how many."""
    data = bytearray(file.read_bytes())
    positions = rng.choice(size, size=min(size, int(rng.integers(1, 4))), replace=False)
    for position in positions:
        data[offset + int(position)] ^= int(rng.integers(1, 256))
    file.write_bytes(bytes(data))
    return len(positions)


def keys_in_chunk(path: Path, field: str, chunk: int) -> list[str]:
    """The keys with rows inside chunk `chunk` of `field`."""
    reader = open_store(path)
    spec = reader.fields[field]
    first, stop = chunk * spec.chunk_rows, (chunk + 1) * spec.chunk_rows
    if not spec.ragged:
        return reader.keys[first:stop]
    offsets = reader.offsets(field)
    return [key for i, key in enumerate(reader.keys) if offsets[i] < stop and offsets[i + 1] > first]


def cli_verify(path: Path):
    return CliRunner().invoke(app, ["cache", "verify", str(path)])


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
@pytest.mark.parametrize("backend", DISK_BACKENDS)
def test_random_byte_flips_in_data_chunks_are_all_detected(tmp_path, backend, kind):
    finished = tmp_path / f"finished{SUFFIXES[backend]}"
    write_finished_store(finished, kind, backend)
    assert verify(finished) == []
    chunks = data_chunks(finished, backend)
    assert len({(field, index) for field, index, *_ in chunks}) >= 5, chunks  # several chunks to choose from
    rng = np.random.default_rng(sum(map(ord, backend + kind)))
    detected = {"verify": 0, "read": 0}
    for trial in range(FLIPS_PER_STORE):
        damaged = tmp_path / f"trial{trial}{SUFFIXES[backend]}"
        (shutil.copytree if backend == "zarr" else shutil.copy)(finished, damaged)
        field, chunk, file, offset, size = chunks[int(rng.integers(len(chunks)))]
        flip_bytes(damaged / file.relative_to(finished) if backend == "zarr" else damaged, offset, size, rng)

        result = cli_verify(damaged)
        finding = f"field {field!r}, chunk {chunk} "
        if result.exit_code == 1 and finding in result.output and "damaged" in result.output:
            detected["verify"] += 1
        assert isinstance(result.exception, SystemExit), result.output  # a finding, never a traceback

        keys = keys_in_chunk(damaged, field, chunk)
        reader = open_store(damaged)
        with pytest.raises(StoreError) as error:
            for key in keys:
                reader.read(key, field)
        message = str(error.value)
        if (message.startswith(f"{damaged}: field {field!r}, rows ") and "damaged data" in message
                and any(repr(key) in message for key in keys) and "\n" not in message):
            detected["read"] += 1
        shutil.rmtree(damaged) if damaged.is_dir() else damaged.unlink()
    print(f"\n{backend} {kind}: {FLIPS_PER_STORE} flipped chunks, found by verify {detected['verify']}, "
          f"by a read {detected['read']}")
    assert detected == {"verify": FLIPS_PER_STORE, "read": FLIPS_PER_STORE}


@pytest.mark.parametrize("backend", DISK_BACKENDS)
def test_damaged_keys_and_offsets_are_named_when_the_store_opens(tmp_path, backend):
    path = tmp_path / f"store{SUFFIXES[backend]}"
    write_finished_store(path, "faces", backend)
    if backend == "zarr":
        shard = path / "offsets" / "frames" / "c" / "0"
        flip_bytes(shard, 0, 8, np.random.default_rng(0))  # the compressed offsets at the start of the shard
        with pytest.raises(StoreError, match=r"array 'offsets/frames', rows .*damaged data"):
            open_store(path)
        assert any("offsets of field 'frames', chunk 0" in problem for problem in verify(path))
    else:  # HDF5 keeps key text outside any chunk, in its global heap: the keys' sha256 covers it
        data = bytearray(path.read_bytes())
        at = data.index(b"spk1/utt04")
        data[at + 9] ^= 0x01  # "spk1/utt04" becomes "spk1/utt05": a plausible name, and the wrong one
        path.write_bytes(bytes(data))
        with pytest.raises(StoreError, match="do not match their recorded sha256"):
            open_store(path)
        with pytest.raises(StoreError, match="do not match their recorded sha256"):
            open_for_append(path)
        assert verify(path) == ["store.h5: array 'keys': the 8 committed keys do not match their recorded sha256: "
                                "the names of some keys are damaged"]


def test_a_damaged_chunk_read_in_a_dataloader_worker_is_one_line(tmp_path):
    """Stages read in DataLoader workers; the error reaches the user as the reader's message, not a traceback."""
    from pipeline.data import RandomFrames

    path = tmp_path / "faces.zarr"
    write_finished_store(path, "faces", "zarr")
    field, chunk, file, offset, size = data_chunks(path, "zarr")[0]
    flip_bytes(file, offset, size, np.random.default_rng(1))
    keys = keys_in_chunk(path, field, chunk)
    # RandomFrames reads only the span of the frames it draws: 64 draws of ≤ 150 frames span the damaged chunk
    loader = torch.utils.data.DataLoader(RandomFrames(path, keys, [0] * len(keys), 64), batch_size=None,
                                         num_workers=1)
    with pytest.raises(StoreError) as error:
        list(loader)
    assert str(error.value).startswith(f"{path}: field 'frames', rows ") and "\n" not in str(error.value)


@pytest.mark.parametrize("backend", DISK_BACKENDS)
def test_stores_record_their_checksums(tmp_path, backend):
    path = tmp_path / f"store{SUFFIXES[backend]}"
    write_finished_store(path, "spectrograms", backend)
    handle = BACKENDS[backend](path, "r")
    info = handle.read_meta()[META_KEY]
    assert info["format_version"] == 3 and info["checksums"] == handle.checksum
    assert re.fullmatch(r"[0-9a-f]{64}", info["keys_sha256"])
    handle.close()


@pytest.mark.parametrize("backend", DISK_BACKENDS)
def test_a_store_of_format_1_is_read_with_one_warning(tmp_path, backend):
    made, path = tmp_path / f"made{SUFFIXES[backend]}", tmp_path / f"old{SUFFIXES[backend]}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UncheckedStoreWarning)  # the writer warns of `made`, not of `path`
        with create_store(made, SCHEMAS["faces"].fields(), {"kind": "faces"}, backend=backend,
                          checksums=False) as writer:
            writer.write("a", {"frames": np.ones((3, 16, 16, 3))})
            writer.mark_complete()
    made.rename(path)
    handle = BACKENDS[backend](path, "r+")  # what format 1 wrote: no checksums, no keys digest
    meta = handle.read_meta()
    meta[META_KEY] = {name: value for name, value in meta[META_KEY].items() if name not in ("checksums", "keys_sha256")}
    handle.write_meta({**meta, META_KEY: {**meta[META_KEY], "format_version": 1}})
    handle.close()

    with pytest.warns(UncheckedStoreWarning, match=f"{re.escape(str(path))}: this store carries no checksums"):
        reader = open_store(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per store: opening it again says nothing
        assert open_store(path).read("a", "frames").sum() == 3 * 16 * 16 * 3
        assert verify(path) == []
        with open_for_append(path) as writer:  # appending keeps it what it is
            writer.write("b", {"frames": np.ones((2, 16, 16, 3))})
            writer.mark_complete()
    info = json.loads(json.dumps(BACKENDS[backend](path, "r").read_meta()[META_KEY]))
    assert info["format_version"] == 1 and "checksums" not in info
    assert reader.read("a", "frames").shape == (3, 16, 16, 3)
