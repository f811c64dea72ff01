"""`avl bench-gpu` on the CPU: the same checks as on a GPU (gloo instead of nccl, tiny sizes), one JSON object,
failures recorded and turned into a non-zero exit, CUDA asked for without a GPU refused clearly. The compiled
training checks are left out here (minutes of CPU compilation); `tests/test_speed_settings.py` compiles a stage."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline import config as config_io
from pipeline.bench import gpu_check
from stages import bench_gpu

ROOT = Path(__file__).resolve().parent.parent
LOCAL = [name for name in bench_gpu.CHECKS if name not in gpu_check.WORKER_CHECKS]


def _config(tmp_path: Path, checks, **settings) -> bench_gpu.BenchGpuConfig:
    return config_io.build(bench_gpu.BenchGpuConfig, {
        "device": "cpu", "checks": list(checks), "work": tmp_path / "work", "out": tmp_path / "gpu-check.json",
        "budget_seconds": 5.0, **settings})


def test_local_checks_run_on_the_cpu_and_print_one_json_object(tmp_path, capsys) -> None:
    result = bench_gpu.run(_config(tmp_path, LOCAL))
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "gpu-check.json").read_text()) == json.loads(json.dumps(result))
    assert result["ok"] and result["failed"] == [] and list(result["checks"]) == LOCAL
    assert result["sizes"]["name"] == "tiny" and result["environment"]["torch"] == torch.__version__
    checks = result["checks"]
    forward = checks["stage2-forward"]
    assert forward["frames_per_second"] > 0 and forward["channels_last_frames_per_second"] > 0
    export = checks["stage2-export"]
    assert export["frames"] == 6 * 10 and export["frames_per_second"] > 0  # every frame of the synthetic face store
    assert export["read_share"] + export["teacher_share"] + export["write_share"] == pytest.approx(1.0, abs=0.01)
    jpeg = checks["jpeg-decode"]["sizes"]["32"]
    assert jpeg["cpu_frames_per_second"] > 0 and jpeg["mean_abs_error"] < 8 and jpeg["bytes_per_frame"] > 0
    assert jpeg["store_window_frames_per_second"] > 0  # the face store's reader on a JPEG store
    assert checks["stage3-loader"]["crops_per_second"] > 0 and checks["stage1-loader"]["frames_per_second"] > 0
    assert checks["stage1-loader"]["face_encoding"] == export["face_encoding"] == "jpeg"  # stage 0's default
    assert all(check["seconds"] >= 0 for check in checks.values())


@pytest.mark.slow  # three processes import torch: this entry, torchrun and its worker
def test_training_checks_run_under_torchrun_without_the_avl_command(tmp_path) -> None:
    """`python -m stages.bench_gpu settings.toml`, the entry for machines without typer, launching torchrun: bf16
    autocast and channels-last on the CPU, DDP over gloo in a world of one."""
    settings = tmp_path / "settings.toml"
    settings.write_text(f'device = "cpu"\nchecks = ["stage1-steps", "stage3-steps"]\nbudget_seconds = 5.0\n'
                        f'work = "{tmp_path / "work"}"\nout = "{tmp_path / "gpu-check.json"}"\n'
                        'precision = "bf16"\nchannels_last = true\n')
    done = subprocess.run([sys.executable, "-m", "stages.bench_gpu", str(settings)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result == json.loads((tmp_path / "gpu-check.json").read_text()) and result["ok"]
    for name, unit in (("stage1-steps", "frames"), ("stage3-steps", "crops")):
        check = result["checks"][name]
        assert check["ok"] and check[f"{unit}_per_second"] > 0 and check["steps_timed"] >= 1
        assert (check["backend"], check["processes"], check["precision"], check["channels_last"]) == (
            "gloo", 1, "bfloat16", True)
        assert check["compiled"] is False and check["last_loss"] > 0


def test_a_failed_check_is_in_the_json_and_the_command_fails(tmp_path, capsys, monkeypatch) -> None:
    def broken(ctx):
        raise RuntimeError("nvjpeg says no")

    monkeypatch.setitem(bench_gpu.CHECKS, "jpeg-decode", broken)
    with pytest.raises(gpu_check.GpuCheckError, match="1 of 1 checks failed: jpeg-decode: RuntimeError: nvjpeg"):
        bench_gpu.run(_config(tmp_path, ["jpeg-decode"]))
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] is False and result["failed"] == ["jpeg-decode"]
    assert "nvjpeg says no" in result["checks"]["jpeg-decode"]["traceback"]


def test_torchrun_checks_past_the_deadline_fail_and_leave_no_process(tmp_path, capsys) -> None:
    with pytest.raises(gpu_check.GpuCheckError, match="timeout-seconds ran out"):
        bench_gpu.run(_config(tmp_path, ["stage1-steps"], timeout_seconds=1.0))
    result = json.loads(capsys.readouterr().out)
    assert result["checks"]["stage1-steps"]["ok"] is False
    assert not list((tmp_path / "work").glob("worker.json"))
    deadline = time.monotonic() + 10
    while _processes_naming(tmp_path) and time.monotonic() < deadline:  # torchrun and its worker were stopped
        time.sleep(0.2)
    assert _processes_naming(tmp_path) == []


def _processes_naming(path: Path) -> list[int]:
    """Live processes whose command line names `path` (the worker's settings carry the work directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(path).encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:  # it ended while we looked
            continue
    return found


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_a_gpu_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(gpu_check.GpuCheckError, match="sees no CUDA device.*--device cpu"):
        bench_gpu.run(_config(tmp_path, LOCAL, device="cuda"))


def test_unknown_checks_and_sizes_are_refused() -> None:
    with pytest.raises(config_io.ConfigError, match="--checks"):
        config_io.build(bench_gpu.BenchGpuConfig, {"checks": ["stage9"]})
    with pytest.raises(config_io.ConfigError, match="--sizes"):
        config_io.build(bench_gpu.BenchGpuConfig, {"sizes": "huge"})
