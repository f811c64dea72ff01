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
