"""The CLI is generated from the config dataclasses: every field is an option, every option of before is kept."""

import dataclasses
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline import cli
from pipeline.commands import build_command

GENERATED = {**{f"stage {name}": c for name, c in cli.STAGES.items()},
             **{f"data {name}": c for name, c in cli.DATA.items()}, **cli.COMMANDS}

# every option the hand-written CLI had (its last version), by command
OPTIONS_BEFORE = {
    "data synth": "--audio-noise --config --max-seconds --min-seconds --out --seed --speakers --trials --utterances "
                  "--verification-speakers",
    "stage prepare": "--audio-only-ok --boxes-dir --classes --commit-seconds --config --crop-fraction --dataset "
                     "--face-size --fold --include-scripted --include-song --no-scripted --normalisation --num-workers "
                     "--on-error --overwrite --root --run-dir --seed --split --split-file --store --trials-file",
    "stage train-teacher": "--arch --batch-size --channels-last --compile --config --dataset --device --embed-dim "
                           "--epochs --frames-per-segment --frames-per-utterance --init-weights --lr-max --lr-min "
                           "--max-steps-per-epoch --no-channels-last --num-workers --overwrite --precision --resume "
                           "--run-dir --seed --sequential --tiny --window-seconds",
    "stage export-embeddings": "--batch-frames --commit-seconds --config --dataset --device --dtype --num-parts "
                               "--num-workers --out --overwrite --part --run-dir --splits --store --teacher "
                               "--window-seconds",
    "stage train-student": "--arch --batch-size --cache --channels-last --compile --config --crop-seconds --dataset "
                           "--device --distance --epochs --expect-teacher --lambda --level --lr-max --lr-min "
                           "--max-steps-per-epoch --method --name --no-channels-last --num-workers --overwrite "
                           "--precision --resume --run-dir --seed --target --temperature --tiny",
    "demo": "--config --device --lambdas --size --work",
    "sweep": "--archs --batch-size --config --crop-seconds --dataset --device --epochs --lambdas --levels --methods "
             "--name --num-workers --report-only --run-dir --seeds --set --tiny",
    "protocol": "--arch --batch-size --classes --config --crop-seconds --dataset --device --epochs --folds "
                "--include-scripted --include-song --lambdas --level --method --no-scripted --num-workers "
                "--prepare-set --root --run-dir --seed --set --teacher-arch --teacher-epochs --teacher-set --tiny",
    "embed": "--device --out --overwrite",
    "predict": "--all-probabilities --device --out --overwrite --top-k",
    "verify": "--device --out --overwrite --p-target --root --skip-missing",
    "bench-models": "--batch --repeats --threads",  # python -m pipeline.models.bench
    "bench-store": "--batches --dir --seed --utterances",  # python -m cache.bench
    "bench": "--arch --batch-size --config --crop-seconds --device --epochs --full --num-workers --out "
             "--rss-utterances --speakers --steps --tiny --utterances --work",
}


def _options(command) -> set[str]:
    return {opt for param in command.params for opt in (*param.opts, *getattr(param, "secondary_opts", ()))}


@pytest.mark.parametrize("name", sorted(OPTIONS_BEFORE))
def test_every_option_of_before_keeps_its_name(name):
    command = build_command(name.split()[-1], GENERATED[name])
    assert set(OPTIONS_BEFORE[name].split()) <= _options(command)


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_every_config_field_is_a_parameter(name):
    spec = GENERATED[name]
    config_cls = getattr(__import__(spec.module, fromlist=[spec.config]), spec.config)
    command = build_command(name.split()[-1], spec)
    fields = {field.name for field in dataclasses.fields(config_cls)}
    assert {param.name for param in command.params} == fields | {"config"} | {extra for extra, _, _ in spec.extra}


