"""`avl sweep`: grid, reuse of finished cells, resume of unfinished ones, config checks, and the report."""

import csv
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline import config as config_io
from pipeline import runs
from pipeline.cells import cell_dir, grid
from stages import sweep, train_student


def _config(run_dir: Path, **values) -> sweep.SweepConfig:
    base = {"run_dir": run_dir, "name": "t", "lambdas": [0.0, 0.5], "methods": ["proposed"], "archs": ["resnet"],
            "seeds": [0, 1], "tiny": True, "epochs": 1, "batch_size": 4, "crop_seconds": 1, "num_workers": 0,
            "device": "cpu"}
    return config_io.build(sweep.SweepConfig, {**base, **values}, source="test")


def test_grid_trains_lambda_zero_once_per_arch_and_seed():
    cfg = sweep.SweepConfig(lambdas=(0.0, 0.4, 1.0), methods=("proposed", "other"), archs=("resnet",), seeds=(0, 1))
    cells = grid(cfg)
    assert [c.cell_id for c in cells[:5]] == [
        "none-resnet-lambda0-seed0", "proposed-resnet-lambda0.4-seed0", "proposed-resnet-lambda1-seed0",
        "other-resnet-lambda0.4-seed0", "other-resnet-lambda1-seed0"]
    assert len(cells) == 2 + 2 * 2 * 2 and len(set(cells)) == len(cells)


def test_levels_axis_names_cells_only_when_not_the_default():
    default = sweep.SweepConfig(lambdas=(0.0, 0.4), seeds=(0,))
    assert [c.cell_id for c in grid(default)] == ["none-resnet-lambda0-seed0", "proposed-resnet-lambda0.4-seed0"]
    cfg = sweep.SweepConfig(lambdas=(0.0, 0.4), levels=("non-sequential", "encoder"), seeds=(0,))
    assert [c.cell_id for c in grid(cfg)] == [
        "none-resnet-lambda0-seed0", "proposed-resnet-lambda0.4-seed0",  # the names a one-level sweep gives
        "none-resnet-encoder-lambda0-seed0", "proposed-resnet-encoder-lambda0.4-seed0"]
    assert sweep.cell_config(cfg, grid(cfg)[3]).level == "encoder"
    assert not default.shows_level and cfg.shows_level


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(config_io.ConfigError, match="λ must lie in"):
        _config(tmp_path, lambdas=[0.0, 1.5])
    with pytest.raises(config_io.ConfigError, match="repeated"):
        _config(tmp_path, seeds=[0, 0])
    with pytest.raises(config_io.ConfigError, match="levels has repeated values"):
        _config(tmp_path, levels=["encoder", "encoder"])
    with pytest.raises(config_io.ConfigError, match="may not set \\['level'\\]"):
        _config(tmp_path, student_options=["level='encoder'"])
    with pytest.raises(config_io.ConfigError, match="may not set \\['lam'\\]"):
        _config(tmp_path, student_options=["lam=0.3"])
    with pytest.raises(config_io.ConfigError, match="not key=value"):
        _config(tmp_path, student_options=["lr_max"])
    assert config_io.parse_options(("lr_max = 2e-3", "distance=cosine", "target='utterance-peak'")) == {
        "lr_max": 2e-3, "distance": "cosine", "target": "utterance-peak"}
    # Unknown methods, architectures and keys are stage 3's to reject, before any cell trains.
    for bad, message in ((dict(methods=["nope"]), "unknown method"), (dict(archs=["nope"]), "unknown arch"),
                         (dict(levels=["nope"]), "unknown level"),
                         (dict(student_options=["lr_maxx=1"]), "lr_maxx")):
        cfg = _config(tmp_path, **bad)
        with pytest.raises(config_io.ConfigError, match=message):
            sweep.run(cfg)


def test_finished_cells_are_skipped_and_unfinished_ones_resumed(tmp_path, monkeypatch):
    """Stage 3 replaced by a recorder: which cells are trained, and with resume or not."""
    run_dir = tmp_path / "run"
    (run_dir / "prepare").mkdir(parents=True)
    (run_dir / "prepare" / "manifest.tsv").write_text("key\tlabel\tsplit\tn_video_frames\tseconds\tsource\n")
    cfg = _config(run_dir)
    cells = grid(cfg)  # seed 0: λ 0, 0.5; seed 1: λ 0, 0.5
    finished, unfinished = cell_dir(cfg, cells[0]), cell_dir(cfg, cells[2])
    finished.mkdir(parents=True)
    config_io.save(sweep.cell_config(cfg, cells[0]), finished / "config.toml")
    runs.write_json(finished / "metrics.json", {"identification": {"top1": 0.5}, "history": [{"val_accuracy": 0.4}]})
    unfinished.mkdir(parents=True)
    (unfinished / "last.pt").write_bytes(b"")

    calls = []

    def fake_run(student_cfg: train_student.StudentConfig) -> Path:
        calls.append((f"{student_cfg.sweep}/{student_cfg.name}", student_cfg.resume))
        out = student_cfg.out_dir
        config_io.save(student_cfg, out / "config.toml")
        runs.write_json(out / "metrics.json", {"identification": {"top1": 0.6 + student_cfg.lam / 10},
                                               "verification": {"eer": 0.3, "min_dcf": 0.9},
                                               "history": [{"val_accuracy": 0.5}], "teacher_fingerprint": "abc"})
        return out

    monkeypatch.setattr(train_student, "run", fake_run)
    sweep.run(cfg)
    assert calls == [("t/proposed-resnet-lambda0.5-seed0", False), ("t/none-resnet-lambda0-seed1", True),
                     ("t/proposed-resnet-lambda0.5-seed1", False)]
    calls.clear()
    sweep.run(cfg)  # everything finished: nothing retrains
    assert calls == []

    report = (run_dir / "sweeps" / "t" / "report.md").read_text()
    assert "no validation split" in report  # the empty manifest has none: the report says λ was picked on test
    assert "| resnet | proposed | 0.5 | 2 |" in report
    with pytest.raises(config_io.ConfigError, match=r"other settings \(\['epochs'\]\)"):
        sweep.run(replace(cfg, epochs=3))  # a finished cell is never reused with different settings


