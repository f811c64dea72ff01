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
        "out": tmp_path / "bench.json"})
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
    sizes = result["bytes_per_hour_mb"]
    assert {"spectrograms", "face_crops", "teacher_cache"} <= set(sizes)
    assert {"frames", "frame_prob", "peak", "segments", "soft"} <= set(sizes["teacher_cache"])
    rss = result["peak_rss"]
    assert [row["utterances"] for row in rss["runs"]] == [20, 40]
    assert all(row["peak_rss_main_mb"] > 0 for row in rss["runs"]) and rss["import_only_mb"] > 0


def test_bench_refuses_a_corpus_smaller_than_two_batches() -> None:
    with pytest.raises(config_io.ConfigError, match="two batches"):
        config_io.build(bench.BenchConfig, {"speakers": 2, "utterances_per_speaker": 4, "batch_size": 8, "epochs": 1})