def test_a_new_field_is_a_new_option_with_its_metadata(monkeypatch):
    import stages.demo

    @dataclasses.dataclass(frozen=True)
    class Extended(stages.demo.DemoConfig):
        warmup: int = dataclasses.field(default=3, metadata={"help": "Warm-up epochs.", "choices": {"3": 0}})

    monkeypatch.setattr(stages.demo, "DemoConfig", Extended)
    result = CliRunner().invoke(cli.app, ["demo", "--help"], terminal_width=200)
    assert "--warmup" in result.output and "Warm-up epochs. Choices: 3. (default: 3)" in result.output


def _parsed(monkeypatch, module: str, args: list[str], run: str = "run"):
    """The config `avl ARGS` would run `module.run` with."""
    seen = []
    monkeypatch.setattr(sys.modules.get(module) or __import__(module, fromlist=[run]), run, seen.append)
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    return seen[0]


def test_options_reach_the_config(monkeypatch, tmp_path):
    cfg = _parsed(monkeypatch, "stages.train_student", [
        "stage", "train-student", "--lambda", "0.2", "--tiny", "--epochs", "3", "--run-dir", str(tmp_path),
        "--no-channels-last", "--compile"])
    assert (cfg.lam, cfg.tiny, cfg.epochs, cfg.run_dir, cfg.channels_last, cfg.compile) == (
        0.2, True, 3, tmp_path, False, True)
    assert cfg.method == "proposed"  # left out: the default
    cfg = _parsed(monkeypatch, "stages.sweep", [
        "sweep", "--lambdas", "0,0.4", "--seeds", "1,2", "--archs", "vgg", "--set", "lr_max=2e-3", "--set", "cycle_epochs=1"])
    assert (cfg.lambdas, cfg.seeds, cfg.archs) == ((0.0, 0.4), (1, 2), ("vgg",))
    assert cfg.student_options == ("lr_max=2e-3", "cycle_epochs=1")
    assert _parsed(monkeypatch, "stages.protocol", ["protocol", "--root", str(tmp_path), "--folds", "all"]).folds == ()
    cfg = _parsed(monkeypatch, "stages.protocol", [
        "protocol", "--root", str(tmp_path), "--folds", "1,2", "--no-scripted", "--teacher-set", "frames_per_utterance=2"])
    assert (cfg.folds, cfg.include_scripted, cfg.teacher_options) == ((1, 2), False, ("frames_per_utterance=2",))
    assert _parsed(monkeypatch, "stages.bench", ["bench", "--full", "--utterances", "20"]).tiny is False
    cfg = _parsed(monkeypatch, "stages.infer", ["embed", "m.pt", "a.wav", "b.wav", "--out", "e.npy"], run="embed")
    assert (cfg.model, cfg.files, cfg.out) == (Path("m.pt"), (Path("a.wav"), Path("b.wav")), Path("e.npy"))


def test_config_file_in_a_table_and_options_that_win(monkeypatch, tmp_path):
    toml = tmp_path / "s.toml"
    toml.write_text("epochs = 2\n[train-student]\nlam = 0.3\ntiny = true\n")
    cfg = _parsed(monkeypatch, "stages.train_student", [
        "stage", "train-student", "--config", str(toml), "--lambda", "0.5"])
    assert (cfg.epochs, cfg.lam, cfg.tiny) == (2, 0.5, True)


def test_a_bad_list_value_is_a_usage_error():
    result = CliRunner().invoke(cli.app, ["sweep", "--lambdas", "0,x"])
    assert result.exit_code == 2 and "--lambdas" in result.output


def test_user_errors_print_one_line_and_exit_2(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(sys, "argv", ["avl", "stage", "train-student", "--lambda", "1.4", "--run-dir", str(tmp_path)])
    with pytest.raises(SystemExit) as exit:
        cli.main()
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "lambda" in err and "Traceback" not in err


def test_cli_module_holds_no_logic():
    """Under 150 lines, and every command but `cache` comes from a config (no restated option)."""
    source = Path(cli.__file__).read_text()
    assert len(source.splitlines()) < 150
    assert source.count("typer.Option(") <= 5