def _fake_stage_3(calls: list):
    """A stand-in for stage 3 that records the cell and writes metrics that depend on λ and the level."""
    def fake_run(student_cfg: train_student.StudentConfig) -> Path:
        calls.append((f"{student_cfg.sweep}/{student_cfg.name}", student_cfg.level, student_cfg.resume))
        out = student_cfg.out_dir
        config_io.save(student_cfg, out / "config.toml")
        top1 = 0.6 + student_cfg.lam / 10 + (0.05 if student_cfg.level == "encoder" else 0.0)
        runs.write_json(out / "metrics.json", {"identification": {"top1": top1, "ua": top1 - 0.1},
                                               "history": [{"val_accuracy": 0.5}], "parameters": 10})
        return out
    return fake_run


def test_report_has_one_line_per_method_and_level(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    (run_dir / "prepare").mkdir(parents=True)
    (run_dir / "prepare" / "manifest.tsv").write_text("key\tlabel\tsplit\tn_video_frames\tseconds\tsource\n")
    calls = []
    monkeypatch.setattr(train_student, "run", _fake_stage_3(calls))
    cfg = _config(run_dir, name="levels", levels=["non-sequential", "encoder"], seeds=[0])
    out = sweep.run(cfg)
    assert [(name, level) for name, level, _ in calls] == [
        ("levels/none-resnet-lambda0-seed0", "non-sequential"),
        ("levels/proposed-resnet-lambda0.5-seed0", "non-sequential"),
        ("levels/none-resnet-encoder-lambda0-seed0", "encoder"),
        ("levels/proposed-resnet-encoder-lambda0.5-seed0", "encoder")]
    report = (out / "report.md").read_text()
    assert "| student | level | method | λ | seeds |" in report
    assert "| resnet | non-sequential | proposed | 0.5 | 1 | 65.0 | +8.3% | 55.0 | +10.0% | 50.0 |" in report
    assert "| resnet | encoder | proposed | 0 | 1 | 65.0 | — | 55.0 | — | 50.0 |" in report  # its own λ = 0
    assert "| resnet | encoder | proposed | — | 65.0 | 70.0 | 0.5 | +7.7% |" in report  # paper-shaped table
    with open(out / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["level"], r["lambda"]) for r in rows} == {(level, lam) for level in ("non-sequential", "encoder")
                                                         for lam in ("0.0", "0.5")}
    summary = runs.read_json(out / "summary.json")
    assert sorted((c["level"], c["lambda"]) for c in summary["cells"]) == [
        ("encoder", 0.0), ("encoder", 0.5), ("non-sequential", 0.0), ("non-sequential", 0.5)]
    assert (out / "top1_vs_lambda_resnet.png").stat().st_size > 1000


@pytest.mark.slow
def test_real_sweep_on_the_tiny_run(tiny_run):
    """Four real stage-3 runs (λ 0 and 0.5, two seeds) with a teacher cache; report, CSV and plots."""
    from stages import export_embeddings

    run_dir = tiny_run / "run"
    export_embeddings.run(config_io.build(export_embeddings.ExportConfig, {
        "run_dir": run_dir, "device": "cpu", "num_workers": 0}))
    cfg = _config(run_dir, name="real")
    out = sweep.run(cfg)
    with open(out / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["cell"] for r in rows) == sorted(c.cell_id for c in grid(cfg))
    assert all(0.0 <= float(r["top1"]) <= 1.0 for r in rows)
    report = (out / "report.md").read_text()
    assert "## Students without and with distillation" in report and "video teacher" in report
    assert (out / "top1_vs_lambda_resnet.png").stat().st_size > 1000
    assert "![top1_vs_lambda_resnet](top1_vs_lambda_resnet.png)" in report
    summary = runs.read_json(out / "summary.json")
    assert {c["lambda"] for c in summary["cells"]} == {0.0, 0.5}
    assert all(c["top1"]["n"] == 2 for c in summary["cells"])
