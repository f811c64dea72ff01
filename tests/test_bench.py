"""`avl bench` end to end at toy sizes: every section is measured and the JSON object is complete (no timing
thresholds: the numbers are for people to read)."""

import json

import pytest

from pipeline import config as config_io
from stages import bench

pytestmark = pytest.mark.slow


def test_bench_measures_every_section(tmp_path, capsys) -> None:
    cfg = config_io.build(bench.BenchConfig, {
        "work": tmp_path / "work", "speakers": 2, "utterances_per_speaker": 6, "batch_size": 2, "steps": 2,
        "rounds": 2, "epochs": 1, "num_workers": 1, "device": "cpu", "rss_utterances": (20, 40), "rss_steps": 2,
        "full_teacher_batch": 1, "full_teacher_steps": 1, "full_teacher_frames": 40, "crop_utterances": 8,
        "crop_reads": 40, "out": tmp_path / "bench.json"})
    result = bench.run(cfg)
    out = capsys.readouterr().out  # the JSON object alone: progress went to stderr
    assert json.loads(out) == json.loads((tmp_path / "bench.json").read_text())
    pipeline = result["input_pipeline"]
    assert pipeline["store_steps_per_second"] > 0 and pipeline["memory_steps_per_second"] > 0
    assert pipeline["overhead"] == pytest.approx(
        pipeline["memory_steps_per_second"] / pipeline["store_steps_per_second"], rel=1e-2)
    live = result["cache_vs_live_teacher"]
    assert live["cached"]["epoch_seconds"] > 0 and live["live"]["epoch_seconds"] > 0 and live["speedup"] > 0
    export = result["export"]
    assert export["frames_per_second"] > 0
    assert export["read_frames_share"] + export["teacher_share"] + export["write_share"] == pytest.approx(1.0, abs=0.01)
    full = result["full_size_teacher"]  # the paper's teacher next to the tiny one, at the run's face size
    assert full["face_size"] > 0 and full["batches_timed"] == 1
    assert full["teacher_parameters"]["full_teacher"] > 20 * full["teacher_parameters"]["tiny_teacher"]
    assert set(full["seconds_per_batch"]) == {"cached", "live_tiny_teacher", "live_full_teacher"}
    assert all(seconds > 0 for seconds in full["seconds_per_batch"].values())
    assert set(full["teacher_seconds_per_batch"]) == {"live_tiny_teacher", "live_full_teacher"}
    assert set(full["speedup"]) == set(full["export_frames_per_second"]) == {"tiny_teacher", "full_teacher"}
    assert full["export_frames"] >= 40 and all(rate > 0 for rate in full["export_frames_per_second"].values())
    crops = result["crop_reads"]["ratio_to_memory"]  # every way of keeping crops, side by side
    assert {"flat_memmap", "h5py_plain", "npy_per_utterance", "avl_zarr", "avl_hdf5", "avl_zarr_cold"} <= set(crops)
    sizes = result["bytes_per_hour_mb"]
    assert {"spectrograms", "face_crops", "teacher_cache"} <= set(sizes)
    assert {"frames", "frame_prob", "peak", "segments", "soft"} <= set(sizes["teacher_cache"])
    rss = result["peak_rss"]
    assert [row["utterances"] for row in rss["runs"]] == [20, 40]
    assert all(row["peak_rss_main_mb"] > 0 for row in rss["runs"]) and rss["import_only_mb"] > 0


def test_bench_refuses_a_corpus_smaller_than_two_batches() -> None:
    with pytest.raises(config_io.ConfigError, match="two batches"):
        config_io.build(bench.BenchConfig, {"speakers": 2, "utterances_per_speaker": 4, "batch_size": 8, "epochs": 1})
