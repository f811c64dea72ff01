"""`avl benchmark`: spec checks, paired intervals and verdicts, and a whole tiny benchmark run (two corpora, a
temperature choice, a control) that a second invocation finishes without retraining anything."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace

import pytest
import torch

from pipeline.config import ConfigError
from pipeline.errors import UserError
from pipeline.evidence import spec as spec_io
from pipeline.evidence.claims import better, no_harm
from pipeline.evidence.stats import Paired, format_paired, paired, t975
from stages import benchmark

_SYNTH = {"speakers": 3, "verification_speakers": 2, "utterances": 8, "videos_per_speaker": 4, "min_seconds": 1.2,
          "max_seconds": 2.0, "frame_size": 48, "trials": 8, "test_share": 0.25, "val_share": 0.25}
_TEACHER = {"tiny": True, "epochs": 1, "batch_size": 4, "frames_per_utterance": 2}
TINY_SPEC = {
    "seeds": [0, 1], "arch": "resnet", "tiny": True, "epochs": 1, "batch_size": 4, "crop_seconds": 1,
    "student": {"lr_max": 2e-3},
    "corpora": {
        "correlated": {"synth": {"preset": "correlated", **_SYNTH}, "prepare": {"faces": "boxes", "split": "official"},
                       "teacher": _TEACHER},
        "null": {"synth": {"preset": "null", **_SYNTH}, "prepare": {"faces": "boxes", "split": "official"},
                 "teacher": _TEACHER},
        "emotion": {"synth": {"preset": "emotion", "speakers": 3, "utterances": 8, "videos_per_speaker": 2,
                              "min_seconds": 1.2, "max_seconds": 2.0, "frame_size": 48}},
        "correlated-audio": {"corpus_of": "correlated",
                             "prepare": {"faces": "boxes", "split": "official", "waveforms": True},
                             "teacher": {"arch": "audio-resnet", "tiny": True, "epochs": 1, "batch_size": 4}},
    },
    "studies": [
        {"name": "temperature", "role": "temperature", "corpus": "correlated", "methods": ["soft-label"],
         "lambdas": [0.5], "temperatures": [1.0, 4.0], "seeds": [100, 101]},
        {"name": "main", "role": "main", "corpus": "correlated", "methods": ["proposed", "soft-label"],
         "lambdas": [0.0, 0.5, 1.0], "temperature_from": "temperature"},
        {"name": "control-shuffled", "role": "control", "corpus": "correlated", "methods": ["proposed"],
         "lambdas": [0.5], "options": {"control": "shuffled"}, "baseline": "main"},
        {"name": "null", "role": "null", "corpus": "null", "methods": ["proposed"], "lambdas": [0.0, 0.5]},
        {"name": "emotion", "role": "emotion", "corpus": "emotion", "methods": ["proposed"], "lambdas": [0.0, 0.5],
         "protocol": {"folds": [1, 2], "teacher_epochs": 1, "prepare_options": ["faces='boxes'"]}},
        {"name": "multi", "role": "multi-teacher", "corpus": "correlated-audio", "options": {"degrade": "noise=10"},
         "conditions": {"none": [], "video": [{"teacher": "correlated", "lam": 0.5}],
                        "both": [{"teacher": "correlated", "lam": 0.25, "layer": "trunk.stages.2"},
                                 {"teacher": "correlated-audio", "lam": 0.25}]}},
    ],
}


def test_paired_interval_matches_a_hand_computation():
    treatment, reference = {0: 0.50, 1: 0.60, 2: 0.55}, {0: 0.40, 1: 0.45, 2: 0.50, 3: 0.9}
    result = paired(treatment, reference)  # seed 3 has no pair and is left out
    differences = [0.10, 0.15, 0.05]
    mean = sum(differences) / 3
    std = math.sqrt(sum((d - mean) ** 2 for d in differences) / 2)
    assert result.seeds == (0, 1, 2) and result.n == 3
    assert result.mean == pytest.approx(mean)
    assert result.high - result.mean == pytest.approx(4.303 * std / math.sqrt(3))
    assert paired({0: 1.0}, {0: 0.0}) is None  # one pair has no interval
    assert t975(4) == 2.776 and t975(100) == 1.96
    assert format_paired(result) == f"{100 * mean:+.1f} [{100 * result.low:+.1f}, {100 * result.high:+.1f}] (n=3)"


def test_verdicts_follow_the_interval():
    assert better(Paired(0.05, 0.01, 0.09, 5, (0,))) == "reproduced"
    assert better(Paired(-0.05, -0.09, -0.01, 5, (0,))) == "not reproduced"
    assert better(Paired(0.01, -0.02, 0.04, 5, (0,))) == "inconclusive"
    assert better(None) == "not measured yet"
    assert no_harm(Paired(0.0, -0.02, 0.02, 5, (0,))) == "reproduced"
    assert no_harm(Paired(0.0, -0.08, 0.08, 5, (0,))) == "inconclusive"  # too wide to rule out a harm
    assert no_harm(Paired(-0.05, -0.08, -0.01, 5, (0,))) == "not reproduced"


def test_spec_errors_name_the_study_and_the_problem():
    default = spec_io.load(None)
    assert {s.role for s in default.studies} >= {"main", "control", "null", "weak-teacher", "temperature"}
    assert default.study("main").lambdas == spec_io.FULL_GRID and len(default.seeds) >= 5
    bad_control = {**TINY_SPEC, "studies": [TINY_SPEC["studies"][1] | {"temperature_from": None},
                                            {**TINY_SPEC["studies"][2], "lambdas": [0.0, 0.5]}]}
    with pytest.raises(ConfigError, match="study control-shuffled: a control study has options.control and no λ = 0"):
        spec_io.parse(bad_control)
    with pytest.raises(ConfigError, match="corpus 'nope' is not among"):
        spec_io.parse({**TINY_SPEC, "studies": [{**TINY_SPEC["studies"][3], "corpus": "nope"}]})
    with pytest.raises(ConfigError, match="unknown keys \\['lamdas'\\]"):
        spec_io.parse({**TINY_SPEC, "studies": [{**TINY_SPEC["studies"][3], "lamdas": [0.1]}]})
    with pytest.raises(ConfigError, match="an emotion study runs `avl protocol`"):
        spec_io.parse({**TINY_SPEC, "studies": [{**TINY_SPEC["studies"][3], "corpus": "emotion"}]})
    with pytest.raises(ConfigError, match="temperature_from 'temperature' must name an earlier study"):
        spec_io.parse({**TINY_SPEC, "studies": TINY_SPEC["studies"][1:]})
    multi = TINY_SPEC["studies"][-1]
    for conditions, said in (({"none": [], "x": [{"teacher": "nope", "lam": 0.5}]}, "not a corpus entry"),
                             ({"none": [], "x": [{"teacher": "correlated", "lam": 0.7},
                                                 {"teacher": "correlated", "lam": 0.7}]}, "Σλ_i"),
                             ({"x": [{"teacher": "correlated", "lam": 0.5}]}, "exactly one condition"),
                             ({"none": [], "x": [{"teacher": "correlated", "lambda": 0.5}]}, "unknown"),
                             ({"none": [], "x": [{"teacher": "null", "lam": 0.5}]}, "same corpus")):
        with pytest.raises(ConfigError, match=said):
            spec_io.parse({**TINY_SPEC, "studies": [{**multi, "conditions": conditions}]})
    with pytest.raises(ConfigError, match="waveforms"):
        spec_io.parse({**TINY_SPEC, "studies": [{**multi, "corpus": "correlated"}]})


def test_a_bad_stage_setting_fails_before_anything_trains(tmp_path):
    document = json.loads(json.dumps(TINY_SPEC))
    document["student"]["lr_maxx"] = 1.0
    path = tmp_path / "spec.toml"
    import tomli_w
    path.write_text(tomli_w.dumps(document))
    with pytest.raises(ConfigError, match="lr_maxx"):
        benchmark.run(benchmark.BenchmarkConfig(spec=path, work=tmp_path / "work", out=tmp_path / "out",
                                                device="cpu"))
    assert not (tmp_path / "work" / "correlated").exists()


@pytest.mark.slow
def test_tiny_benchmark_runs_reports_and_resumes(tmp_path, one_torch_thread, capsys):
    import tomli_w
    path = tmp_path / "spec.toml"
    path.write_text(tomli_w.dumps(TINY_SPEC))
    cfg = benchmark.BenchmarkConfig(spec=path, work=tmp_path / "work", out=tmp_path / "out", device="cpu")
    threads = torch.get_num_threads()
    benchmark.run(cfg)
    assert torch.get_num_threads() == threads  # the session's setting is left as it was (later tests compare bits)
    report = (tmp_path / "out" / "report.md").read_text()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["temperatures"]["temperature"] in (1.0, 4.0)
    assert "have not finished" not in report  # every cell trained
    for heading in ("Verdicts", "Table 4 shape", "Table 5 shape", "Table 6 shape", "Controls", "Null corpus"):
        assert heading in report, heading
    assert (tmp_path / "out" / "main_top1_vs_lambda.png").stat().st_size > 0
    claims = {v["claim"]: v["verdict"] for v in summary["verdicts"]}
    assert any("Null corpus" in claim for claim in claims) and any("shuffled" in claim for claim in claims)
    assert set(claims.values()) <= {"reproduced", "not reproduced", "inconclusive"}
    rows = (tmp_path / "out" / "results.csv").read_text().splitlines()
    # temperature, main, control, null, emotion (2 folds), multi-teacher (3 conditions)
    assert len(rows) == 1 + 4 + 2 * 5 + 2 + 2 * 2 + 2 * 2 + 3 * 2
    assert sorted(r.split(",")[7] for r in rows if r.startswith("emotion,")) == ["1", "1", "2", "2"]  # fold = seed
    assert sorted(r.split(",")[1] for r in rows if r.startswith("multi,")) == ["both"] * 2 + ["none"] * 2 + ["video"] * 2
    assert "Several teachers and layers" in report and "0.25·correlated [trunk.stages.2]" in report
    multi_metrics = json.loads(next((tmp_path / "work" / "correlated-audio" / "run" / "students" / "multi-both")
                                    .glob("*/metrics.json")).read_text())
    assert multi_metrics["degrade"]["steps"] == "noise=10" and len(multi_metrics["distil"]["targets"]) == 2
    assert any("Emotion" in claim for claim in claims)
    assert (tmp_path / "out" / "emotion_ua_vs_lambda.png").exists()

    capsys.readouterr()
    benchmark.run(cfg)  # everything finished: reused, nothing retrained
    out = capsys.readouterr().out + capsys.readouterr().err
    assert "0 cells trained this time" in out and "training the teacher" not in out
    assert (tmp_path / "out" / "benchmark.toml").read_text().startswith("# The spec this report was made from")

    # The work directory gone (a fresh host): every study is taken from the earlier report, unchanged ...
    earlier = tmp_path / "earlier"
    shutil.copytree(tmp_path / "out", earlier)
    again = replace(cfg, work=tmp_path / "empty", out=tmp_path / "again", report_only=True, reported=earlier)
    benchmark.run(again)
    assert (tmp_path / "again" / "results.csv").read_text() == (earlier / "results.csv").read_text()
    retold = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert retold["verdicts"] == summary["verdicts"] and retold["teachers"] == summary["teachers"]
    assert retold["temperatures"] == summary["temperatures"] and set(retold["reported_from"]) == {
        study["name"] for study in TINY_SPEC["studies"]}
    assert "taken from the earlier report" in (tmp_path / "again" / "report.md").read_text()
    # ... but a study defined otherwise now (another λ grid for the null corpus) is not: it has to train again
    changed = json.loads(json.dumps(TINY_SPEC))
    changed["studies"][3]["lambdas"] = [0.0, 0.25]
    path.write_text(tomli_w.dumps(changed))
    benchmark.run(again)
    retold = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert "null" not in retold["reported_from"] and "main" in retold["reported_from"]
    assert "have not finished" in (tmp_path / "again" / "report.md").read_text()
    # a damaged table is refused by file and line
    # a damaged or mismatched earlier report is refused by file (and line)
    table = (earlier / "results.csv").read_text()
    header, first, *rest = table.splitlines()
    fields = first.split(",")
    fields[7] = "one hundred"  # the seed
    (earlier / "results.csv").write_text("\n".join([header, ",".join(fields), *rest]) + "\n")
    with pytest.raises(UserError, match=r"results.csv: not the file .*summary.json was written with"):
        benchmark.run(again)  # edited since: its digest no longer matches
    summary_path = earlier / "summary.json"
    summary_path.write_text(json.dumps({k: v for k, v in json.loads(summary_path.read_text()).items()
                                        if k != "results_sha256"}))  # a report from before the digests
    with pytest.raises(UserError, match=r"results.csv, line 2: column seed holds 'one hundred'"):
        benchmark.run(again)
    (earlier / "results.csv").write_text("\n".join([header, ",".join(fields[:5]), *rest]) + "\n")
    with pytest.raises(UserError, match=r"results.csv, line 2: not 19 fields"):
        benchmark.run(again)
    (earlier / "results.csv").write_text(table)
    (earlier / "benchmark.toml").write_text((earlier / "benchmark.toml").read_text() + "\n# edited\n")
    with pytest.raises(UserError, match=r"benchmark.toml: not the file"):
        benchmark.run(again)


def test_a_study_definition_covers_the_corpora_and_studies_it_rests_on():
    """What --reported compares: a change anywhere a study's numbers rest on changes its definition, and only its."""
    document = json.loads(json.dumps(TINY_SPEC))
    spec = spec_io.parse(document)
    changed = json.loads(json.dumps(TINY_SPEC))
    changed["studies"][0]["temperatures"] = [1.0, 2.0]  # the temperature study: main takes its T
    changed["corpora"]["correlated"]["synth"]["audio_noise"] = 0.1  # multi's corpus shares correlated's
    other = spec_io.parse(changed)
    differs = {study.name for study in spec.studies if spec.definition(study.name) != other.definition(study.name)}
    assert differs == {"temperature", "main", "control-shuffled", "multi"}  # the control rests on main's λ = 0
    changed = json.loads(json.dumps(TINY_SPEC))
    changed["epochs"] = 2  # shared student settings: every study
    other = spec_io.parse(changed)
    assert all(spec.definition(s.name) != other.definition(s.name) for s in spec.studies)


def test_a_sequential_teacher_windows_the_students_crop_and_a_failed_corpus_blocks_its_studies(tmp_path):
    document = json.loads(json.dumps(TINY_SPEC))
    document["corpora"]["sequential"] = {"corpus_of": "correlated", "prepare": {"faces": "boxes", "split": "official"},
                                         "teacher": {**_TEACHER, "sequential": True}}
    document["studies"].append({"name": "seq", "role": "sequential", "corpus": "sequential", "methods": ["proposed"],
                                "levels": ["aggregator"], "lambdas": [0.5], "baseline": "main"})
    spec = spec_io.parse(document)
    cfg = benchmark.BenchmarkConfig(work=tmp_path, device="cpu")
    assert benchmark.teacher_config(cfg, spec, "sequential").window_seconds == spec.crop_seconds == 1
    assert benchmark.teacher_config(cfg, spec, "correlated").window_seconds is None
    failed = {("corpus", "sequential"): "broken"}
    assert benchmark.blocked_by(spec, ("study", "seq"), failed) == ("corpus", "sequential")
    assert benchmark.blocked_by(spec, ("study", "main"), failed) is None
    assert benchmark.blocked_by(spec, ("study", "main"), {("study", "temperature"): "x"}) == ("study", "temperature")
