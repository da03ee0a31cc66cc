"""Command-line interface: one subcommand per pipeline stage (``advdistill <stage> --help``).

Settings arrive as JSON strings (the rule's config section, passed by Snakemake as ``params``), and
are parsed into the typed dataclasses of :mod:`advdistill.config`, which reject unknown keys.

Exit status: 0 done; 2 an error the user can fix (:class:`~advdistill.errors.AdvDistillError`: config, input,
output disk), printed in one line (``--debug`` adds the traceback); 1 anything else, a bug, with its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from advdistill import __version__
from advdistill.config import section_from_json
from advdistill.errors import AdvDistillError, ConfigError, InputError, OutputError
from advdistill.paths import MANIFEST_SUFFIX, raw_responses, sampling_parts_folder
from advdistill.schema import json_object, validate


JSON_FILE_LIMIT = 64 << 20


def _json_text(text: str) -> str:
    """A JSON option's text as given, or read from the file named after ``@`` (the workflow passes long settings,
    e.g. a large sweep's report plan, that way: a command line has room for 128 KiB)."""
    if not text.startswith("@"):
        return text
    path = Path(text[1:])
    try:
        if not path.is_file() or path.stat().st_size > JSON_FILE_LIMIT:
            raise OSError(f"not a regular file of at most {JSON_FILE_LIMIT >> 20} MiB")  # not /dev/zero, not a FIFO
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise argparse.ArgumentTypeError(f"cannot read the JSON file {path}: {err}") from err


def _json_object(text: str) -> dict:
    try:
        return json_object(_json_text(text), "the argument")
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _seed(text: str) -> int:
    """A seed in the config schema's range (0 to 2**32 - 1, what numpy accepts)."""
    try:
        seed = int(text)
        validate(seed, "/properties/seed", "seed")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err
    return seed


def _snapshot_steps(text: str) -> tuple[int, ...]:
    """``N,M,...``: positive optimizer steps (empty: none)."""
    try:
        steps = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of steps: {text!r}") from err
    if any(step < 1 for step in steps):
        raise argparse.ArgumentTypeError(f"snapshot steps must be positive, got {text!r}")
    return steps


def _part(text: str) -> str:
    """``I/J`` with 0 <= I < J, kept as text (the manifest records it as given)."""
    try:
        part, parts = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/J, e.g. 0/4, got '{text}'") from None
    if not 0 <= part < parts:
        raise argparse.ArgumentTypeError(f"part {part} is outside 0..{parts - 1}")
    return text


def _count(text: str) -> int:
    """A whole number of at least 0 (a negative one would count from the end where it slices a list)."""
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if count < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {count}")
    return count


def _add_device(p) -> None:
    p.add_argument("--device", choices=("auto", "cuda"), default="auto",
                   help="cuda: stop at once unless a CUDA device is visible (the rules pass it under "
                        "resources.gpu_rules: true); auto: a CUDA device if visible, else the CPU")


def _add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="normalise one split of a dataset into rows parquet")
    p.add_argument("--dataset", required=True, help="adapter name, e.g. synthetic or gsm8k")
    p.add_argument("--source", required=True, help="hub id or local file of the official release")
    p.add_argument("--split", required=True, help="split to prepare, e.g. train or test")
    p.add_argument("--options", type=_json_object, default={}, help="adapter options as JSON or @FILE")
    p.add_argument("--name", help="dataset name used in reports (default: the adapter name)")
    p.add_argument("--out", type=Path, required=True, help="output rows parquet")
    p.add_argument("--report", type=Path, help="skipped-rows report JSON (default: beside --out)")


