"""Settings are checked where they are declared and each error names the option; every option's TOML key is its
CLI name (older names still read); every error meant for the user prints as one line and exits 2."""

from __future__ import annotations

import pickle
from fractions import Fraction
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import tomli_w

from cache.store import StoreError, open_store
from pipeline import checkpoints, cli, runs
from pipeline import config as config_io
from pipeline.cells import check_finished_run
from pipeline.errors import UserError
from stages import prepare, sweep, train_student
from stages.train_student import StudentConfig

REPO = Path(__file__).resolve().parents[1]


def run_cli(monkeypatch, capsys, argv: list[str]) -> str:
    """`avl ARGV`, which must fail as a user error: its one line on stderr, after asserting exit 2."""
    monkeypatch.setattr(sys, "argv", ["avl", *argv])
    with pytest.raises(SystemExit) as exit:
        cli.main()
    err = capsys.readouterr().err.strip()
    assert exit.value.code == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("argv, named", [
    (["stage", "train-student", "--epochs", "0"], "--epochs"),
    (["stage", "train-student", "--epochs", "-1"], "--epochs"),
    (["stage", "train-student", "--batch-size", "0"], "--batch-size"),
    (["stage", "train-student", "--lr-max", "-1"], "--lr-max"),
    (["stage", "train-student", "--lr-min", "0"], "--lr-min"),
    (["stage", "train-student", "--lr-min", "0.01", "--lr-max", "0.001"], "--lr-min"),
    (["stage", "train-student", "--cycle-epochs", "0"], "--cycle-epochs"),
    (["stage", "train-student", "--num-workers", "-1"], "--num-workers"),
    (["stage", "train-student", "--lambda", "1.5"], "--lambda"),
    (["stage", "train-student", "--lambda", "-0.1"], "--lambda"),
    (["stage", "train-student", "--crop-seconds", "0"], "--crop-seconds"),
    (["stage", "train-student", "--temperature", "0"], "--temperature"),
    (["stage", "train-student", "--max-steps-per-epoch", "-1"], "--max-steps-per-epoch"),
    (["stage", "train-student", "--name", "../teacher"], "--name"),
    (["stage", "train-student", "--name", "/abs/path"], "--name"),
    (["stage", "train-student", "--name", ".."], "--name"),
    (["stage", "train-student", "--name", ""], "--name"),
    (["stage", "train-student", "--sweep", "a/b"], "--sweep"),
    (["stage", "train-student", "--expect-teacher", ""], "--expect-teacher"),
    (["stage", "train-student", "--expect-teacher", "a"], "--expect-teacher"),
    (["stage", "train-teacher", "--epochs", "0"], "--epochs"),
    (["stage", "train-teacher", "--batch-size", "0"], "--batch-size"),
    (["stage", "prepare", "--root", "x", "--face-size", "0"], "--face-size"),
    (["stage", "prepare", "--root", "x", "--crop-fraction", "0"], "--crop-fraction"),
    (["stage", "prepare", "--root", "x", "--num-workers", "-2"], "--num-workers"),
    (["stage", "export-embeddings", "--num-workers", "-1"], "--num-workers"),
    (["sweep", "--epochs", "0"], "--epochs"),
    (["sweep", "--batch-size", "0"], "--batch-size"),
    (["sweep", "--name", "a/b"], "--name"),
    (["sweep", "--name", ".."], "--name"),
    (["protocol", "--root", "x", "--epochs", "0"], "--epochs"),
    (["protocol", "--root", "x", "--teacher-epochs", "0"], "--teacher-epochs"),
])
def test_a_setting_out_of_range_is_one_line_naming_the_option(monkeypatch, capsys, tmp_path, argv, named):
    err = run_cli(monkeypatch, capsys, [*argv, "--run-dir", str(tmp_path)])
    assert named in err
    assert not (tmp_path / "students").exists() and not (tmp_path / "prepare").exists()  # nothing was written


def test_a_multi_line_user_error_prints_as_one_line(monkeypatch, capsys):
    def refuse(cfg):
        raise UserError("bad.mp4: no audio track\n(pass --on-error skip to skip such files)")

    monkeypatch.setattr(train_student, "run", refuse)
    err = run_cli(monkeypatch, capsys, ["stage", "train-student"])
    assert err == "error: bad.mp4: no audio track (pass --on-error skip to skip such files)"


def test_a_toml_file_gets_the_same_checks_naming_the_option_and_the_file(tmp_path):
    toml = tmp_path / "student.toml"
    toml.write_text("epochs = 0\n")
    with pytest.raises(config_io.ConfigError, match=rf"--epochs must be at least 1, got 0 \(in {toml}\)"):
        config_io.load(StudentConfig, toml)


def test_every_toml_key_is_the_option_name_and_older_names_still_read(tmp_path):
    toml = tmp_path / "student.toml"
    toml.write_text("lambda = 0.3\nbatch-size = 8\n")
    assert (config_io.load(StudentConfig, toml).lam, config_io.load(StudentConfig, toml).batch_size) == (0.3, 8)
    toml.write_text("lam = 0.3\n")  # the name config.toml files were written with before
    assert config_io.load(StudentConfig, toml).lam == 0.3
    toml.write_text("lam = 0.3\nlambda = 0.5\n")
    with pytest.raises(config_io.ConfigError, match="'lam' and 'lambda' both set --lambda"):
        config_io.load(StudentConfig, toml)
    saved = tomllib.loads(config_io.save(config_io.build(StudentConfig, {"lam": 0.6}), tmp_path / "c.toml").read_text())
    assert saved["lambda"] == 0.6 and "lam" not in saved
    swept = config_io.to_dict(sweep.SweepConfig(student_options=("lr_max=2e-3",)))
    assert swept["set"] == ["lr_max=2e-3"] and "student_options" not in swept
    # a file's keys given on the command line as well: the option wins, whatever name the file used
    toml.write_text("lambda = 0.3\n")
    assert config_io.load(StudentConfig, toml, {"lam": 0.7}).lam == 0.7
    with pytest.raises(config_io.ConfigError, match=r"known keys: \[.*'lambda'"):
        config_io.build(StudentConfig, {"lamda": 0.1})


