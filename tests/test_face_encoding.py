"""Face stores in either encoding (raw uint8 or a JPEG per frame): stage 0 writes them, one reader reads both,
stages 1 and 2 run on JPEG faces, and a store of another encoding, an old store or damaged bytes are handled."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.io import encode_jpeg

from cache.schema import FACE_FIELDS, FaceStoreSpec, face_fields
from cache.store import StoreError, array_stats, create_store, open_store
from pipeline import config as config_io
from pipeline import runs
from pipeline.data import GroupFrames, RandomFrames, RandomWindows
from pipeline.datasets.synthetic.face import render_talking_face, sample_face
from pipeline.face_store import FACE_ENCODINGS, JpegFaces, RawFaces, open_faces, shared_header
from stages import export_embeddings, prepare, train_teacher

SIZE = 32
SOURCE = {"dataset": "synthetic", "dataset_root": "/data", "video_fps": 25, "face_size": SIZE, "crop": "centre 1.0"}
SPECS = {"raw": FaceStoreSpec(**SOURCE), "jpeg": FaceStoreSpec(**SOURCE, encoding="jpeg", quality=90)}


def talking_face(n_frames: int, seed: int) -> np.ndarray:
    """(T, SIZE, SIZE, 3) uint8 frames of a synthetic talking face: what JPEG is made for, unlike noise."""
    rng = np.random.default_rng(seed)
    frames, _ = render_talking_face(sample_face(rng), rng.random(n_frames), np.random.default_rng(seed + 1), rng,
                                    SIZE, 25, noise=0.0)
    return frames


UTTERANCES = {"a": talking_face(30, 0), "b": talking_face(7, 1), "empty": talking_face(1, 2)[:0], "c": talking_face(1, 3)}


def write_faces(path: Path, encoding: str, backend: str = "zarr", utterances=UTTERANCES) -> Path:
    with SPECS[encoding].create(path, backend) as writer:
        for key, frames in utterances.items():
            writer.write(key, FACE_ENCODINGS[encoding].encode(frames, SPECS[encoding].quality))
        writer.mark_complete()
    return path


def test_every_encoding_has_its_fields_and_a_reader():
    assert set(FACE_ENCODINGS) == set(FACE_FIELDS)
    for name, reader in FACE_ENCODINGS.items():
        assert reader.encoding == name and reader.length_field in {spec.name for spec in face_fields(SIZE, name)}


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
@pytest.mark.parametrize("encoding", ["raw", "jpeg"])
def test_faces_round_trip_and_slice(tmp_path, encoding, backend):
    faces = open_faces(write_faces(tmp_path / f"faces.{backend}", encoding, backend))
    assert type(faces) is FACE_ENCODINGS[encoding] and faces.face_size == SIZE
    assert faces.attrs["encoding"] == encoding and list(faces.keys) == list(UTTERANCES)
    for key, original in UTTERANCES.items():
        stored = faces.read(key)
        assert stored.shape == original.shape and stored.dtype == np.uint8 and faces.length(key) == len(original)
        if encoding == "raw":
            np.testing.assert_array_equal(stored, original)
        elif len(original):
            assert np.abs(stored.astype(int) - original).mean() < 8  # of 255: quality 90, at 32 px (64 px: < 4)
    whole = faces.read("a")
    for start, stop in [(2, 5), (0, 1), (29, None), (-3, None), (None, 4), (4, 4), (10, 2), (25, 99)]:
        np.testing.assert_array_equal(faces.read("a", start, stop), whole[start:stop])
    assert faces.read("a", 4, 4).shape == (0, SIZE, SIZE, 3) and faces.read("empty").shape == (0, SIZE, SIZE, 3)
    np.testing.assert_array_equal(faces.take("a", [3, 1, 3, 29]), whole[[3, 1, 3, 29]])
    assert faces.take("a", []).shape == (0, SIZE, SIZE, 3)
    assert torch.equal(faces.read_tensor("b", 1, 3), torch.from_numpy(faces.read("b")[1:3]))
    with pytest.raises(IndexError, match="'a' has 30 frames"):
        faces.take("a", [30])
    again = pickle.loads(pickle.dumps(faces))  # as DataLoader workers get it
    np.testing.assert_array_equal(again.read("b"), faces.read("b"))


def test_jpeg_frames_store_their_shared_header_once_and_are_smaller_than_raw(tmp_path):
    long = {f"u{i}": talking_face(50, i) for i in range(4)}
    raw_path, jpeg_path = write_faces(tmp_path / "raw.zarr", "raw", utterances=long), tmp_path / "jpeg.zarr"
    write_faces(jpeg_path, "jpeg", utterances=long)
    raw, jpeg = open_store(raw_path), open_store(jpeg_path)
    assert raw.n_rows("frames") == jpeg.n_rows("jpeg_bytes") == 200
    header = jpeg.read("u0", "jpeg_header")
    assert 500 < len(header) < 1000 and header[:2].tolist() == [0xFF, 0xD8]  # the start-of-image marker
    assert jpeg.n_rows("jpeg_header") == 4 * len(header)  # once per key
    jpeg_bytes = jpeg.n_rows("jpeg") + jpeg.n_rows("jpeg_header")
    # raw: zstd over the pixels, which flat noise-free cartoons suit; `avl bench-faces` measures realistic faces
    assert jpeg_bytes < array_stats(raw_path)["frames"]["bytes"]
    whole = [np.asarray(image) for image in encode_jpeg(list(torch.from_numpy(long["u1"]).permute(0, 3, 1, 2)), 90)]
    assert shared_header(whole).tolist() == header.tolist()
    assert len(shared_header([whole[0], whole[1][:100]])) == 0 and len(shared_header([whole[0][:50]])) == 0


def test_an_old_face_store_without_an_encoding_reads_as_raw(tmp_path):
    path = tmp_path / "old.zarr"
    with create_store(path, face_fields(SIZE), {"kind": "faces", **SOURCE}) as writer:  # as stores were written
        writer.write("a", {"frames": UTTERANCES["a"]})
        writer.mark_complete()
    faces = open_faces(path)
    assert isinstance(faces, RawFaces) and "encoding" not in faces.attrs
    np.testing.assert_array_equal(faces.read("a", 3, 9), UTTERANCES["a"][3:9])
    assert SPECS["raw"].resume_problems(faces.store) == []  # stage 0 may finish it without --face-encoding raw
    assert SPECS["jpeg"].resume_problems(faces.store) == ["was written with encoding='raw', this run uses 'jpeg'",
                                                          "was written with quality=None, this run uses 90"]


def test_a_store_of_another_encoding_is_not_resumed(tmp_path):
    path = tmp_path / "faces.zarr"
    with SPECS["jpeg"].open_or_create(path, "zarr", overwrite=False, hint="pass --overwrite") as writer:
        writer.write("a", JpegFaces.encode(UTTERANCES["a"], 90))
    with pytest.raises(StoreError, match="was written with encoding='jpeg', this run uses 'raw'.*pass --overwrite"):
        SPECS["raw"].open_or_create(path, "zarr", overwrite=False, hint="pass --overwrite")
    with pytest.raises(StoreError, match="quality=90, this run uses 75"):
        FaceStoreSpec(**SOURCE, encoding="jpeg", quality=75).open_or_create(path, "zarr", False, "")


def test_face_encoding_settings_are_checked(tmp_path):
    for bad, message in (({"face_encoding": "png"}, "face_encoding must be one of"),
                         ({"jpeg_quality": 0}, "at least 1"), ({"jpeg_quality": 101}, "at most 100")):
        with pytest.raises(config_io.ConfigError, match=message):
            config_io.build(prepare.PrepareConfig, {"root": tmp_path, **bad})
    assert config_io.build(prepare.PrepareConfig, {"root": tmp_path}).face_storage == {"encoding": "jpeg",
                                                                                     "quality": 90}
    with pytest.raises(ValueError, match="jpeg takes a quality in 1..100"):
        FaceStoreSpec(**SOURCE, encoding="jpeg")
    with pytest.raises(ValueError, match="raw none"):
        FaceStoreSpec(**SOURCE, quality=90)
    with pytest.raises(ValueError, match="face encoding 'png'"):
        FaceStoreSpec(**SOURCE, encoding="png")


def test_bytes_that_are_no_jpeg_are_a_store_error_naming_the_key(tmp_path):
    path = tmp_path / "faces.zarr"
    other_size = JpegFaces.encode(talking_face(2, 5)[:, :16, :16], 90)
    with SPECS["jpeg"].create(path, "zarr") as writer:
        writer.write("good", JpegFaces.encode(UTTERANCES["b"], 90))
        writer.write("garbage", {"jpeg": np.arange(40, dtype=np.uint8), "jpeg_bytes": np.array([25, 15]),
                                 "jpeg_header": np.zeros(0, dtype=np.uint8)})
        writer.write("small", other_size)
        writer.mark_complete()
    faces = open_faces(path)
    assert faces.read("good").shape == (7, SIZE, SIZE, 3)
    with pytest.raises(StoreError, match=rf"^{path}: key 'garbage', frames 1-1: the stored JPEG data does not decode "
                                         r"\(Not a JPEG file"):
        faces.read("garbage", 1)
    with pytest.raises(StoreError, match=rf"^{path}: key 'small', frames 0-1: a stored JPEG decodes to \(3, 16, 16\)"):
        faces.read("small")
    loader = torch.utils.data.DataLoader(RandomFrames(path, ["garbage"], [0], 2), batch_size=None, num_workers=1)
    with pytest.raises(StoreError, match=f"^{path}: key 'garbage'") as error:
        list(loader)
    assert "\n" not in str(error.value)


def test_damaged_jpeg_bytes_on_disk_fail_their_checksum(tmp_path):
    path = write_faces(tmp_path / "faces.zarr", "jpeg")
    shard = path / "jpeg" / "c" / "0"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=rf"^{path}: field 'jpeg', rows .*'a'.*damaged data"):
        open_faces(path).read("a")


@pytest.fixture(scope="module")
def raw_run(tiny_run, tmp_path_factory) -> Path:
    """The tiny corpus prepared again with raw faces (tiny_run's are JPEG, the default)."""
    run_dir = tmp_path_factory.mktemp("raw-faces") / "run"
    prepare.run(config_io.build(prepare.PrepareConfig, {"root": tiny_run / "corpus", "run_dir": run_dir,
                                                        "num_workers": 0, "face_encoding": "raw"}))
    return run_dir


def test_stage0_writes_either_encoding_of_the_same_crops(tiny_run, raw_run):
    jpeg = open_faces(runs.find_store(runs.prepare_dir(tiny_run / "run"), "faces"))
    raw = open_faces(runs.find_store(runs.prepare_dir(raw_run), "faces"))
    assert (jpeg.encoding, jpeg.attrs["quality"], raw.encoding, raw.attrs["quality"]) == ("jpeg", 90, "raw", None)
    assert list(jpeg.keys) == list(raw.keys) and all(jpeg.length(key) == raw.length(key) for key in raw.keys)
    errors = [np.abs(jpeg.read(key).astype(np.float32) - raw.read(key)).mean() for key in raw.keys]
    assert max(errors) < 4  # of 255: JPEG at quality 90 of the same crops
    assert runs.read_json(runs.prepare_dir(raw_run) / "prepare.json")["face_storage"] == {"encoding": "raw",
                                                                                          "quality": None}


def test_stage0_refuses_to_resume_faces_of_another_encoding(tiny_run, raw_run):
    with pytest.raises(StoreError, match="faces.zarr: was written with encoding='raw', this run uses 'jpeg'"):
        prepare.run(config_io.build(prepare.PrepareConfig, {"root": tiny_run / "corpus", "run_dir": raw_run,
                                                            "num_workers": 0}))


def test_stage1_trains_on_raw_faces_and_stage2_exports_jpeg_faces(tiny_run, raw_run, tmp_path):
    """tiny_run's teacher was trained on JPEG faces; train one on raw faces, and export from the JPEG store."""
    train_teacher.run(config_io.build(train_teacher.TeacherConfig, {
        "run_dir": raw_run, "tiny": True, "epochs": 1, "batch_size": 4, "num_workers": 0, "device": "cpu"}))
    assert runs.read_json(runs.teacher_dir(raw_run) / "metrics.json")["test"]["frame_accuracy"] >= 0
    run_dir = tiny_run / "run"
    cache_path = export_embeddings.run(config_io.build(export_embeddings.ExportConfig, {
        "run_dir": run_dir, "out": tmp_path / "cache.zarr", "device": "cpu", "num_workers": 1, "batch_frames": 64}))
    faces = open_faces(runs.find_store(runs.prepare_dir(run_dir), "faces"))
    with open_store(cache_path) as cache:
        assert cache.keys and all(cache.length(key, "frames") == faces.length(key) for key in cache.keys)
        assert np.isfinite(cache.read(cache.keys[0], "frames").astype(np.float32)).all()


@pytest.mark.parametrize("encoding", ["raw", "jpeg"])
def test_stage_datasets_read_either_encoding(tmp_path, encoding):
    path = write_faces(tmp_path / "faces.zarr", encoding)
    faces = open_faces(path)
    frames, label = RandomFrames(path, ["a", "b"], [0, 1], 5)[1]
    assert frames.shape == (5, SIZE, SIZE, 3) and label == 1
    window, _ = RandomWindows(path, ["a"], [0], 1, 25)[0]
    stored = faces.read("a")
    assert any(np.array_equal(window.numpy(), stored[start : start + 25]) or
               np.array_equal(window.numpy(), stored[start : start + 25, :, ::-1]) for start in range(6))
    keys, counts, group = GroupFrames(path, [["a", "b"]], {"a": 30, "b": 7})[0]
    assert keys == ["a", "b"] and counts == [30, 7]
    np.testing.assert_array_equal(group.numpy(), np.concatenate([stored, faces.read("b")]))
    with pytest.raises(StoreError, match="'b' has 7 frames, the manifest says 8"):
        GroupFrames(path, [["b"]], {"b": 8})[0]


def test_the_face_storage_benchmark_runs(tmp_path):
    from pipeline.bench.faces import FaceBenchConfig, measure

    cfg = config_io.build(FaceBenchConfig, {"sizes": [24, 16], "synthetic_seconds": 1, "reads": 2,
                                            "backends": ["zarr"]})
    result = measure(cfg, tmp_path)
    assert result["sources"]["synthetic"]["frames"] == 25
    for size in ("24", "16"):
        raw, jpeg = (result["results"]["synthetic"][size][encoding]["zarr"] for encoding in ("raw", "jpeg"))
        assert raw["mean_abs_error"] == 0 and 0 < jpeg["mean_abs_error"] < 20  # tiny noisy faces: JPEG's worst
        assert all(row[name] > 0 for row in (raw, jpeg) for name in ("mb_per_hour", "window_frames_per_second",
                                                                      "pick_frames_per_second"))
    assert list(tmp_path.iterdir()) == []  # every store it wrote is removed
    with pytest.raises(config_io.ConfigError, match="nothing to measure"):
        config_io.build(FaceBenchConfig, {"synthetic_seconds": 0})
