"""Dress rehearsal of a configuration: its whole DAG, for real, on a CPU, on stand-ins of its models at small sizes.

``make rehearse CONFIG=config/paper/gsm8k.yaml`` (``python -m advdistill.rehearsal``) checks an edited paper
configuration before it spends GPU hours: every rule runs with the configuration's own settings except those an
extra config file, ``results/<run_name>-rehearsal/rehearsal.yaml``, overrides:

- ``run_name``: ``<run_name>-rehearsal``, so the rehearsal never touches the real run's folder (a real run of
  that name, whose ``run.json`` is not a rehearsal's, stops it: :func:`check_rehearsal_folder`);
- ``local_sources``: each Qwen2.5 hub id the configuration loads maps to a stand-in (:mod:`advdistill.standin`),
  built in ``results/<run_name>-rehearsal/standins`` from the training rows; datasets load as the configuration
  says, or from the local copies of ``--sources`` (an offline file: its model entries are left out);
- :data:`SIZES`: prompt counts, token limits (the cosine ``max_length`` follows ``sampling.max_new_tokens``, as in
  the paper) and training steps; the ``hf`` backend in place of vLLM, which has an environment of its own
  (docs/vllm.md); ``resources.gpu_rules: false``, since the GPU stages refuse to run without CUDA.

Responses per prompt, temperature, rewards, learning rate, lambda, tau, precision and few-shot turns stay the
configuration's. ``tests/test_rehearsal.py`` rehearses every paper configuration through this module.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from advdistill.errors import AdvDistillError, ConfigError
from advdistill.paths import write_text_atomically
from advdistill.planning import labelled_models
from advdistill.runs import config_file_names, read_record, record_path, run_folder
from advdistill.schema import read_config_file, validate

SUFFIX = "-rehearsal"
SAMPLED_PROMPTS = 4
"""Prompts the teacher samples; its stand-in is pretrained on their reference solutions, so that some are right."""
SIZES = {
    "sampling": {"backend": "hf", "max_prompts": SAMPLED_PROMPTS, "max_new_tokens": 192},
    "score": {"cosine": {"max_length": 192}},
    "training": {"optim": {"max_steps": 2, "eval_steps": 1, "save_steps": 1}},
    "evaluation": {"backend": "hf", "max_prompts": 2, "max_new_tokens": 24},
    "resources": {"gpu_rules": False},
}
# Every rule that asks for two threads gets one: stand-ins are tiny, so a job's time is mostly its imports (about
# 10 s of torch and transformers on 2 cores), and two single-thread jobs at a time cut a run's wall time by about
# 40 % (the workflow fixture run: 153 s -> 90 s).
ONE_THREAD = ("--set-threads", "bootstrap_model=1", "sample=1", "train=1", "evaluate=1")


def read_config(path: str | Path) -> dict[str, Any]:
    """A configuration file read strictly and completed with the schema's defaults (seed, prompt, ...)."""
    config = read_config_file(path)
    validate(config, set_defaults=True)
    return config


def rehearsal_name(config: dict[str, Any]) -> str:
    return f"{config['run_name']}{SUFFIX}"