def _add_bootstrap(sub) -> None:
    p = sub.add_parser("bootstrap-tokenizer", help="train a byte-level BPE on a rows parquet")
    p.add_argument("--rows", type=Path, required=True,
                   help="rows parquet (prepare output) whose questions and solutions the tokenizer is trained on")
    p.add_argument("--settings", type=_json_text, default="{}", help="tokenizer settings as JSON or @FILE")
    p.add_argument("--out", type=Path, required=True, help="output tokenizer folder")

    p = sub.add_parser("bootstrap-model", help="build and pretrain a tiny Qwen2 model")
    p.add_argument("--rows", type=Path, required=True, help="rows with reference solutions")
    p.add_argument("--tokenizer", type=Path, required=True,
                   help="tokenizer folder (bootstrap-tokenizer output); the model's vocabulary is its size")
    p.add_argument("--settings", type=_json_text, default="{}",
                   help="bootstrap settings (shape, optim) as JSON or @FILE")
    p.add_argument("--prompt", type=_json_text, default="{}", help="prompt settings as JSON or @FILE")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the initial weights and of the training order")
    p.add_argument("--snapshot-steps", type=_snapshot_steps, default=(),
                   help="comma-separated optimizer steps whose weights are also saved (models/<name>/snapshots/step-N)")
    p.add_argument("--out", type=Path, required=True, help="output model folder")


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="sample teacher responses for every prompt")
    p.add_argument("--model", required=True, help="model folder or hub id")
    p.add_argument("--rows", type=Path, required=True, help="rows parquet (prepare output)")
    p.add_argument("--settings", type=_json_text, default="{}", help="sampling settings as JSON or @FILE")
    p.add_argument("--prompt", type=_json_text, default="{}", help="prompt settings as JSON or @FILE")
    p.add_argument("--seed", type=_seed, default=0,
                   help="seed of the few-shot turns and of every generate call (with its batch's first prompt)")
    p.add_argument("--part", type=_part, default="0/1", help="I/J: sample the I-th of J prompt ranges (0-based)")
    _add_device(p)
    p.add_argument("--out", type=Path, required=True, help="output samples parquet")

    p = sub.add_parser("merge-samples", help="merge the parts of a sharded sampling run")
    p.add_argument("parts", type=Path, nargs="+", help="part parquet files, in order")
    p.add_argument("--out", type=Path, required=True, help="output samples parquet")


def _add_score(sub) -> None:
    p = sub.add_parser("score", help="rewards, group advantages and filtering")
    p.add_argument("--rows", type=Path, required=True, help="rows parquet (prepare output) with the gold answers")
    p.add_argument("--samples", type=Path, required=True, help="samples parquet (sample or merge-samples output)")
    p.add_argument("--settings", type=_json_text, default="{}", help="score settings as JSON or @FILE")
    p.add_argument("--out", type=Path, required=True, help="output scored parquet")
    p.add_argument("--summary", type=Path, required=True, help="output summary JSON")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="fine-tune a student on scored groups (sft or advdistill)")
    p.add_argument("--model", required=True, help="student base: model folder or hub id")
    p.add_argument("--rows", type=Path, required=True, help="training rows parquet (for the prompts)")
    p.add_argument("--scored", type=Path, required=True, help="scored parquet")
    p.add_argument("--objective", choices=["sft", "advdistill"], required=True,
                   help="sft: the best response of each group; advdistill: every response, weighted by advantage, "
                        "with the contrastive term")
    p.add_argument("--settings", type=_json_text, default="{}", help="training settings as JSON or @FILE")
    p.add_argument("--prompt", type=_json_text, default="{}",
                   help="prompt settings as JSON or @FILE (few_shot turns come from --rows)")
    p.add_argument("--seed", type=_seed, default=0,
                   help="seed of the validation split, the training order and the trainer's random state")
    p.add_argument("--few-shot-seed", type=_seed,
                   help="seed that picks the few-shot turns, the sampler's and evaluation's (default: --seed)")
    p.add_argument("--checkpoints", type=Path,
                   help="checkpoint folder: the resume point of a killed run with the same inputs, settings, seed "
                        "and code; deleted once the model is saved (default beside --out)")
    p.add_argument("--run-name",
                   help="the run's name in the experiment trackers of training.report_to (W&B, MLflow, Trackio, ...); "
                        "the workflow passes <run_name>/<student>-<objective>[@variant][@seed] (default: the name of "
                        "--out)")
    p.add_argument("--tracker-dir", type=Path,
                   help="this run's folder for the trackers that write files (TensorBoard's event files), outside "
                        "--out, which is replaced as a whole; kept when a killed run resumes, emptied when training "
                        "starts from step 0, made only when such a tracker is on (default: <out>.trackers beside "
                        "--out)")
    _add_device(p)
    p.add_argument("--out", type=Path, required=True, help="output model folder")


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="greedy or sampled answers of one model on one test set, with metrics")
    p.add_argument("--model", required=True, help="model folder or hub id")
    p.add_argument("--rows", type=Path, required=True, help="test rows parquet")
    p.add_argument("--few-shot-rows", type=Path, help="training rows for few-shot turns")
    p.add_argument("--settings", type=_json_text, default="{}", help="evaluation settings as JSON or @FILE")
    p.add_argument("--prompt", type=_json_text, default="{}",
                   help="prompt settings as JSON or @FILE (few_shot > 0 for base models)")
    p.add_argument("--seed", type=_seed, default=0,
                   help="seed of the few-shot turns and, when evaluation.temperature > 0, of the sampling")
    p.add_argument("--out", type=Path, required=True, help="output responses parquet")
    p.add_argument("--metrics", type=Path, required=True, help="output metrics JSON")
    _add_device(p)


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="tables, plots and cost of a finished run")
    p.add_argument("--plan", type=_json_object, required=True,
                   help="JSON or @FILE: the models, test sets and the declared input files to report on "
                        "(advdistill.report.run_report)")
    p.add_argument("--out-dir", type=Path, required=True,
                   help="output folder: index.html, each table as Markdown and CSV, the figures in plots/")


