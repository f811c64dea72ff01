"""`avl protocol`: folds re-split from one prepared corpus, and no test-fold subject in any fold's training.

The leakage test is built on evidence, not on the manifests the protocol wrote: it records which keys the
teacher's and the student's training datasets actually yield (their `__getitem__`, with num_workers 0 so
every item is fetched in this process, attributed to the fold of the stage run under way) and reads the
keys each fold's cache holds on disk, then maps every key to its subject through the key itself
(RAVDESS `Actor_NN/...`, IEMOCAP `Ses0N..._...`).
"""

from __future__ import annotations

import contextlib
import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from test_iemocap import write_session
from test_ravdess import _clip
from typer.testing import CliRunner

from cache.store import StoreError, open_store
from pipeline import config as config_io
from pipeline import runs
from pipeline.cli import app
from pipeline.data import Crops, RandomFrames
from pipeline.datasets.base import DatasetError
from pipeline.evaluate import evaluate_teacher
from pipeline.folds import fold_entries
from pipeline.manifest import Entry, write_manifest
from stages import export_embeddings, protocol, train_student, train_teacher

TINY = {"tiny": True, "epochs": 1, "batch_size": 4, "crop_seconds": 1, "num_workers": 0, "device": "cpu",
        "teacher_options": ["frames_per_utterance=2"]}
EMOTIONS = ("01", "03", "04", "05")  # neutral, happy, sad, angry


def ravdess_subject(key: str) -> int:
    return int(key.split("/")[0].removeprefix("Actor_"))


def iemocap_subject(key: str) -> int:
    return int(key[3:5])  # "Ses02F_impro01/Ses02F_impro01_M000" → session 2


def _make_ravdess(root: Path, actors: tuple[str, ...], media: bool = True) -> Path:
    for actor in actors:
        for emotion in EMOTIONS:
            if media:
                _clip(root, "01", "01", emotion, actor)
            else:  # the adapter lists clips by name alone: empty files are enough to test the splits
                path = root / f"Actor_{actor}" / f"01-01-{emotion}-01-01-01-{actor}.mp4"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"")
    return root


@contextlib.contextmanager
def recording_training_keys():
    """{"teacher": [(fold, key)], "student": [(fold, λ, key)]}: every key the training datasets yield, with the
    fold (and λ) of the stage run it was yielded in."""
    log, running = {"teacher": [], "student": []}, {}
    teacher_run, student_run = train_teacher.run, train_student.run
    teacher_item, student_item = RandomFrames.__getitem__, Crops.__getitem__

    def fold_of(run_dir: Path) -> int:
        return int(Path(run_dir).name.removeprefix("fold-"))

    def run_teacher(cfg):
        running["teacher"] = fold_of(cfg.run_dir)
        return teacher_run(cfg)

    def run_student(cfg):
        running["student"] = (fold_of(cfg.run_dir), cfg.lam)
        return student_run(cfg)

    def teacher_getitem(self, index):
        log["teacher"].append((running["teacher"], self.keys[index]))
        return teacher_item(self, index)

    def student_getitem(self, index):
        log["student"].append((*running["student"], self.entries[index].key))
        return student_item(self, index)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_teacher, "run", run_teacher)
        patch.setattr(train_student, "run", run_student)
        patch.setattr(RandomFrames, "__getitem__", teacher_getitem)
        patch.setattr(Crops, "__getitem__", student_getitem)
        yield log


