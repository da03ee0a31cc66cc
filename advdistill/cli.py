"""Command-line interface: one subcommand per pipeline stage (``advdistill <stage> --help``).

Settings arrive as JSON strings (the rule's config section, passed by Snakemake as ``params``), and
are parsed into the typed dataclasses of :mod:`advdistill.config`, which reject unknown keys.

Exit status: 0 done; 2 an error the user can fix (:class:`~advdistill.errors.AdvDistillError`: config, input,
output disk), printed in one line (``--debug`` adds the traceback); 1 anything else, a bug, with its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

from advdistill.config import section_from_json
from advdistill.errors import AdvDistillError, ConfigError, InputError, OutputError
from advdistill.schema import json_object, validate


def _json_text(text: str) -> str:
    """A JSON option's text as given, or read from the file named after ``@`` (the workflow passes long settings,
    e.g. a large sweep's report plan, that way: a command line has room for 128 KiB)."""
    if not text.startswith("@"):
        return text
    try:
        return Path(text[1:]).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise argparse.ArgumentTypeError(f"cannot read the JSON file {text[1:]}: {err}") from err


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
    p.add_argument("--rows", type=Path, required=True)
    p.add_argument("--settings", type=_json_text, default="{}", help="tokenizer settings as JSON or @FILE")
    p.add_argument("--out", type=Path, required=True, help="output tokenizer folder")

    p = sub.add_parser("bootstrap-model", help="build and pretrain a tiny Qwen2 model")
    p.add_argument("--rows", type=Path, required=True, help="rows with reference solutions")
    p.add_argument("--tokenizer", type=Path, required=True)
    p.add_argument("--settings", type=_json_text, default="{}",
                   help="bootstrap settings (shape, optim) as JSON or @FILE")
    p.add_argument("--prompt", type=_json_text, default="{}", help="prompt settings as JSON or @FILE")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--snapshot-steps", type=_snapshot_steps, default=(),
                   help="comma-separated optimizer steps whose weights are also saved (models/<name>/snapshots/step-N)")
    p.add_argument("--out", type=Path, required=True, help="output model folder")


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="sample teacher responses for every prompt")
    p.add_argument("--model", required=True, help="model folder or hub id")
    p.add_argument("--rows", type=Path, required=True, help="rows parquet (prepare output)")
    p.add_argument("--settings", type=_json_text, default="{}", help="sampling settings as JSON or @FILE")
    p.add_argument("--prompt", type=_json_text, default="{}", help="prompt settings as JSON or @FILE")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--part", type=_part, default="0/1", help="I/J: sample the I-th of J prompt ranges (0-based)")
    _add_device(p)
    p.add_argument("--out", type=Path, required=True, help="output samples parquet")

    p = sub.add_parser("merge-samples", help="merge the parts of a sharded sampling run")
    p.add_argument("parts", type=Path, nargs="+", help="part parquet files, in order")
    p.add_argument("--out", type=Path, required=True, help="output samples parquet")


def _add_score(sub) -> None:
    p = sub.add_parser("score", help="rewards, group advantages and filtering")
    p.add_argument("--rows", type=Path, required=True)
    p.add_argument("--samples", type=Path, required=True)
    p.add_argument("--settings", type=_json_text, default="{}", help="score settings as JSON or @FILE")
    p.add_argument("--out", type=Path, required=True, help="output scored parquet")
    p.add_argument("--summary", type=Path, required=True, help="output summary JSON")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="fine-tune a student on scored groups (sft or advdistill)")
    p.add_argument("--model", required=True, help="student base: model folder or hub id")
    p.add_argument("--rows", type=Path, required=True, help="training rows parquet (for the prompts)")
    p.add_argument("--scored", type=Path, required=True, help="scored parquet")
    p.add_argument("--objective", choices=["sft", "advdistill"], required=True)
    p.add_argument("--settings", type=_json_text, default="{}", help="training settings as JSON or @FILE")
    p.add_argument("--prompt", type=_json_text, default="{}",
                   help="prompt settings as JSON or @FILE (few_shot turns come from --rows)")
    p.add_argument("--seed", type=_seed, default=0)
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
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--out", type=Path, required=True, help="output responses parquet")
    p.add_argument("--metrics", type=Path, required=True, help="output metrics JSON")
    _add_device(p)


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="tables, plots and cost of a finished run")
    p.add_argument("--plan", type=_json_object, required=True,
                   help="JSON or @FILE: the models, test sets and the declared input files to report on "
                        "(advdistill.report.run_report)")
    p.add_argument("--out-dir", type=Path, required=True)