def _add_standin(sub) -> None:
    p = sub.add_parser("standin", help="a tiny stand-in for a Qwen2.5 hub model, saved like the release (rehearsals)")
    p.add_argument("--like", required=True, help="hub id it stands in for, e.g. Qwen/Qwen2.5-7B")
    p.add_argument("--rows", type=Path, required=True,
                   help="prepared training rows: the tokenizer is trained on all of them")
    p.add_argument("--pretrain-rows", type=_count, default=0,
                   help="pretrain on the reference solutions of the first N rows (a teacher: sampling.max_prompts, "
                        "so that some samples are right); 0 = untrained")
    p.add_argument("--prompt", type=_json_text, default="{}",
                   help="prompt settings as JSON or @FILE, as sampling renders them")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the initial weights and of the pretraining")
    p.add_argument("--out", type=Path, required=True, help="output model folder")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="advdistill", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", default="INFO",
                        help="log lines at this level and above go to stderr: DEBUG, INFO (default), WARNING or ERROR")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of configuration, input and output errors too (bugs always show one)")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE",
                                help="the pipeline stage to run; 'advdistill STAGE --help' for its options")
    _add_prepare(sub)
    _add_bootstrap(sub)
    _add_sample(sub)
    _add_score(sub)
    _add_train(sub)
    _add_evaluate(sub)
    _add_report(sub)
    _add_standin(sub)
    return parser


def check_before_loading(stage: str, settings, args: argparse.Namespace) -> None:
    """What a stage that loads a model checks first, after its settings parsed and before its own imports: the
    device (--device cuda: no silent CPU fallback), the backends its settings name, and the model folder."""
    from advdistill.devices import check_backends, check_device
    from advdistill.model_folders import check_model_source
    from advdistill.trackers import check_report_to

    check_device(stage, args.device)
    check_backends(stage, settings)
    if stage == "train":
        check_report_to(settings.report_to, "training.report_to")
    check_model_source(args.model)