def test_a_sweep_cell_saved_before_the_renames_is_still_reused(tmp_path):
    """A finished cell's config.toml written with `lam` and name = "SWEEP/CELL" matches the cell it is now."""
    cfg = sweep.SweepConfig(run_dir=tmp_path, name="old", lambdas=(0.5,), seeds=(0,), tiny=True, epochs=1,
                            crop_seconds=1, num_workers=0, device="cpu")
    (cell,) = sweep.grid(cfg)
    expected = sweep.cell_config(cfg, cell)
    now = config_io.to_dict(expected)
    older = {("lam" if key == "lambda" else key): value for key, value in now.items()
             if key not in ("sweep", "accept_foreign_cache")}
    older["name"] = f"old/{cell.cell_id}"
    out = tmp_path / "cell"
    out.mkdir()
    (out / "config.toml").write_text(tomli_w.dumps(older))
    check_finished_run(out, expected, "remedy")  # no ConfigError: the same settings
    assert config_io.load_saved(StudentConfig, out / "config.toml") == expected
    with pytest.raises(config_io.ConfigError, match=r"\['lambda'\]"):
        check_finished_run(out, config_io.build(StudentConfig, {**config_io.to_dict(expected), "lambda": 0.6}), "r")


def test_sweep_and_protocol_options_are_checked_by_the_name_they_are_given(tmp_path):
    for key in ("lam", "lambda", "batch-size"):
        with pytest.raises(config_io.ConfigError, match=f"may not set \\['{key}'\\]"):
            config_io.build(sweep.SweepConfig, {"student_options": [f"{key}=1"]})


def test_a_raw_pickle_given_as_a_checkpoint_is_one_line(monkeypatch, capsys, tmp_path):
    raw = tmp_path / "student.pt"
    raw.write_bytes(pickle.dumps({"spec": Fraction(1, 3)}, protocol=2))  # an arbitrary object: weights_only refuses it
    with pytest.raises(checkpoints.CheckpointError, match="not a readable student checkpoint"):
        checkpoints.load_student(raw)
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"")
    assert "student.pt" in run_cli(monkeypatch, capsys, ["predict", str(raw), str(audio)])
    (tmp_path / "garbage.pt").write_bytes(b"\x00garbage")
    with pytest.raises(checkpoints.CheckpointError):
        checkpoints.load_teacher(tmp_path / "garbage.pt")


def test_a_damaged_epoch_checkpoint_is_a_user_error(tmp_path):
    from pipeline.training import TrainingStateError, claim_output_dir

    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingStateError, match="not a readable epoch checkpoint"):
        claim_output_dir(tmp_path, resume=False, overwrite=False)


HOLD_H5 = """
import sys
from cache.store import create_store
from cache.schema import spectrogram_fields
writer = create_store(sys.argv[1], spectrogram_fields(4), {"kind": "test"}, backend="hdf5")
print("open", flush=True)
sys.stdin.read()
"""


def test_an_hdf5_file_another_process_writes_is_one_line(monkeypatch, capsys, tmp_path):
    path = tmp_path / "store.h5"
    writer = subprocess.Popen([sys.executable, "-c", HOLD_H5, str(path)], cwd=REPO, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "open"
        with pytest.raises(StoreError, match="holds its file lock"):
            open_store(path, require_complete=False)
        assert str(path) in run_cli(monkeypatch, capsys, ["cache", "info", str(path)])
    finally:
        writer.kill()
        writer.wait()


@pytest.mark.slow
def test_a_changed_root_on_a_resumed_prepare_is_one_line(tiny_run, monkeypatch, capsys, tmp_path):
    shutil.copytree(tiny_run / "run" / "prepare", tmp_path / "run" / "prepare", symlinks=True)
    shutil.copytree(tiny_run / "corpus", tmp_path / "moved")
    err = run_cli(monkeypatch, capsys, ["stage", "prepare", "--root", str(tmp_path / "moved"), "--run-dir",
                                        str(tmp_path / "run"), "--num-workers", "0"])
    assert "dataset_root" in err and "--overwrite" in err


@pytest.mark.slow
def test_dataset_json_says_what_prepare_left_out_and_why(tiny_run, tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(tiny_run / "corpus", corpus)
    split = corpus / "iden_split.txt"
    lines = split.read_text().splitlines()
    split.write_text("\n".join(lines[1:]) + "\n")  # one utterance in no split (and in no trial)
    broken = sorted((corpus / "mp4").rglob("*.mp4"))[-1]
    broken.write_bytes(broken.read_bytes()[:200])  # one unreadable file
    out = prepare.run(config_io.build(prepare.PrepareConfig, {
        "root": corpus, "run_dir": tmp_path / "run", "num_workers": 0, "on_error": "skip"}))
    summary = runs.read_json(out / "dataset.json")
    assert summary["manifest"]["dropped"] == {"in_no_split_and_no_trial": 1, "unreadable_media": 1}
    assert summary["manifest"]["utterances"] == summary["counts"]["utterances"] - 2 == 16


def test_user_errors_share_one_base():
    from cache.locks import LockedError
    from pipeline.training import TrainingStateError

    for error in (config_io.ConfigError, checkpoints.CheckpointError, StoreError, LockedError, TrainingStateError):
        assert issubclass(error, UserError)