def _add_standin(sub) -> None:
    p = sub.add_parser("standin", help="a tiny stand-in for a Qwen2.5 hub model, saved like the release (rehearsals)")
    p.add_argument("--like", required=True, help="hub id it stands in for, e.g. Qwen/Qwen2.5-7B")
    p.add_argument("--rows", type=Path, required=True,
                   help="prepared training rows: the tokenizer is trained on all of them")
    p.add_argument("--pretrain-rows", type=int, default=0,
                   help="pretrain on the reference solutions of the first N rows (a teacher: sampling.max_prompts, "
                        "so that some samples are right); 0 = untrained")
    p.add_argument("--prompt", type=_json_text, default="{}",
                   help="prompt settings as JSON or @FILE, as sampling renders them")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--out", type=Path, required=True, help="output model folder")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="advdistill", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of configuration, input and output errors too (bugs always show one)")
    sub = parser.add_subparsers(dest="stage", required=True)
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

        report = args.report or args.out.with_name(args.out.stem + ".report.json")
        prepare_split(args.dataset, args.source, args.split, args.options, args.out, report, args.name)
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


def _overlap(one: Path, other: Path) -> bool:
    """``one`` is, holds or lies inside ``other``."""
    one, other = one.resolve(), other.resolve()
    return one == other or one in other.parents or other in one.parents


def check_inputs(args: argparse.Namespace) -> None:
    """Every input given as a path exists, and the output is none of them, nor inside or around one, before a
    stage loads anything: a stage never writes over its own inputs (``train --out X --model X`` would replace
    the base model). The train stage's tracker folder, emptied when a run starts from step 0, keeps clear of its
    inputs, its checkpoints and its output too."""
    for option, path in _given_paths(args, INPUT_ARGUMENTS):
        if not path.exists():
            raise InputError(f"{option}: no such file or folder: {path}")
    output = getattr(args, "out", None) or getattr(args, "out_dir", None)
    for option, path in _given_paths(args, INPUT_ARGUMENTS + ("checkpoints",)) if output is not None else ():
        if _overlap(path, output):
            raise OutputError(f"--{'out-dir' if args.stage == 'report' else 'out'} {output} is, holds or lies "
                              f"inside {option} {path}: a stage never writes over its own inputs; choose another "
                              "output path")
    if args.stage == "train":
        trackers = tracker_folder(args)
        for option, path in [("--out", args.out), ("--checkpoints", checkpoint_folder(args)),
                             *_given_paths(args, INPUT_ARGUMENTS)]:
            if _overlap(trackers, path):
                raise OutputError(f"--tracker-dir {trackers} is, holds or lies inside {option} {path}: the trackers' "
                                  "folder is emptied when training starts from step 0; choose a folder of its own")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.time()
    try:
        check_inputs(args)
        run(args)
        if int(os.environ.get("RANK", "0")) == 0:
            record_provenance(args, started)
    except AdvDistillError as err:
        if args.debug:
            traceback.print_exc()
        print(f"advdistill {args.stage}: error: {err}", file=sys.stderr)
        return 2
    except Exception:
        traceback.print_exc()
        print(f"advdistill {args.stage}: internal error (a bug): the traceback above says where", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