def run(args: argparse.Namespace) -> None:
    """Import only the stage that runs, so that ``--help`` and light stages stay fast."""
    if args.stage == "prepare":
        from advdistill.prepare import prepare_split

        prepare_split(args.dataset, args.source, args.split, args.options, args.out, prepare_report(args), args.name)
    elif args.stage == "bootstrap-tokenizer":
        from advdistill.bootstrap import run_bootstrap_tokenizer

        run_bootstrap_tokenizer(args.rows, section_from_json("tokenizer", args.settings), args.out)
    elif args.stage == "bootstrap-model":
        from advdistill.bootstrap import run_bootstrap_model

        run_bootstrap_model(args.rows, args.tokenizer, section_from_json("bootstrap", args.settings),
                            section_from_json("prompt", args.prompt), args.seed, args.out, args.snapshot_steps)
    elif args.stage == "sample":
        settings, prompt = section_from_json("sampling", args.settings), section_from_json("prompt", args.prompt)
        check_before_loading("sample", settings, args)
        from advdistill.sample import run_sample

        part, parts = (int(x) for x in args.part.split("/"))
        run_sample(args.model, args.rows, settings, prompt, args.seed, args.out, part, parts)
    elif args.stage == "merge-samples":
        from advdistill.sample import merge_samples

        merge_samples(args.parts, args.out)
    elif args.stage == "score":
        from advdistill.score import run_score

        run_score(args.rows, args.samples, section_from_json("score", args.settings), args.out, args.summary)
    elif args.stage == "train":
        settings, prompt = section_from_json("training", args.settings), section_from_json("prompt", args.prompt)
        check_before_loading("train", settings, args)
        from advdistill.train import run_train

        run_train(args.model, args.rows, args.scored, args.objective, settings, prompt, args.seed, args.out,
                  checkpoint_folder(args), args.few_shot_seed, args.run_name, tracker_folder(args))
    elif args.stage == "evaluate":
        settings, prompt = section_from_json("evaluation", args.settings), section_from_json("prompt", args.prompt)
        check_before_loading("evaluate", settings, args)
        from advdistill.evaluate import run_evaluate

        run_evaluate(args.model, args.rows, settings, prompt, args.few_shot_rows, args.seed, args.out, args.metrics)
    elif args.stage == "report":
        from advdistill.report import run_report

        run_report(args.plan, args.out_dir)
    elif args.stage == "standin":
        from advdistill.standin import run_standin

        run_standin(args.like, args.rows, args.pretrain_rows, section_from_json("prompt", args.prompt),
                    args.seed, args.out)


SETTING_ARGUMENTS = ("settings", "prompt", "options", "plan")
INPUT_ARGUMENTS = ("model", "rows", "samples", "scored", "tokenizer", "few_shot_rows", "source", "parts")


def record_provenance(args: argparse.Namespace, started: float) -> None:
    """Write the manifest of this stage beside its main output, with the model it loaded (``--model``) and, for a
    merge, the manifests of the sampling jobs whose parts it joined."""
    from advdistill.io import manifest_path, read_json
    from advdistill.provenance import stage_manifest, write_manifest

    settings = {}
    for name in SETTING_ARGUMENTS:
        value = getattr(args, name, None)
        if value is not None:
            settings[name] = json.loads(value) if isinstance(value, str) else value
    for name in ("objective", "split", "dataset", "part"):
        if getattr(args, name, None) is not None:
            settings[name] = getattr(args, name)
    inputs = [str(getattr(args, name)) for name in INPUT_ARGUMENTS if getattr(args, name, None) is not None]
    output = args.out_dir / "index.html" if args.stage == "report" else args.out
    parts = ({str(part): read_json(manifest_path(part)) for part in args.parts if manifest_path(part).is_file()}
             if args.stage == "merge-samples" else None)
    write_manifest(output, stage_manifest(args.stage, settings, getattr(args, "seed", None), started, inputs,
                                          getattr(args, "model", None), parts))


def _given_paths(args: argparse.Namespace, names: tuple[str, ...]) -> Iterator[tuple[str, Path]]:
    for name in names:
        value = getattr(args, name, None)
        for path in value if isinstance(value, list) else [value]:
            if isinstance(path, Path) or (isinstance(path, str) and Path(path).exists()):  # a model may be a hub id
                yield f"--{name.replace('_', '-')}", Path(path)


def checkpoint_folder(args: argparse.Namespace) -> Path:
    """The train stage's ``--checkpoints``, or its default beside ``--out``."""
    return args.checkpoints or args.out.with_name(args.out.name + ".checkpoints")


