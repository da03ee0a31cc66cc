"""Config checks that Snakemake runs while planning, before any job (called from the Snakefile and common.smk).

:func:`check_config` reads every config file again strictly (a repeated key, a syntax error with its line and
column), validates the merged config against the schema and fills in its defaults, parses every stage's
section as its CLI will (so the rules that tie keys together are checked too), and checks that the model names
the pipeline derives are unique. A :class:`ConfigError` raised by a check decorated with
:func:`stop_on_config_error` stops Snakemake with its message alone, without a Python traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from advdistill.config import (
    BootstrapConfig,
    EvaluationConfig,
    PromptConfig,
    SamplingConfig,
    ScoreConfig,
    TokenizerConfig,
    TrainingConfig,
    from_dict,
)
from advdistill.errors import ConfigError
from advdistill.schema import read_config_file, validate

F = TypeVar("F", bound=Callable[..., Any])


def stop_on_config_error(check: F) -> F:
    """Decorate a planning check: a :class:`ConfigError` is logged as it is (each line names its key) and Snakemake
    exits with status 1 before any job, instead of printing the error with a traceback."""

    @functools.wraps(check)
    def checked(*args, **kwargs):
        try:
            return check(*args, **kwargs)
        except ConfigError as err:
            from snakemake.logging import logger

            logger.error(str(err))
            sys.exit(1)

    return checked


@stop_on_config_error
def checked_config_file(path: str) -> str:
    """``path``, once it reads strictly (see :func:`advdistill.schema.read_config_file`); a missing file is left to
    Snakemake."""
    if Path(path).exists():
        read_config_file(path)
    return path


def without_dataset(section: dict[str, Any]) -> dict[str, Any]:
    """A tokenizer or bootstrap section as its CLI stage takes it: the dataset is the rule's input instead."""
    return {key: value for key, value in section.items() if key != "dataset"}


def labelled_models(config: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The teacher and every student with its config key."""
    return [("teacher", config["teacher"])] + [(f"students[{i}]", s) for i, s in enumerate(config.get("students", []))]


def derived_model_names(config: dict[str, Any]) -> list[tuple[str, str]]:
    """Every model name the pipeline derives, with the config key it comes from: the teacher's and each student's
    name, ``<student>-base`` (the untrained student, evaluated) and ``<student>-<objective>`` (trained)."""
    names = [(config["teacher"]["name"], "teacher.name")]
    for i, student in enumerate(config.get("students", [])):
        key, name = f"students[{i}]", student["name"]
        names += [(name, f"{key}.name"), (f"{name}-base", f"{key}.name (its base model '{name}-base')")]
        names += [(f"{name}-{objective}", f"{key}.objectives ('{objective}', trained as '{name}-{objective}')")
                  for objective in student["objectives"]]
    return names


def check_model_names(config: dict[str, Any]) -> None:
    """Two config keys that give the same derived name would share results/train and results/evaluate folders:
    one model would be evaluated in place of the other, and one never built or never evaluated."""
    first: dict[str, str] = {}
    for name, key in derived_model_names(config):
        if name in first:
            raise ConfigError(f"config {first[name]} and {key} both give the model name '{name}', so their results "
                              f"would be mixed up (one model evaluated in place of the other); rename one")
        first[name] = key


def check_stage_sections(config: dict[str, Any]) -> None:
    """Parse every section as its stage's CLI will, so that no job meets a config error that planning let
    through (the checks in the dataclasses' ``__post_init__``, e.g. temperature 0 with several samples)."""
    from_dict(PromptConfig, config.get("prompt"), "prompt")
    from_dict(SamplingConfig, config["sampling"], "sampling")
    from_dict(ScoreConfig, config["score"], "score")
    from_dict(TrainingConfig, config["training"], "training")
    from_dict(EvaluationConfig, config["evaluation"], "evaluation")
    if "tokenizer" in config:
        from_dict(TokenizerConfig, without_dataset(config["tokenizer"]), "tokenizer")
    for key, model in labelled_models(config):
        if "bootstrap" in model:
            from_dict(BootstrapConfig, without_dataset(model["bootstrap"]), f"{key}.bootstrap")


@stop_on_config_error
def check_config(config: dict[str, Any], config_files: Iterable[str | Path]) -> None:
    """Every planning check of the config itself, in order; fills in the schema's defaults."""
    for path in config_files:
        read_config_file(path)
    validate(config, set_defaults=True)
    check_stage_sections(config)
    check_model_names(config)


def accelerate_launch_args(processes: int) -> list[str]:
    """Arguments of ``accelerate launch`` for a train job of ``processes`` processes on one node, up to the
    module to run (port 0: a free port, so several multi-process jobs can share a node)."""
    return ["--multi_gpu", "--num_machines", "1", "--num_processes", str(int(processes)), "--main_process_port", "0"]