def assert_no_test_subject_in_training(run_dir: Path, dataset: str, folds: list[int], log: dict, subject_of,
                                       validation_subject_held_out: bool) -> None:
    """Per fold: teacher keys, cache keys and student keys (both λ) hold no key of the fold's test subject.

    validation_subject_held_out: the validation split is a whole subject (a RAVDESS actor), so it must not
    be trained on either; an IEMOCAP fold validates on one speaker of a session whose other speaker trains."""
    shared = open_store(runs.find_store(run_dir / "shared" / "prepare", "faces"))
    every_key = set(shared.keys)
    shared.close()
    subjects = {subject_of(key) for key in every_key}
    for fold in folds:
        test_keys = {key for key in every_key if subject_of(key) == fold}
        teacher = {key for f, key in log["teacher"] if f == fold}
        cache_reader = open_store(run_dir / f"fold-{fold}" / "embeddings" / f"{dataset}.zarr")
        cache = set(cache_reader.keys)
        cache_reader.close()
        baseline = {key for f, lam, key in log["student"] if f == fold and lam == 0}
        distilled = {key for f, lam, key in log["student"] if f == fold and lam > 0}
        assert test_keys and teacher and cache and baseline and distilled, fold  # every check below has evidence
        for what, keys in (("teacher", teacher), ("cache", cache), ("λ = 0 student", baseline),
                           ("λ > 0 student", distilled)):
            assert fold not in {subject_of(key) for key in keys}, (fold, what, sorted(keys))
        assert not test_keys & cache
        # the students and the teacher trained on the same subjects; a validation subject is in the cache
        # (exported for selection) but never trained on
        trained = {subject_of(key) for key in teacher}
        assert trained == {subject_of(key) for key in baseline} == {subject_of(key) for key in distilled}
        assert trained <= subjects - {fold}
        if validation_subject_held_out:
            assert {subject_of(key) for key in cache} - trained and trained < subjects - {fold}
        # the distilled student read this fold's own cache (stage 3 records the cache it read)
        students = [runs.read_json(path) for path in (run_dir / f"fold-{fold}" / "students").rglob("metrics.json")]
        assert {metrics["cache"] for metrics in students if metrics["lambda"] > 0} == {
            str(run_dir / f"fold-{fold}" / "embeddings" / f"{dataset}.zarr")}


@pytest.fixture(scope="module")
def ravdess_run(tmp_path_factory, one_torch_thread) -> tuple[Path, dict, dict]:
    """A 3-actor RAVDESS protocol run end to end, then run again; (run dir, first log, second log)."""
    work = tmp_path_factory.mktemp("ravdess-protocol")
    root = _make_ravdess(work / "ravdess", ("01", "02", "03"))
    settings = {key: value for key, value in TINY.items() if key != "crop_seconds"}  # RAVDESS's own: 4 s
    cfg = config_io.build(protocol.ProtocolConfig, {"dataset": "ravdess", "root": root, "run_dir": work / "run",
                                                    **settings})
    with recording_training_keys() as first:
        protocol.run(cfg)
    with recording_training_keys() as again:
        protocol.run(cfg)
    return work / "run", first, again


def test_ravdess_leave_one_actor_out_never_trains_on_the_test_actor(ravdess_run):
    run_dir, log, _ = ravdess_run
    assert_no_test_subject_in_training(run_dir, "ravdess", [1, 2, 3], log, ravdess_subject, True)