def tracker_folder(args: argparse.Namespace) -> Path:
    """The train stage's ``--tracker-dir``, or its default beside ``--out``."""
    from advdistill.trackers import default_tracker_dir

    return args.tracker_dir or default_tracker_dir(args.out)


def prepare_report(args: argparse.Namespace) -> Path:
    """The prepare stage's ``--report``, or its default beside ``--out``."""
    return args.report or args.out.with_name(args.out.stem + ".report.json")


def _overlap(one: Path, other: Path) -> bool:
    """``one`` is, holds or lies inside ``other``."""
    one, other = one.resolve(), other.resolve()
    return one == other or one in other.parents or other in one.parents


def check_inputs(args: argparse.Namespace) -> None:
    """Every input given as a path exists, before a stage loads anything (:func:`check_outputs` then keeps every
    output clear of them)."""
    for option, path in _given_paths(args, INPUT_ARGUMENTS):
        if not path.exists():
            raise InputError(f"{option}: no such file or folder: {path}")


FILE, FOLDER, RESUME = "file", "folder", "resume folder"
FOLDER_STAGES = ("bootstrap-tokenizer", "bootstrap-model", "train", "standin")


@dataclasses.dataclass(frozen=True)
class StageOutput:
    """A path a stage writes: the option (or what it is) that names it, and whether it is a file written
    atomically, a folder written as a whole (:func:`advdistill.io.atomic_directory`) or a resume folder. A file the
    stage derives from --out, which the user never named, has ``ours``: whether an existing file there is, by its
    content, one advdistill wrote (else it is the user's, and the stage leaves it alone)."""

    option: str
    path: Path
    kind: str
    ours: Callable[[Path], bool] | None = None


def _is_manifest(path: Path) -> bool:
    """A provenance manifest: a JSON object with every key that all of advdistill's manifests have."""
    from advdistill.io import MANIFEST_KEYS, json_keys

    return MANIFEST_KEYS <= (json_keys(path) or set())


def _is_prepare_report(path: Path) -> bool:
    """A skipped-rows report: a JSON object with exactly the keys of :meth:`PrepareReport.to_json`."""
    from advdistill.datasets.base import PrepareReport
    from advdistill.io import json_keys

    return json_keys(path) == set(PrepareReport(dataset="", split="", source="").to_json())


def _is_raw_responses(path: Path) -> bool:
    """Sampled responses: a parquet file with exactly the columns the sampling writes."""
    from advdistill.io import parquet_columns
    from advdistill.sampling.shards import SAMPLE_SCHEMA

    return parquet_columns(path) == list(SAMPLE_SCHEMA)


def stage_outputs(args: argparse.Namespace) -> list[StageOutput]:
    """Every path the stage of ``args`` writes: each output option, the derived ones (prepare's default report, the
    sampling shards of sample and evaluate, evaluate's unjudged responses, train's checkpoints and tracker folder)
    and the provenance manifest beside the main output (the report's lies inside its --out-dir)."""
    if args.stage == "report":
        return [StageOutput("--out-dir", args.out_dir, FOLDER)]
    out = args.out
    outputs = [StageOutput("--out", out, FOLDER if args.stage in FOLDER_STAGES else FILE)]
    if args.stage == "prepare":
        outputs.append(StageOutput("--report", args.report, FILE) if args.report else
                       StageOutput("the skipped-rows report of --out", prepare_report(args), FILE, _is_prepare_report))
    elif args.stage == "sample":
        outputs.append(StageOutput("the sampling shards of --out", sampling_parts_folder(out), RESUME))
    elif args.stage == "score":
        outputs.append(StageOutput("--summary", args.summary, FILE))
    elif args.stage == "evaluate":
        outputs += [StageOutput("--metrics", args.metrics, FILE),
                    StageOutput("the unjudged responses of --out", raw_responses(out), FILE, _is_raw_responses),
                    StageOutput("the sampling shards of --out", sampling_parts_folder(raw_responses(out)), RESUME)]
    elif args.stage == "train":
        outputs += [StageOutput("--checkpoints", checkpoint_folder(args), RESUME),
                    StageOutput("--tracker-dir", tracker_folder(args), FOLDER)]
    outputs.append(StageOutput("the manifest of --out", out.with_name(out.name + MANIFEST_SUFFIX), FILE, _is_manifest))
    return outputs


