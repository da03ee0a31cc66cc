"""The CLI: its error contract (the project's errors in one line, exit 2; bugs with their traceback, exit 1), its
version and its help texts."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator

import pytest

import advdistill
from advdistill import cli
from advdistill import errors
from advdistill.errors import (AdvDistillError, BadRow, ConfigError, DatasetError, InputError, MemoryPlanError,
                               OutputError, TrainingError)
from tests.helpers import files_under, run_cli


def test_every_project_error_has_the_common_base_and_keeps_its_old_one():
    project_errors = [value for value in vars(errors).values()
                      if isinstance(value, type) and issubclass(value, Exception) and value.__module__ == errors.__name__]
    assert {error.__name__ for error in project_errors} >= {"ConfigError", "DatasetError", "InputError", "OutputError",
                                                            "TrainingError", "DeviceError", "MemoryPlanError"}
    for error in project_errors:
        # BadRow is a row's problem, skipped and counted by its reader, never a stage's error
        assert issubclass(error, AdvDistillError) != (error is BadRow), error
    assert issubclass(ConfigError, ValueError) and issubclass(DatasetError, RuntimeError)
    assert issubclass(TrainingError, RuntimeError) and issubclass(MemoryPlanError, ConfigError)


@pytest.mark.failure_mode("missing input file given on the command line (--rows, --samples, ...)",
                          sees="one line naming the option and the path, exit 2, no traceback",
                          kept="everything; nothing is written")
def test_missing_input_is_a_one_line_error(capsys, tmp_path):
    code, err = run_cli(capsys, "score", "--rows", tmp_path / "rows.parquet", "--samples", tmp_path / "s.parquet",
                        "--out", tmp_path / "scored.parquet", "--summary", tmp_path / "summary.json")
    assert code == 2 and "Traceback" not in err
    assert err.strip() == f"advdistill score: error: --rows: no such file or folder: {tmp_path / 'rows.parquet'}"
    assert files_under(tmp_path) == set()


@pytest.mark.failure_mode("output path that is one of the stage's inputs, or inside or around one "
                          "(train --out X --model X)",
                          sees="one line naming the output and the input, exit 2",
                          kept="everything; nothing is read or written")
@pytest.mark.parametrize("out", ["model", "model/inner", "."])
def test_a_stage_never_writes_over_its_own_inputs(capsys, tmp_path, out):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    for name in ("rows.parquet", "scored.parquet"):
        (tmp_path / name).write_text("x")
    before = files_under(tmp_path)
    code, err = run_cli(capsys, "train", "--model", model, "--rows", tmp_path / "rows.parquet", "--scored",
                        tmp_path / "scored.parquet", "--objective", "sft", "--out", tmp_path / out)
    assert code == 2 and "Traceback" not in err
    assert f"--out {tmp_path / out} is, holds or lies inside --" in err and "never writes over its own inputs" in err
    assert files_under(tmp_path) == before


@pytest.mark.failure_mode("a bug: an exception that is not the project's own (even a ValueError)",
                          sees="its traceback and 'internal error (a bug)', exit 1",
                          kept="whatever the stage had written atomically before")
@pytest.mark.parametrize("bug", [KeyError("prompt_id"), ValueError("math domain error")])
def test_a_bug_keeps_its_traceback(capsys, monkeypatch, tmp_path, bug):
    def broken(args):
        raise bug

    monkeypatch.setattr(cli, "run", broken)
    code, err = run_cli(capsys, "prepare", "--dataset", "synthetic", "--source", "synthetic", "--split", "test",
                        "--out", tmp_path / "rows.parquet")
    assert code == 1
    assert "Traceback (most recent call last)" in err and f"{type(bug).__name__}: " in err
    assert err.strip().endswith("advdistill prepare: internal error (a bug): the traceback above says where")


@pytest.mark.parametrize("error", [ConfigError("training.lr: bad"), DatasetError("dataset 'x': bad"),
                                   InputError("x.parquet: bad"), OutputError("cannot write x: full"),
                                   TrainingError("non-finite loss")])
def test_project_errors_are_one_line_and_debug_adds_the_traceback(capsys, monkeypatch, tmp_path, error):
    def failing(args):
        raise error

    monkeypatch.setattr(cli, "run", failing)
    argv = ("prepare", "--dataset", "synthetic", "--source", "synthetic", "--split", "test",
            "--out", tmp_path / "rows.parquet")
    code, err = run_cli(capsys, *argv)
    assert (code, err) == (2, f"advdistill prepare: error: {error}\n")
    code, err = run_cli(capsys, "--debug", *argv)
    assert code == 2 and "Traceback (most recent call last)" in err
    assert err.endswith(f"advdistill prepare: error: {error}\n")


@pytest.mark.failure_mode("malformed sample --part (not I/J with 0 <= I < J)",
                          sees="usage and 'argument --part: ...', exit 2", kept="everything; nothing is written")
@pytest.mark.parametrize(("part", "message"), [("a/b", "expected I/J, e.g. 0/4, got 'a/b'"),
                                               ("4/4", "part 4 is outside 0..3")])
def test_malformed_part_is_a_usage_error(capsys, tmp_path, part, message):
    with pytest.raises(SystemExit) as stopped:
        cli.main(["sample", "--model", "m", "--rows", str(tmp_path / "r.parquet"), "--part", part,
                  "--out", str(tmp_path / "s.parquet")])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --part: {message}" in err and "Traceback" not in err
    parsed = cli.build_parser().parse_args(["sample", "--model", "m", "--rows", "r", "--part", "3/4", "--out", "o"])
    assert parsed.part == "3/4"


def test_json_options_read_a_file_named_after_an_at_sign(tmp_path):
    settings = tmp_path / "settings.json"
    settings.write_text('{"reward_weights": {"cosine": 2.0, "format": 1.0}}')
    args = cli.build_parser().parse_args(["score", "--rows", "r", "--samples", "s", "--out", "o", "--summary", "m",
                                          "--settings", f"@{settings}"])
    assert args.settings == settings.read_text()
    plan = tmp_path / "plan.json"
    plan.write_text('{"models": []}')
    assert cli.build_parser().parse_args(["report", "--plan", f"@{plan}", "--out-dir", "x"]).plan == {"models": []}


@pytest.mark.failure_mode("a JSON option given as @FILE where the file cannot be read, or is no regular file "
                          "(@/dev/zero would be read forever, a FIFO would block)",
                          sees="the usage error naming the option and the file, exit 2, at once", kept="everything")
@pytest.mark.parametrize("name", ["missing.json", "fifo", "/dev/zero"])
def test_an_unreadable_json_file_is_a_usage_error(capsys, tmp_path, name):
    path = tmp_path / name
    if name == "fifo":
        os.mkfifo(path)
    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(["score", "--rows", "r", "--samples", "s", "--out", "o", "--summary", "m",
                                       "--settings", f"@{path}"])
    assert exit_info.value.code == 2
    assert f"--settings: cannot read the JSON file {path}" in capsys.readouterr().err


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.main(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out == f"advdistill {advdistill.__version__}\n"


def parser_entries(parser: argparse.ArgumentParser,
                   command: str = "advdistill") -> Iterator[tuple[str, str, str | None]]:
    """(command, option or subcommand, its help) for every argument of ``parser`` and of all its subcommands."""
    for action in parser._actions:
        name = "/".join(action.option_strings) or action.metavar or action.dest
        yield command, name, action.help
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}  # only those given help=
            for stage, subparser in action.choices.items():
                yield command, stage, helps.get(stage)
                yield from parser_entries(subparser, f"{command} {stage}")


def test_every_option_and_subcommand_has_help():
    entries = list(parser_entries(cli.build_parser()))
    assert {"advdistill score", "advdistill bootstrap-model"} <= {command for command, _, _ in entries}
    missing = [f"{command} {name}" for command, name, text in entries
               if not text or text == argparse.SUPPRESS or not text.strip()]
    assert not missing, f"no help text: {', '.join(missing)}"
