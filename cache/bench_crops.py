"""Benchmark: one list of random 5 s spectrogram crops read side by side from every way of keeping them.

Same process, same crops (500 × 257 float16 rows, on the 1 s grid), each result a fresh array the loader owns:
- `memory`: one numpy array per utterance (the ceiling);
- `flat_memmap`: every row in one memory-mapped `.npy` plus an offsets array;
- `h5py_plain`: one chunked, uncompressed h5py dataset of every row, read with plain slicing;
- `npy_per_utterance`: one `.npy` per utterance opened with `mmap_mode="r"` per read, as feature caches often are;
- `avl_<backend>`: avl's stores as stage 0 writes them (`spectrogram_fields`: raw layout, checksummed chunks),
  timed on a fresh reader (`cold`: each chunk checksummed on first touch) and again (`warm`);
- `avl_<backend>_compressed`: the same rows in a compressed field, as stores before format 3 kept them.
The files were just written, so reads come from a warm page cache: this measures per-call cost, not the disk.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np

from cache.backends import DISK_BACKENDS
from cache.schema import spectrogram_fields
from cache.store import SUFFIXES, create_store, open_store

N_FREQ, ROWS_PER_SECOND, CROP_SECONDS = 257, 100, 5


def utterances(n: int, seed: int) -> dict[str, np.ndarray]:
    """Keys and (T, 257) float16 rows of 3-8 s utterances, each its own memory (random values: only sizes matter).

    Views of one small pool would sit in the CPU cache and make `memory` a cache-to-cache copy that no store of
    real size gets."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3 * ROWS_PER_SECOND, 8 * ROWS_PER_SECOND + 1, n)
    rows = rng.standard_normal((int(lengths.sum()), N_FREQ), dtype=np.float32).astype(np.float16)
    ends = np.cumsum(lengths)
    return {f"id{10001 + i // 20}/v{i % 7}/{i:05d}.wav": rows[end - t : end].copy()
            for i, (t, end) in enumerate(zip(lengths.tolist(), ends.tolist()))}


def crop_list(rows: dict[str, np.ndarray], n_crops: int, seed: int) -> list[tuple[str, int, int]]:
    """(key, start, stop) of random whole-second crops, clipped to the utterance, as stage 3 draws them."""
    rng = np.random.default_rng(seed)
    keys = list(rows)
    crops = []
    for i in rng.integers(0, len(keys), n_crops):
        seconds = len(rows[keys[i]]) // ROWS_PER_SECOND
        start = int(rng.integers(0, max(0, seconds - CROP_SECONDS) + 1)) * ROWS_PER_SECOND
        crops.append((keys[i], start, min(start + CROP_SECONDS * ROWS_PER_SECOND, len(rows[keys[i]]))))
    return crops


def _rate(read: Callable[[str, int, int], np.ndarray], crops: list[tuple[str, int, int]]) -> float:
    started = time.perf_counter()
    for key, start, stop in crops:
        read(key, start, stop)
    return len(crops) / (time.perf_counter() - started)


def _baselines(directory: Path, rows: dict[str, np.ndarray]) -> dict[str, Callable[[str, int, int], np.ndarray]]:
    """The four ways of keeping the rows that are not avl, each as a read function."""
    keys = list(rows)
    offsets = dict(zip(keys, np.concatenate([[0], np.cumsum([len(rows[k]) for k in keys])])[:-1].tolist()))
    everything = np.concatenate([rows[k] for k in keys])
    np.save(directory / "flat.npy", everything)
    flat = np.load(directory / "flat.npy", mmap_mode="r")
    with h5py.File(directory / "plain.h5", "w") as handle:
        handle.create_dataset("rows", data=everything, chunks=(512, N_FREQ))
    plain = h5py.File(directory / "plain.h5", "r")["rows"]
    per_utterance = directory / "npy"
    per_utterance.mkdir(exist_ok=True)
    files = {}
    for i, key in enumerate(keys):
        files[key] = per_utterance / f"{i:05d}.npy"
        np.save(files[key], rows[key])
    return {
        "memory": lambda key, a, b: np.array(rows[key][a:b]),
        "flat_memmap": lambda key, a, b: np.array(flat[offsets[key] + a : offsets[key] + b]),
        "h5py_plain": lambda key, a, b: plain[offsets[key] + a : offsets[key] + b],
        "npy_per_utterance": lambda key, a, b: np.array(np.load(files[key], mmap_mode="r")[a:b]),
    }


def _avl_store(path: Path, backend: str, rows: dict[str, np.ndarray], layout: str | None = None) -> Path:
    fields = spectrogram_fields(N_FREQ)
    if layout is not None:
        fields = [replace(spec, layout=layout) for spec in fields]
    with create_store(path, fields, {"kind": "bench-crops"}, backend=backend) as writer:
        for key, values in rows.items():
            writer.write(key, {"spectrogram": values})
        writer.mark_complete()
    return path


def measure_crop_reads(directory: Path, n_utterances: int = 400, n_crops: int = 4000, seed: int = 0) -> dict:
    """Crops per second of every way of keeping the rows, and each one's ratio to `memory`."""
    rows = utterances(n_utterances, seed)
    crops = crop_list(rows, n_crops, seed + 1)
    rates = {name: _rate(read, crops) for name, read in _baselines(directory, rows).items()}
    for backend in DISK_BACKENDS:
        store = _avl_store(directory / f"crops{SUFFIXES[backend]}", backend, rows)
        reader = open_store(store)
        rates[f"avl_{backend}_cold"] = _rate(lambda key, a, b: reader.read(key, "spectrogram", a, b), crops)
        rates[f"avl_{backend}"] = _rate(lambda key, a, b: reader.read(key, "spectrogram", a, b), crops)
        packed = open_store(_avl_store(directory / f"packed{SUFFIXES[backend]}", backend, rows, "compressed"))
        rates[f"avl_{backend}_compressed"] = _rate(lambda key, a, b: packed.read(key, "spectrogram", a, b),
                                                   crops[: max(1, n_crops // 20)])  # ~100x slower: fewer crops
    memory = rates["memory"]
    return {
        "crop": f"{CROP_SECONDS} s = {CROP_SECONDS * ROWS_PER_SECOND} x {N_FREQ} float16 rows",
        "utterances": n_utterances, "crops": n_crops,
        "crops_per_second": {name: round(rate) for name, rate in rates.items()},
        "ratio_to_memory": {name: round(rate / memory, 3) for name, rate in rates.items()},
    }