def _enclosing_folder(path: Path) -> tuple[Path, str] | None:
    """The nearest folder around ``path`` that advdistill wrote as a whole or keeps as a resume folder, with who
    wrote it: such a folder is replaced or deleted as a whole, so nothing else may be written into it."""
    from advdistill.io import ARTEFACT_MARKER, RESUME_MARKER, folder_writer, resume_owner

    for folder in path.resolve().parents:
        if (folder / ARTEFACT_MARKER).is_file():
            writer = folder_writer(folder)
            return folder, f"the {writer[1]} of advdistill {writer[0]}" if writer else "a folder of an older advdistill"
        if (folder / RESUME_MARKER).is_file() and resume_owner(folder) != (None, None):
            return folder, f"a resume folder of advdistill {resume_owner(folder)[0] or ''}".rstrip()
    return None


def check_outputs(args: argparse.Namespace) -> list[StageOutput]:
    """One check of every path the stage writes (:func:`stage_outputs`), before it loads anything; returns them.

    No two outputs are one path or inside each other (``score --out x --summary x``); no output is an input, nor
    inside or around one (``train --out X --model X``, ``score --summary rows.parquet``, a report's --out-dir around a
    file its plan reads); none lies inside a folder advdistill writes as a whole; a file output is absent or a
    regular file (no FIFO, device, socket or symbolic link), and one the stage derives from --out (its manifest,
    prepare's default report, evaluate's unjudged responses) holds what advdistill writes there, by its content: the
    user never named it, so it may be the user's own file; a folder output is absent, empty or written by this
    same stage and option (its marker says so: ``report --out-dir`` at a trained model, ``bootstrap-tokenizer --out``
    at the teacher are refused); a resume folder is absent, empty or a resume folder of this stage.
    """
    from advdistill.io import check_output_file, check_replaceable, check_resume_folder

    outputs = stage_outputs(args)
    inputs = list(_given_paths(args, INPUT_ARGUMENTS))
    if args.stage == "report":
        from advdistill.report.build import plan_inputs

        inputs += plan_inputs(args.plan)
    for i, earlier in enumerate(outputs):
        for later in outputs[i + 1:]:
            if _overlap(later.path, earlier.path):
                raise OutputError(f"{later.option} {later.path} is, holds or lies inside {earlier.option} "
                                  f"{earlier.path}: two outputs of one stage would overwrite each other; choose a "
                                  "path of its own for each")
    for output in outputs:
        for option, path in inputs:
            if _overlap(output.path, path):
                raise OutputError(f"{output.option} {output.path} is, holds or lies inside {option} {path}: a stage "
                                  "never writes over its own inputs; choose another output path")
    for output in outputs:
        enclosing = _enclosing_folder(output.path)
        if enclosing is not None:
            raise OutputError(f"{output.option} {output.path} lies inside {enclosing[0]}, {enclosing[1]}, which is "
                              "replaced or deleted as a whole: choose a path outside it")
        if output.kind == FILE:
            check_output_file(output.path, output.option)
            if output.ours is not None and output.path.is_file() and not output.ours(output.path):
                raise OutputError(f"{output.option} {output.path} exists and is not a file advdistill wrote: a stage "
                                  "overwrites or deletes only what it can prove it wrote; move it away or choose "
                                  "another --out")
        elif output.kind == FOLDER:
            check_replaceable(output.path, args.stage, output.option)
        else:
            check_resume_folder(output.path, args.stage, output.option)
    return outputs


