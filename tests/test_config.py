"""Configs: unknown keys and wrong types fail loudly and name the key; resolved configs round-trip."""

from pathlib import Path

import pytest

from pipeline import config as config_io
from stages.train_student import StudentConfig


def test_unknown_key_names_it(tmp_path):
    toml = tmp_path / "student.toml"
    toml.write_text("lam = 0.2\nlearnig_rate = 3\n")
    with pytest.raises(config_io.ConfigError, match="learnig_rate"):
        config_io.load(StudentConfig, toml)


def test_wrong_type_names_key():
    with pytest.raises(config_io.ConfigError, match="'epochs'"):
        config_io.build(StudentConfig, {"epochs": "many"})
    with pytest.raises(config_io.ConfigError, match="'tiny'"):
        config_io.build(StudentConfig, {"tiny": 1})


def test_out_of_range_value_is_refused():
    with pytest.raises(config_io.ConfigError, match="lambda"):
        config_io.build(StudentConfig, {"lam": 1.4})


def test_int_promotes_to_float_and_cli_overrides_file(tmp_path):
    toml = tmp_path / "student.toml"
    toml.write_text("lam = 1\nepochs = 3\nrun_dir = 'x/y'\n")
    cfg = config_io.load(StudentConfig, toml, {"epochs": 7})
    assert cfg.lam == 1.0 and isinstance(cfg.lam, float) and cfg.epochs == 7 and cfg.run_dir == Path("x/y")


def test_saved_config_loads_back_identically(tmp_path):
    cfg = config_io.build(StudentConfig, {"lam": 0.6, "run_dir": "runs/a", "tiny": True})
    path = config_io.save(cfg, tmp_path / "config.toml")
    assert config_io.load(StudentConfig, path) == cfg


def test_toml_file_may_hold_the_settings_in_a_table_named_after_the_command(tmp_path):
    toml = tmp_path / "student.toml"
    toml.write_text("epochs = 3\n\n[train-student]\nlam = 0.2\nrun_dir = 'x/y'\n")
    cfg = config_io.load(StudentConfig, toml, {"tiny": True}, table="train-student")
    assert cfg.lam == 0.2 and cfg.epochs == 3 and cfg.run_dir == Path("x/y") and cfg.tiny


def test_flat_file_loads_the_same_with_or_without_a_table_name(tmp_path):
    toml = tmp_path / "student.toml"
    toml.write_text("lam = 0.2\nepochs = 3\n")
    assert config_io.load(StudentConfig, toml, table="train-student") == config_io.load(StudentConfig, toml)


@pytest.mark.parametrize("text, message", [
    ("[train-teacher]\nepochs = 3\n", r"table\(s\) \['train-teacher'\]"),
    ("[train-student]\nepochs = 3\n[sweep]\nepochs = 2\n", r"table\(s\) \['sweep'\]"),
    ("epochs = 2\n[train-student]\nepochs = 3\n", r"\['epochs'\] given both flat and in the \[train-student\] table"),
    ("[train-student]\nlearnig_rate = 3\n", "learnig_rate"),
    ("[train-student]\nepochs = 'many'\n", "'epochs'"),
    ("train-student = 3\n", "must be a \\[train-student\\] table"),
])
def test_table_errors_name_the_key_and_the_file(tmp_path, text, message):
    toml = tmp_path / "bad.toml"
    toml.write_text(text)
    with pytest.raises(config_io.ConfigError, match=message) as error:
        config_io.load(StudentConfig, toml, table="train-student")
    assert str(toml) in str(error.value)


def test_a_table_is_an_error_when_no_command_names_one(tmp_path):
    toml = tmp_path / "student.toml"
    toml.write_text("[train-student]\nlam = 0.2\n")
    with pytest.raises(config_io.ConfigError, match=r"table\(s\) \['train-student'\]"):
        config_io.load(StudentConfig, toml)


def test_missing_or_malformed_file_is_a_user_error(tmp_path):
    from pipeline.errors import MissingInputError, UserError

    with pytest.raises(MissingInputError, match="no such config file"):
        config_io.load(StudentConfig, tmp_path / "absent.toml")
    (tmp_path / "broken.toml").write_text("lam = \n")
    with pytest.raises(UserError, match="not valid TOML"):
        config_io.load(StudentConfig, tmp_path / "broken.toml")
