"""Inner teacher layers in the cache (`export-embeddings --layers`) and stage 3 over caches of two teachers of
different dimensions (`train-student --distil`), on the tiny run."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from cache.inspect import format_info, store_info
from cache.schema import cache_fields
from cache.store import StoreError, open_store
from pipeline import checkpoints, runs
from pipeline import config as config_io
from pipeline.face_store import open_faces

LAYERS = ("trunk.stages.1", "trunk.stages.3")  # the tiny resnet34's second and last stages: 32 and 128 channels
TEACHER_B_LAYER = "trunk.9"  # the tiny vgg16's third conv's batch norm: 64 channels


def _export(run_dir: Path, out: Path | None = None, **settings) -> Path:
    from stages import export_embeddings

    values = {"run_dir": run_dir, "device": "cpu", "num_workers": 0, **settings}
    if out is not None:
        values["out"] = out
    return export_embeddings.run(config_io.build(export_embeddings.ExportConfig, values))


@pytest.fixture(scope="module")
def caches(tiny_run, tmp_path_factory) -> dict[str, Path]:
    """Run A (the tiny run's resnet34 teacher, 512-d) exported with and without two layers; teacher B (a tiny vgg16,
    24-d, trained in a second run directory on the same prepared data) exported with one layer."""
    from stages import train_teacher

    work = tmp_path_factory.mktemp("multi-cache")
    shutil.copytree(tiny_run / "run", work / "run", symlinks=True)
    run_b = work / "run-b"
    runs.prepare_dir(run_b).parent.mkdir(parents=True)
    runs.prepare_dir(run_b).symlink_to(runs.prepare_dir(work / "run").resolve())
    train_teacher.run(config_io.build(train_teacher.TeacherConfig, {
        "run_dir": run_b, "arch": "vgg16", "tiny": True, "embed_dim": 24, "epochs": 1, "batch_size": 4,
        "num_workers": 0, "device": "cpu"}))
    return {
        "run": work / "run",
        "plain": _export(work / "run", work / "plain.zarr"),
        "layered": _export(work / "run", layers=LAYERS),
        "teacher_b": runs.teacher_checkpoint(run_b),
        "b": _export(run_b, work / "b.zarr", layers=(TEACHER_B_LAYER,)),
    }


def _direct_layer_rows(run_dir: Path, key: str) -> dict[str, np.ndarray]:
    """The teacher's per-frame embedding and each layer's spatial mean, by plain forward hooks on one utterance."""
    teacher = checkpoints.load_teacher(runs.teacher_checkpoint(run_dir), torch.device("cpu")).model.eval()
    modules = dict(teacher.named_modules())
    rows: dict[str, torch.Tensor] = {}
    handles = [modules[name].register_forward_hook(
        lambda module, inputs, output, name=name: rows.__setitem__(name, output.mean(dim=(2, 3)))) for name in LAYERS]
    frames = open_faces(runs.find_store(runs.prepare_dir(run_dir), "faces")).read(key)
    with torch.no_grad():
        rows["embedding"], _ = teacher(torch.from_numpy(frames))
    for handle in handles:
        handle.remove()
    return {name: value.numpy() for name, value in rows.items()}


def test_two_layer_export_round_trip_matches_a_direct_forward_hook(caches):
    cache = open_store(caches["layered"])
    assert cache.attrs["layers"] == {"trunk.stages.1": 32, "trunk.stages.3": 128}
    for key in cache.keys[:3]:
        direct = _direct_layer_rows(caches["run"], key)
        n_frames = len(direct["embedding"])
        peak = int(cache.read(key, "frame_prob").argmax())
        for layer, dim in cache.attrs["layers"].items():
            field = "layer_" + layer.replace(".", "_")
            frames = cache.read(key, f"{field}__frames").astype(np.float32)
            assert frames.shape == (n_frames, dim)
            np.testing.assert_allclose(frames, direct[layer], rtol=2e-3, atol=2e-3)  # float16 storage
            segments = cache.read(key, f"{field}__segments").astype(np.float32)
            expected = np.stack([direct[layer][start : start + 25].mean(0) for start in range(0, n_frames, 25)])
            np.testing.assert_allclose(segments, expected, rtol=2e-3, atol=2e-3)
            np.testing.assert_array_equal(cache.read(key, f"{field}__peak"), cache.read(key, f"{field}__frames")[peak])
        np.testing.assert_allclose(cache.read(key, "frames").astype(np.float32), direct["embedding"], rtol=2e-3,
                                   atol=2e-3)


def test_layers_leave_the_papers_fields_as_they_were(caches):
    plain, layered = open_store(caches["plain"]), open_store(caches["layered"])
    attrs = plain.attrs
    assert "layers" not in attrs
    assert list(plain.fields) == [spec.name for spec in cache_fields(attrs["embed_dim"], attrs["num_classes"],
                                                                     attrs["dtype"])]
    assert {name: value for name, value in layered.attrs.items() if name != "layers"} == attrs
    for field in plain.fields:
        for key in plain.keys:
            np.testing.assert_array_equal(layered.read(key, field), plain.read(key, field))


def test_cache_info_lists_the_layers_and_their_dimensions(caches):
    info = store_info(caches["layered"])
    assert [(layer["layer"], layer["dim"]) for layer in info["layers"]] == [("trunk.stages.1", 32),
                                                                           ("trunk.stages.3", 128)]
    text = format_info(info)
    assert "teacher layers" in text and "trunk.stages.3" in text and "layer_trunk_stages_3__segments" in text
    assert store_info(caches["plain"])["layers"] == []


def test_export_refuses_unknown_layers_and_resuming_with_other_layers(caches):
    with pytest.raises(config_io.ConfigError, match=r"no layer 'trunk\.layer3'.*trunk\.stages\.2"):
        _export(caches["run"], caches["run"].parent / "unknown.zarr", layers=("trunk.layer3",))
    with pytest.raises(StoreError, match="holds teacher layers"):
        _export(caches["run"], layers=("trunk.stages.2",))


def _student(run_dir: Path, *distil: str, **settings) -> Path:
    from stages import train_student

    return train_student.run(config_io.build(train_student.StudentConfig, {
        "run_dir": run_dir, "tiny": True, "epochs": 1, "batch_size": 4, "crop_seconds": 1, "num_workers": 0,
        "device": "cpu", "distil": distil, **settings}))


def test_stage_3_trains_on_two_caches_of_different_teachers_and_dimensions(caches):
    run_dir, b, teacher_b = caches["run"], caches["b"], caches["teacher_b"]
    out = _student(run_dir, f"cache={caches['layered']},lam=0.3",
                   f"cache={caches['layered']},layer=trunk.stages.3,lam=0.1,from=trunk.stages.2",
                   f"cache={b},teacher={teacher_b},layer={TEACHER_B_LAYER},lam=0.2,distance=cosine,from=trunk.stages.1",
                   f"cache={b},teacher={teacher_b},lam=0.1,target=utterance-peak")
    assert out.name == "distil4-sum-lambda0.7-seed0"
    metrics = runs.read_json(out / "metrics.json")
    targets = metrics["distil"]["targets"]
    assert [target["dim"] for target in targets] == [512, 128, 64, 24]
    fingerprints = [target["teacher_fingerprint"] for target in targets]
    assert fingerprints[0] == fingerprints[1] == runs.file_sha256(runs.teacher_checkpoint(run_dir))
    assert fingerprints[2] == fingerprints[3] == runs.file_sha256(teacher_b) != fingerprints[0]
    assert metrics["lambda"] == pytest.approx(0.7) and metrics["distance"] == "mse+cosine"
    assert metrics["history"][-1]["distance"] > 0 and np.isfinite(metrics["history"][-1]["loss"])
    assert len(tomllib.loads((out / "config.toml").read_text())["distil"]) == 4
    student = checkpoints.load_student(out / checkpoints.STUDENT_FILE)
    assert student.embed_dim == 512  # the first target read from the embedding: teacher A's
    assert not any(name.startswith("projections") for name in student.model.state_dict())


def test_stage_3_checks_every_cache_and_names_the_one_refused(caches):
    run_dir, b = caches["run"], caches["b"]
    with pytest.raises(StoreError, match=rf"--distil target 2: {b}: not this run's teacher cache.*teacher=PATH"):
        _student(run_dir, f"cache={caches['layered']},lam=0.3", f"cache={b},lam=0.2", name="refused")
    with pytest.raises(StoreError, match=r"--distil target 1: .*no teacher layer 'trunk\.stages\.2'.*trunk\.stages\.1"):
        _student(run_dir, f"cache={caches['layered']},layer=trunk.stages.2,lam=0.3", name="refused")
    with pytest.raises(StoreError, match=r"--distil target 2: .*made by teacher"):
        _student(run_dir, f"cache={caches['layered']},lam=0.3",
                 f"cache={b},teacher={caches['teacher_b']},expect_teacher={'0' * 12},lam=0.2", name="refused")
    with pytest.raises(config_io.ConfigError, match=r"mean-target needs targets of one dimension, got \[512, 24\]"):
        _student(run_dir, f"cache={caches['layered']},lam=0.3", f"cache={b},teacher={caches['teacher_b']},lam=0.2",
                 name="refused", ensemble="mean-target")
    # refused before the run directory is claimed: only the writer's lock file is there
    assert [path.name for path in (runs.students_dir(run_dir) / "refused").iterdir()] == [".lock"]