def dataset_sources(config: dict[str, Any], local_sources: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``local_sources`` for the hub ids the configuration's datasets read."""
    used = set()
    for spec in config["datasets"].values():
        source = spec["source"]
        used.update(source.values() if isinstance(source, dict) else [source])
    return {hub_id: local for hub_id, local in local_sources.items() if hub_id in used}


def training_rows(config: dict[str, Any], datasets: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """The rows of each experiment's training split, as prepare normalises them (``datasets``: local copies by hub
    id; an id without one is read from the hub)."""
    from advdistill.datasets import get_adapter
    from advdistill.datasets.base import normalise_split

    rows = []
    for train_set in config["experiments"]:
        spec = config["datasets"][train_set]
        source = spec["source"]["train"] if isinstance(spec["source"], dict) else spec["source"]
        local = datasets.get(source, source)
        local = local["train"] if isinstance(local, dict) else local
        adapter = get_adapter(spec["adapter"], local, spec.get("options"), train_set)
        rows.append(normalise_split(adapter, "train", train_set)[0].to_dicts())
    return rows


def standin_models(config: dict[str, Any]) -> dict[str, bool]:
    """Hub id -> whether a teacher loads it, for every model the configuration loads from the hub (the pipeline
    builds the bootstrapped ones); a model no stand-in exists for is named by its key."""
    from advdistill.standin import STANDINS

    models: dict[str, bool] = {}
    for key, model in labelled_models(config):
        if model["source"] in ("bootstrap", "snapshot"):
            continue
        if model["source"] not in STANDINS:
            raise ConfigError(f"config {key}.source: no stand-in for '{model['source']}' (stand-ins exist for "
                              f"{', '.join(STANDINS)}), so this configuration cannot be rehearsed on a CPU")
        models[model["source"]] = models.get(model["source"], False) or key == "teacher"
    return models


def standin_key(config: dict[str, Any], rows: list[list[dict[str, Any]]]) -> str:
    """What the stand-ins depend on: the models, the rows (tokenizer and the teacher's solutions), seed and prompt."""
    text = json.dumps([standin_models(config), rows, config["seed"], config.get("prompt")], sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def build_standins(config: dict[str, Any], rows: list[list[dict[str, Any]]], folder: Path) -> dict[str, str]:
    """Hub id -> stand-in folder under ``folder``: one tokenizer on every training row, a teacher pretrained on the
    first :data:`SAMPLED_PROMPTS` rows of each training set (the prompts it will sample), untrained students. Built
    again only when :func:`standin_key` changes."""
    models = standin_models(config)
    key = standin_key(config, rows)
    built = {hub_id: folder / hub_id.replace("/", "--") for hub_id in models}
    key_file = folder / "key.txt"
    if key_file.is_file() and key_file.read_text() == key and all(path.is_dir() for path in built.values()):
        return {hub_id: str(path) for hub_id, path in built.items()}
    import torch

    from advdistill.config import section_from_dict
    from advdistill.standin import build_standin, standin_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread beats two that wait for a busy core
    try:
        tokenizer = standin_tokenizer([row for split in rows for row in split])
        prompt = section_from_dict("prompt", config.get("prompt"))
        for hub_id, teacher in models.items():
            pretrain = [row for split in rows for row in split[:SAMPLED_PROMPTS]] if teacher else []
            build_standin(hub_id, tokenizer, pretrain, prompt, config["seed"], built[hub_id])
    finally:
        torch.set_num_threads(threads)
    write_text_atomically(key_file, key)
    return {hub_id: str(path) for hub_id, path in built.items()}


def prepare_rehearsal(config_file: str | Path, local_sources: dict[str, Any] | None = None) -> Path:
    """Stand-ins and the overrides file of a rehearsal of ``config_file`` in the working directory; the overrides
    file's path, to give after the configuration (``--configfile CONFIG OVERRIDES``)."""
    config = read_config(config_file)
    datasets = dataset_sources(config, local_sources or {})
    folder = run_folder(rehearsal_name(config))
    overrides = folder / "rehearsal.yaml"
    check_rehearsal_folder(config, overrides)
    standins = build_standins(config, training_rows(config, datasets), folder / "standins")
    settings = {"run_name": rehearsal_name(config), "local_sources": {**datasets, **standins}, **SIZES}
    write_text_atomically(overrides, "# written by advdistill.rehearsal: the sizes and sources of a rehearsal on "
                                     "stand-ins\n" + yaml.safe_dump(settings, sort_keys=False))
    return overrides


def check_rehearsal_folder(config: dict[str, Any], overrides: Path) -> None:
    """The rehearsal's folder holds no real run: a configuration whose run_name is itself ``<run_name>-rehearsal``
    runs there too, and the rehearsal would write into its results. A run's record (``run.json``) there must be a
    rehearsal's, which names ``overrides`` among its config files (``--configfile CONFIG OVERRIDES``; named as the
    record names it, through its folder: the file itself is about to be replaced)."""
    name = rehearsal_name(config)
    record = read_record(name)
    ours = (Path(config_file_names([overrides.parent])[0]) / overrides.name).as_posix()
    if record is None or ours in record.get("config_files", []):
        return
    raise ConfigError(
        f"config run_name: {run_folder(name)} holds the results of another run ({record_path(name)}: config files "
        f"{', '.join(record.get('config_files', [])) or 'none'}), not of a rehearsal of '{config['run_name']}', which "
        f"would write its stand-ins and outputs there. Rehearse it under another run_name, or move {run_folder(name)} "
        "away")


def snakemake_command(config_file: str | Path, overrides: Path, cores: str) -> list[str]:
    """The rehearsal's Snakemake run: every job one thread, ``cores`` of them at a time."""
    return ["snakemake", "--cores", cores, *ONE_THREAD, "--configfile", str(config_file), str(overrides)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m advdistill.rehearsal", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="the configuration to rehearse, e.g. config/paper/gsm8k.yaml")
    parser.add_argument("--sources", help="a config file whose local_sources give local copies of the datasets "
                                          "(e.g. your offline.yaml; its model entries are replaced by stand-ins)")
    parser.add_argument("--cores", default="all", help="CPU cores Snakemake uses (default: all)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        local_sources = (read_config_file(args.sources).get("local_sources") or {}) if args.sources else {}
        overrides = prepare_rehearsal(args.config, local_sources)
    except AdvDistillError as err:
        print(f"rehearsal: {err}", file=sys.stderr)
        return 2
    code = subprocess.run(snakemake_command(args.config, overrides, args.cores)).returncode
    report = overrides.parent / "report" / "index.html"
    print(f"rehearsal of {args.config}: {'done' if code == 0 else f'FAILED (snakemake exit {code})'} in "
          f"{time.monotonic() - started:.0f} s" + (f"; report: {report}" if code == 0 else ""), file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