def test_ravdess_report_and_resume(ravdess_run):
    run_dir, _, again = ravdess_run
    assert again == {"teacher": [], "student": []}  # a finished protocol retrains nothing
    report = (run_dir / "protocol" / "report.md").read_text()
    assert "Folds finished: 3 of 3" in report and "| 2 | Actor_02 | Actor_03 |" in report
    assert "| WA (top-1) |" in report and "| UA |" in report and "accuracy_vs_lambda.png" in report
    with open(run_dir / "protocol" / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted((row["fold"], row["lambda"]) for row in rows) == [(f, lam) for f in "123" for lam in ("0.0", "0.4")]
    assert {row["test_keys_in_cache"] for row in rows} == {"0"}
    summary = runs.read_json(run_dir / "protocol" / "summary.json")
    assert summary["lambda_with_distillation"] == 0.4 and summary["mean_over_folds"]["with_ua"]["n"] == 3
    # the teacher's UA is its own (per-class recall averaged), reported beside the students' UA
    teachers = [runs.read_json(run_dir / f"fold-{fold}" / "teacher" / "metrics.json")["test"] for fold in (1, 2, 3)]
    assert all(0 <= t["utterance_ua"] <= 1 and 0 <= t["frame_ua"] <= 1 for t in teachers)
    assert summary["mean_over_folds"]["teacher_ua"]["mean"] == pytest.approx(
        sum(t["utterance_ua"] for t in teachers) / 3)
    assert "video teacher (UA)" in report and {row["teacher_ua"] for row in rows} != {""}
    # no crop given: every student trained on RAVDESS's 4 s crops (the paper's), and its config says so
    assert "4 s crops" in report and summary["config"]["crop_seconds"] == 4
    assert {runs.read_json(path)["crop_seconds"] for path in run_dir.glob("fold-*/students/**/metrics.json")} == {4}
    assert [fold["cache"]["cache_splits"] for fold in summary["per_fold"]] == [["train", "val"]] * 3
    # folds share the decoded stores: links, not copies
    assert (run_dir / "fold-2" / "prepare" / "faces.zarr").resolve() == (run_dir / "shared/prepare/faces.zarr").resolve()


def test_a_cache_with_test_targets_is_refused(ravdess_run, tmp_path):
    """The guard that runs after every export: a cache holding a test-fold key stops the fold."""
    run_dir = ravdess_run[0]
    leaky = export_embeddings.run(config_io.build(export_embeddings.ExportConfig, {
        "run_dir": run_dir / "fold-1", "dataset": "ravdess", "out": tmp_path / "leaky.zarr",
        "splits": ["train", "val", "test"], "num_workers": 0, "device": "cpu"}))
    with pytest.raises(StoreError, match="holds 4 test-fold utterances .* would leak the test fold"):
        protocol.check_cache(leaky, run_dir / "fold-1" / "prepare")


def test_iemocap_by_session_through_the_cli(tmp_path, one_torch_thread):
    root = tmp_path / "IEMOCAP_full_release"
    for session in (1, 2, 3):
        write_session(root, session)
    run_dir = tmp_path / "run"
    with recording_training_keys() as log:
        result = CliRunner().invoke(app, [
            "protocol", "--dataset", "iemocap", "--root", str(root), "--run-dir", str(run_dir), "--folds", "all",
            "--tiny", "--epochs", "1", "--batch-size", "4", "--crop-seconds", "1", "--teacher-set",
            "frames_per_utterance=2", "--num-workers", "0", "--device", "cpu"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert_no_test_subject_in_training(run_dir, "iemocap", [1, 2, 3], log, iemocap_subject, False)
    assert "leave-one-session-out" in (run_dir / "protocol" / "report.md").read_text()


def test_fold_manifest_puts_every_utterance_of_the_test_subject_in_test(tmp_path):
    ravdess = _make_ravdess(tmp_path / "ravdess", ("01", "02", "03", "05"), media=False)
    iemocap = tmp_path / "iemocap"
    for session in (1, 2):
        write_session(iemocap, session)
    for dataset, root, subject_of in (("ravdess", ravdess, ravdess_subject), ("iemocap", iemocap, iemocap_subject)):
        cfg = config_io.build(protocol.ProtocolConfig, {"dataset": dataset, "root": root})
        adapter = protocol.open_adapter(cfg, None)
        shared = [Entry(u.key, u.label, "train", 25, 1.0, "") for u in adapter.utterances()]
        folds = adapter.folds()
        assert folds == ([1, 2, 3, 5] if dataset == "ravdess" else [1, 2])
        for fold in folds:
            entries = fold_entries(shared, protocol.open_adapter(cfg, fold))
            assert [e.key for e in entries] == [e.key for e in shared]
            by_subject = {e.split for e in entries if subject_of(e.key) == fold}
            assert by_subject == {"test"}, (dataset, fold)
            assert all(subject_of(e.key) == fold for e in entries if e.split == "test")
            assert {e.split for e in entries if subject_of(e.key) != fold} <= {"train", "val"}
    with pytest.raises(config_io.ConfigError, match=r"has no fold\(s\) \[4\].*folds present: \[1, 2, 3, 5\]"):
        protocol.resolve_folds(config_io.build(protocol.ProtocolConfig, {"root": ravdess, "folds": [1, 4]}))


def test_a_fold_without_a_validation_subject_is_refused(tmp_path):
    root = _make_ravdess(tmp_path / "ravdess", ("01", "02"), media=False)
    shared = tmp_path / "shared"
    shared.mkdir()
    keys = [u.key for u in protocol.open_adapter(protocol.ProtocolConfig(root=root), None).utterances()]
    write_manifest(shared, [Entry(key, "neutral", "train", 25, 1.0, "") for key in keys], ["neutral"], [])
    cfg = config_io.build(protocol.ProtocolConfig, {"root": root, "run_dir": tmp_path / "run"})
    with pytest.raises(DatasetError, match="fold 1 has no val utterances.*at least 3 actors"):
        protocol.write_fold_prepare(cfg, 1, shared)


def test_config_errors_name_the_problem(tmp_path):
    for bad, message in ((dict(dataset="voxceleb"), "subject folds"), (dict(root=None), "'root'"),
                         (dict(lambdas=[0.4, 0.4]), "repeated"), (dict(lambdas=[1.5]), r"\[0, 1\]"),
                         (dict(student_options=["lam=0.1"]), r"student_options may not set \['lam'\]"),
                         (dict(student_options=["expect_teacher='x'"]), "may not set"),
                         (dict(teacher_options=["epochs=3"]), r"teacher_options may not set \['epochs'\]"),
                         (dict(prepare_options=["fold=2"]), r"prepare_options may not set \['fold'\]")):
        with pytest.raises(config_io.ConfigError, match=message):
            config_io.build(protocol.ProtocolConfig, {"root": tmp_path, **bad})
    cfg = config_io.build(protocol.ProtocolConfig, {"root": tmp_path, "lambdas": [0.6, 0.2]})
    assert cfg.student_lambdas == (0.0, 0.6, 0.2) and cfg.resolved_run_dir == Path("runs/ravdess-protocol")
    assert protocol.teacher_config(cfg, 3).run_dir == Path("runs/ravdess-protocol/fold-3")
    sequential = config_io.build(protocol.ProtocolConfig, {"root": tmp_path, "level": "encoder", "crop_seconds": 3})
    teacher = protocol.teacher_config(sequential, 1)
    assert teacher.sequential and teacher.window_seconds == 3  # the cache's windows are the student's crops


class _OneHotTeacher(torch.nn.Module):
    """A teacher whose frames are their own logits: what each frame predicts is written in it."""

    aggregator = None

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return frames, frames


class _Frames:
    def __init__(self, frames: dict[str, np.ndarray]):
        self.frames = frames

    def read_tensor(self, key: str) -> torch.Tensor:
        return torch.from_numpy(self.frames[key])


def test_teacher_ua_is_the_mean_recall_over_classes():
    one_hot = np.eye(2, dtype=np.float32)
    # class 0: three utterances, every frame right; class 1: one utterance, one of its two frames right
    frames = {"a": one_hot[[0, 0]], "b": one_hot[[0, 0]], "c": one_hot[[0, 0]], "d": one_hot[[0, 0, 1]]}
    metrics = evaluate_teacher(_OneHotTeacher(), _Frames(frames), list(frames), [0, 0, 0, 1], "cpu")
    assert metrics["utterance_accuracy"] == 3 / 4 and metrics["utterance_ua"] == (1 + 0) / 2
    assert metrics["frame_accuracy"] == 7 / 9 and metrics["frame_ua"] == pytest.approx((1 + 1 / 3) / 2)
