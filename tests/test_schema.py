"""The store schemas: what a teacher cache records, and every check a stage makes of a store against it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cache import bench
from cache.schema import FaceStoreSpec, SpectrogramStoreSpec, TeacherCacheSpec, coverage_problems, raise_problems
from cache.store import StoreError, copy_store, delete_store, open_store

CLASSES = ("a", "b")
MADE = TeacherCacheSpec(
    teacher_fingerprint="f" * 64, teacher_arch="vgg16", teacher_tiny=True, teacher_sequential=True,
    teacher_precision="float32", embed_dim=4, num_classes=2, class_names=CLASSES, video_fps=25, segment_frames=25,
    window_seconds=2, dtype="float16", batch_frames=64, dataset="synthetic", dataset_root="/data", face_size=32,
    face_crop="centre 1.0", manifest_sha256="m" * 64, splits=("train", "val"))


def write_cache(path: Path, spec: TeacherCacheSpec = MADE, keys: tuple[str, ...] = ("k1", "k2"), windows: int = 2):
    """A complete cache of `keys`, each with 75 frames (3 segments) and `windows` aggregator rows."""
    with spec.create(path) as writer:
        for key in keys:
            rows = {field.name: np.zeros(((75 if field.name in ("frames", "frame_prob", "frame_pred") else 3),
                                          *field.row_shape)) for field in spec.fields() if field.ragged}
            rows.update(aggregator=np.zeros((windows, 4)), window_soft=np.zeros((windows, 2)),
                        peak=np.zeros(4), soft=np.zeros(2))
            writer.write(key, {name: rows[name] for name in (field.name for field in spec.fields())})
        writer.mark_complete()
    return open_store(path)


def test_a_cache_records_its_spec_and_its_fields(tmp_path):
    cache = write_cache(tmp_path / "c.zarr")
    assert cache.attrs["kind"] == "teacher-embeddings" and cache.attrs["format_version"] == 1
    assert cache.attrs["class_names"] == ["a", "b"] and cache.attrs["splits"] == ["train", "val"]
    assert set(cache.fields) == {"frames", "frame_prob", "frame_pred", "segments", "peak", "soft", "aggregator",
                                 "window_soft"}
    assert MADE.problems(cache) == [] and MADE.resume_problems(cache) == []
    assert set(replace(MADE, teacher_sequential=False).fields()) < set(MADE.fields())


def test_a_reader_checks_only_what_it_sets(tmp_path):
    cache = write_cache(tmp_path / "c.zarr")
    assert TeacherCacheSpec().problems(cache) == []
    assert TeacherCacheSpec(teacher_fingerprint="ffff", video_fps=25).problems(cache) == []  # a prefix will do
    problems = TeacherCacheSpec(teacher_fingerprint="0000", class_names=("a", "c"), manifest_sha256="x" * 64,
                                window_seconds=3, splits=("train",)).problems(cache)
    assert problems == [
        "the store was made by teacher ffffffffffff, expected 0000",
        "cache has class_names=['a', 'b'], this run needs ['a', 'c']",
        "cache windows are window_seconds=2 s, this run's crops are crop_seconds=3 s; they must match (export again "
        "with window_seconds=3, or pass --crop-seconds 2)",
        "the store was made for manifest mmmmmmmmmmmm, expected xxxxxxxxxxxx",
        "cache has splits=['train', 'val'], this run needs ['train']",
    ]


def test_keys_targets_and_windows(tmp_path):
    cache = write_cache(tmp_path / "c.zarr")
    expected = TeacherCacheSpec()
    assert expected.problems(cache, training_keys=["k1", "k2"], target_field="aggregator",
                             window_rows={"k1": 2, "k2": 2}) == []
    problems = expected.problems(cache, training_keys=["k1", "k3"], test_keys=["k2"], target_field="aggregator",
                                 window_rows={"k1": 1, "k3": 1})
    assert problems == [
        "holds 1 test-fold utterances (e.g. ['k2']); training on it would leak the test fold: remove it and run again",
        "lacks 1 of 2 training utterances, e.g. ['k3']",
        "1 utterances have another number of window rows than this run's crops need, e.g. 'k1' has 2, not 1",
    ]
    flat = write_cache(tmp_path / "flat.zarr", replace(MADE, teacher_sequential=False))
    with pytest.raises(StoreError, match="no 'aggregator' rows.*non-sequential teacher.*--sequential") as error:
        expected.check(tmp_path / "flat.zarr", flat, target_field="aggregator")
    assert str(error.value).startswith(str(tmp_path / "flat.zarr"))


def test_resume_names_the_teacher_then_every_setting_and_the_part(tmp_path):
    cache = write_cache(tmp_path / "c.zarr")
    assert replace(MADE, teacher_fingerprint="0" * 64, dtype="float32").resume_problems(cache) == [
        "cache was made by teacher ffffffffffff, this teacher is 000000000000"]
    assert replace(MADE, dtype="float32", batch_frames=32).resume_problems(cache, part=(0, 2)) == [
        "was written with dtype='float16', this run uses 'float32'",
        "was written with batch_frames=64, this run uses 32",
        "is part None (index, count), this export writes part (0, 2)",
    ]
    with pytest.raises(StoreError, match=r"c\.zarr: was written with dtype='float16', this run uses 'float32'; "
                                         "pass --overwrite"):
        raise_problems(tmp_path / "c.zarr", replace(MADE, dtype="float32").resume_problems(cache), "pass --overwrite")
    raise_problems(tmp_path / "c.zarr", [])


@pytest.mark.parametrize("backend", ["zarr", "hdf5", "memory"])
def test_prepare_stores_resume_only_with_their_own_settings(tmp_path, backend):
    faces = FaceStoreSpec(dataset="synthetic", dataset_root="/data", video_fps=25, face_size=8, crop="centre 1.0")
    spectrograms = SpectrogramStoreSpec(dataset="synthetic", dataset_root="/data", video_fps=25,
                                        spectrogram={"n_fft": 16, "normalisation": "utterance"})
    assert spectrograms.fields()[0].row_shape == (9,) and faces.fields()[0].row_shape == (8, 8, 3)
    path = tmp_path / "faces.store"
    with faces.open_or_create(path, backend, overwrite=False, hint="pass --overwrite") as writer:
        writer.write("a", {"frames": np.zeros((2, 8, 8, 3))})
    with faces.open_or_create(path, backend, overwrite=False, hint="pass --overwrite") as writer:
        assert list(writer.keys) == ["a"]  # resumed, not replaced
    with pytest.raises(StoreError, match="was written with crop='centre 1.0', this run uses 'boxes'; pass --overwrite"):
        replace(faces, crop="boxes").open_or_create(path, backend, overwrite=False, hint="pass --overwrite")
    with replace(faces, crop="boxes").open_or_create(path, backend, overwrite=True, hint="") as writer:
        assert list(writer.keys) == []
    delete_store(path)


def test_coverage_of_a_manifest(tmp_path):
    cache = write_cache(tmp_path / "c.zarr", keys=("k1", "t1"))
    manifest = {"k1": "train", "k2": "val", "t1": "test"}
    assert coverage_problems(cache, manifest) == [
        "1 of 2 manifest keys of splits ['train', 'val'] are missing from the store, e.g. ['k2']",
        "the store holds 1 keys of splits ['test'] it was not to export (splits ['train', 'val']), e.g. ['t1']",
    ]


def test_copy_into_memory(tmp_path):
    write_cache(tmp_path / "c.zarr")
    memory = copy_store(tmp_path / "c.zarr", tmp_path / "c.mem", ["k2"], ("frame_prob", "frames"))
    assert memory.backend == "memory" and memory.keys == ["k2"] and set(memory.fields) == {"frames", "frame_prob"}
    assert memory.attrs == open_store(tmp_path / "c.zarr").attrs and memory.read("k2", "frames").shape == (75, 4)
    assert not (tmp_path / "c.mem").exists()
    delete_store(tmp_path / "c.mem")
    with pytest.raises(StoreError, match="not an avl store"):
        open_store(tmp_path / "c.mem")


def test_the_store_benchmark_runs(tmp_path, capsys):
    result = bench.run(bench.StoreBenchConfig(utterances=6, batches=2, dir=tmp_path))
    assert set(result["backends"]) == {"zarr", "hdf5"} and result["memory_batches_per_second"] > 0
    assert '"backends"' in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crops", "hdf5", "zarr"]  # the in-memory stores wrote nothing
    crops = result["crop_reads"]["crops_per_second"]
    assert {"memory", "flat_memmap", "h5py_plain", "npy_per_utterance", "avl_zarr", "avl_hdf5"} <= set(crops)