DISTRIBUTED_INTEGERS = {
    **dict.fromkeys(("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "ROLE_RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK",
                     "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_LOCAL_RANK",
                     "MPI_LOCALRANKID"), -1),
    "MASTER_PORT": 0,
    **dict.fromkeys(("WORLD_SIZE", "LOCAL_WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE",
                     "MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "ACCELERATE_NUM_PROCESSES"),
                    1),
}
"""Variables a launcher (torchrun, accelerate launch, MPI, SLURM scripts) sets for each process, which this package,
accelerate, transformers or torch read with ``int()``: name -> the least value that makes sense (a rank of -1, as
transformers' own default, means no multi-process run)."""
DISTRIBUTED_FLAGS = ("ACCELERATE_USE_CPU", "ACCELERATE_USE_FSDP", "ACCELERATE_DEBUG_MODE", "ACCELERATE_CPU_AFFINITY",
                     "ACCELERATE_ENABLE_RICH", "ACCELERATE_INIT_INCLUDE_BUFFERS", "FORK_LAUNCHED")
"""accelerate's yes/no variables (``parse_flag_from_env``: a ValueError for any other word)."""
TRUTH_WORDS = ("y", "yes", "t", "true", "on", "1", "n", "no", "f", "false", "off", "0")


def check_environment(environ: Mapping[str, str] = os.environ) -> int:
    """The launcher's variables of this process (:data:`DISTRIBUTED_INTEGERS`, :data:`DISTRIBUTED_FLAGS`), where
    set, are whole numbers and yes/no words: ``RANK=abc`` is named here, in one line, not deep inside accelerate
    as a ValueError. Returns this process's rank (0 without a launcher)."""
    for name, least in DISTRIBUTED_INTEGERS.items():
        if name in environ:
            value = environ[name]
            try:
                number = int(value.strip())
            except ValueError:
                number = None
            if number is None or number < least:
                raise ConfigError(f"environment variable {name}={value!r} is not a whole number (at least {least}); "
                                  "it is set for each process by the launcher of a multi-process run (torchrun, "
                                  "accelerate launch, mpirun): unset it or give a number")
    for name in DISTRIBUTED_FLAGS:
        if name in environ and environ[name].strip().lower() not in TRUTH_WORDS:
            raise ConfigError(f"environment variable {name}={environ[name]!r} is not a yes/no word (true, false, 1, "
                              "0, yes, no, on, off); unset it or give one")
    return max(int(environ.get("RANK", "0")), 0)


def _refused_write(err: BaseException, outputs: list[StageOutput]) -> str | None:
    """The one-line message for an error that is the disk refusing a write, whatever raised it (None: a bug)."""
    try:
        from advdistill.io import disk_refusal
    except ImportError:
        return None
    reason = disk_refusal(err)
    if reason is None:
        return None
    cause: BaseException | None = err
    while cause is not None and not (isinstance(cause, OSError) and cause.filename):
        cause = cause.__cause__ or cause.__context__
    where = (cause.filename if cause is not None else
             f"the outputs of this stage ({', '.join(str(o.path) for o in outputs)})" if outputs else "its output")
    return f"cannot write {where}: {reason}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.time()
    outputs: list[StageOutput] = []
    try:
        rank = check_environment()
        check_inputs(args)
        outputs = check_outputs(args)
        with contextlib.ExitStack() as held:
            if rank == 0:  # the other processes of a multi-process run write no output
                from advdistill.io import hold_output, remove_stale_temporaries

                for output in outputs:  # one job per output at a time (a second stops here), for the whole job
                    held.enter_context(hold_output(output.path))
                for output in outputs:  # what a killed job of this stage left of them
                    remove_stale_temporaries(output.path)
            run(args)
            if rank == 0:
                record_provenance(args, started)
    except AdvDistillError as err:
        if args.debug:
            traceback.print_exc()
        print(f"advdistill {args.stage}: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        refused = _refused_write(err, outputs)
        if refused is not None:  # a library's own error type for a full disk, outside the writers that name it
            if args.debug:
                traceback.print_exc()
            print(f"advdistill {args.stage}: error: {refused}", file=sys.stderr)
            return 2
        traceback.print_exc()
        print(f"advdistill {args.stage}: internal error (a bug): the traceback above says where", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
