"""The config checks without Snakemake: the schema, strict config files, the sections the CLI stages take, and the
model names planning derives (tests/test_planning.py checks the same through `snakemake --dry-run`)."""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import subprocess
import sys
import zipfile

import pytest
import yaml
from snakemake.utils import update_config

from advdistill import cli
from advdistill.config import (
    SCHEMA_PARTS,
    BootstrapConfig,
    EvaluationConfig,
    ModelShape,
    SamplingConfig,
    ScoreConfig,
    TrainingConfig,
    from_dict,
    from_json,
)
from advdistill.errors import ConfigError
from advdistill.planning import (
    check_config,
    check_model_names,
    check_stage_sections,
    check_trackers,
    check_variants,
)
from advdistill.rewards import REWARD_FUNCTIONS
from advdistill.schema import declared_properties, load_schema, read_config_file, type_command_line_values, validate
from tests.helpers import REPO

BASIC = yaml.safe_load((REPO / ".test" / "config_basic.yaml").read_text())


def schema_part(pointer: str) -> dict:
    part = load_schema()
    for key in pointer.strip("/").split("/"):
        part = part[key]
    return part


def described(subschema: dict) -> dict:
    """``subschema``, or what its ``$ref`` points to when it carries no description of its own."""
    while "description" not in subschema and "$ref" in subschema:
        subschema = schema_part(subschema["$ref"].removeprefix("#"))
    return subschema


def schema_keys(node, path: str = ""):
    """(key path, subschema) of every key declared anywhere in the schema (in ``properties``, ``$defs`` included)."""
    if isinstance(node, list):
        for item in node:
            yield from schema_keys(item, path)
    elif isinstance(node, dict):
        for word, value in node.items():
            if word == "properties":
                for key, subschema in value.items():
                    yield f"{path}.{key}", subschema
                    yield from schema_keys(subschema, f"{path}.{key}")
            else:
                yield from schema_keys(value, f"{path}/{word}")


def test_workflow_schema_path_is_the_packaged_schema():
    """workflow/schemas/config.schema.yaml links to the file the package ships, so the two cannot drift."""
    assert (REPO / "workflow/schemas/config.schema.yaml").samefile(REPO / "advdistill/config.schema.yaml")


def test_every_section_dataclass_has_the_keys_of_its_schema_part():
    for cls, pointer in SCHEMA_PARTS.items():
        fields = {field.name for field in cls.__dataclass_fields__.values()}
        keys = set(declared_properties(schema_part(pointer))) - {"dataset"}  # the rule's input, not a setting
        assert fields == keys, cls.__name__


def test_schema_defaults_are_the_dataclass_defaults():
    """A stage called by hand (dataclass defaults) runs as one that planning filled in (schema defaults)."""
    for cls, pointer in SCHEMA_PARTS.items():
        properties = declared_properties(schema_part(pointer))
        for field in dataclasses.fields(cls):
            default = field.default_factory() if field.default is dataclasses.MISSING else field.default
            if dataclasses.is_dataclass(default):
                continue  # a nested section, checked as its own part
            subschema = properties[field.name]
            assert "default" in subschema, f"{pointer}/properties/{field.name} has no default"
            assert subschema["default"] == default, f"{cls.__name__}.{field.name}"


def test_every_schema_key_has_a_description():
    missing = [path for path, subschema in schema_keys(load_schema()) if "description" not in described(subschema)]
    assert not missing, f"config keys without a description: {', '.join(missing)}"


def test_reward_names_in_the_schema_are_the_registered_rewards():
    names = schema_part("/properties/score/properties/reward_weights")["propertyNames"]["enum"]
    assert sorted(names) == sorted(REWARD_FUNCTIONS)


def test_every_offered_lr_scheduler_builds_as_training_calls_it():
    """The schema offers only transformers schedulers that need no extra arguments and step without a metric."""
    import torch
    from transformers import SchedulerType, get_scheduler

    offered = schema_part("/$defs/optim/properties/lr_scheduler")["enum"]
    assert set(offered) <= {kind.value for kind in SchedulerType}
    for name in offered:
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        scheduler = get_scheduler(name, optimizer, num_warmup_steps=1, num_training_steps=4)
        optimizer.step()
        scheduler.step()


def test_repeated_key_in_a_config_file_names_file_line_and_key(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("seed: 1\nsampling:\n  temperature: 0.9\n  top_p: 1.0\n  temperature: 0.7\n")
    with pytest.raises(ConfigError, match=rf"config file {path}, line 5, column 3: key 'temperature' is given twice "
                                          r"in this mapping \(first on line 3\)"):
        read_config_file(path)
    path.write_text('{"seed": 1, "sampling": {"top_p": 1.0, "top_p": 0.5}}')
    with pytest.raises(ConfigError, match=rf"config file {path}: key\(s\) 'top_p' given twice"):
        read_config_file(path)
    # the same key in different mappings, and a YAML merge key overriding a key it merges, are fine
    path.write_text("base: &base {top_p: 1.0}\nsampling:\n  <<: *base\n  top_p: 0.5\nevaluation: {top_p: 1.0}\n")
    assert read_config_file(path)["sampling"] == {"top_p": 0.5}


def test_yaml_syntax_error_names_line_and_column(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("seed: 7\ndatasets:\n  arith: {adapter: synthetic\n  other: 1\n")
    with pytest.raises(ConfigError, match=rf"config file {path}, line 4, column 8: YAML syntax error: "
                                          r"while parsing a flow mapping; expected ',' or '}', but got ':'"):
        read_config_file(path)
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping of config keys, got list"):
        read_config_file(path)


def test_schema_errors_name_every_bad_key_in_one_message():
    config = copy.deepcopy(BASIC)
    config["seed"] = 2**32
    config["training"]["optim"]["lr_scheduler"] = "cosine_with_min_lr"
    config["training"]["optim"]["learning_rte"] = 0.1
    with pytest.raises(ConfigError) as raised:
        validate(config)
    assert str(raised.value).splitlines() == [
        "config seed: 4294967296 is greater than the maximum of 4294967295",
        "config training.optim.learning_rte: unknown key (known: epochs, eval_steps, gradient_accumulation_steps, "
        "learning_rate, logging_steps, lr_scheduler, max_grad_norm, max_seq_length, max_steps, "
        "per_device_batch_size, save_steps, warmup_ratio, weight_decay)",
        "config training.optim.lr_scheduler: 'cosine_with_min_lr' is not one of ['linear', 'cosine', "
        "'cosine_with_restarts', 'polynomial', 'constant', 'constant_with_warmup', 'inverse_sqrt']",
    ]


def test_defaults_are_filled_in_as_snakemake_fills_them():
    config = copy.deepcopy(BASIC)
    validate(config, set_defaults=True)
    assert config["sampling"]["jobs"] == 1 and config["local_sources"] == {}
    assert config["training"]["optim"]["lr_scheduler"] == "cosine"


@pytest.mark.parametrize("name, valid", [
    ("qwen2.5-1.5b", True), ("student_2", True), ("a..b", True), ("..", False), (".", False), (".hidden", False),
    ("-x", False), ("a/b", False), ("a b", False), ("$(touch pwned)", False), ("", False),
])
def test_names_are_single_safe_path_components(name, valid):
    for config in (BASIC, yaml.safe_load((REPO / "config/paper/gsm8k.yaml").read_text())):
        config = copy.deepcopy(config)
        config["teacher"]["name"] = name
        train_set = next(iter(config["experiments"]))
        config["experiments"][train_set]["testsets"].append(name)
        config["datasets"][name] = config["datasets"][train_set]
        if valid:
            validate(config)
        else:
            with pytest.raises(ConfigError) as raised:
                validate(config)
            message = str(raised.value)
            assert f"config teacher.name: {name!r} is not a name used as one path component" in message
            assert f"config datasets: key {name!r} is not a name used as one path component" in message
            assert f"config experiments.{train_set}.testsets[2]: {name!r} is not a name" in message


def test_colliding_derived_model_names_name_both_keys():
    config = copy.deepcopy(BASIC)
    config["students"].append({**config["students"][0], "name": "student-sft"})
    with pytest.raises(ConfigError, match=r"config students\[0\].objectives \('sft', trained as 'student-sft'\) and "
                                          r"students\[1\].name both give the model name 'student-sft'"):
        check_model_names(config)
    for teacher, role in [("student-base", "base model"), ("qwen7b-base", "base model"),
                          ("big-sft", "run trained with sft")]:
        config = copy.deepcopy(BASIC)
        config["teacher"]["name"] = teacher
        with pytest.raises(ConfigError, match=rf"^config teacher.name: '{teacher}' ends in '-\w+', the name of "
                                              rf"student '\S+'s {role}: the pipeline would take the teacher for it"):
            check_model_names(config)
    config = copy.deepcopy(BASIC)
    config["students"].append({**config["students"][0], "name": "Student"})
    with pytest.raises(ConfigError, match=r"config students\[0\].name and students\[1\].name give the model names "
                                          r"'student' and 'Student', which differ only in case"):
        check_model_names(config)
    config = copy.deepcopy(BASIC)
    config["datasets"]["ARITH"] = config["datasets"][next(iter(config["datasets"]))]
    with pytest.raises(ConfigError, match=r"config datasets\.\w+ and datasets.ARITH give the dataset names "
                                          r"'\w+' and 'ARITH', which differ only in case"):
        check_model_names(config)
    config = copy.deepcopy(BASIC)
    config["students"].append({**config["students"][0], "name": "student"})
    with pytest.raises(ConfigError, match=r"students\[0\].name and students\[1\].name both give the model name"):
        check_model_names(config)
    # names that only share a prefix are fine
    config = copy.deepcopy(BASIC)
    config["students"].append({**config["students"][0], "name": "student2"})
    config["teacher"]["name"] = "student-teacher"
    check_model_names(config)


@pytest.mark.parametrize("section, cls, settings, message", [
    ("sampling", SamplingConfig, {"temperature": 0, "n_samples": 4},
     "config sampling.n_samples: 4 responses per prompt at sampling.temperature 0 (greedy decoding)"),
    ("sampling", SamplingConfig, {"temperature": 0}, "config sampling.n_samples: 8 responses per prompt"),
    ("evaluation", EvaluationConfig, {"n_samples": 4},
     "config evaluation.n_samples: 4 responses per prompt at evaluation.temperature 0 (greedy decoding)"),
    ("evaluation", EvaluationConfig, {"n_samples": 2, "temperature": 0.5, "top_p": 0},
     "config evaluation.top_p: 0 is less than or equal to the minimum of 0"),
    ("score", ScoreConfig, {"reward_weights": {"cosine": 0.0, "format": 0}},
     "config score.reward_weights: no reward has a non-zero weight"),
    ("score", ScoreConfig, {"reward_weights": {}}, "config score.reward_weights: no reward has a non-zero weight"),
    ("score", ScoreConfig, {"reward_weights": {"cosine": 1, "lenght": 1}},
     "config score.reward_weights: key 'lenght' is not one of ['cosine', 'format', 'correctness']"),
    ("training", TrainingConfig, {"optim": {"lr_scheduler": "cosine_warmup"}},
     "config training.optim.lr_scheduler: 'cosine_warmup' is not one of"),
    ("training", TrainingConfig, {"optim": {"learning_rate": 0}},
     "config training.optim.learning_rate: 0 is less than or equal to the minimum of 0"),
    ("training", TrainingConfig, {"report_to": 5}, "config training.report_to: 5 is not of type 'string', 'array'"),
    ("training", TrainingConfig, {"report_to": []}, "config training.report_to: [] should be non-empty"),
], ids=["temperature-0-n-4", "temperature-0-default-n", "evaluation-greedy-n-4", "evaluation-top-p-0", "zero-weights",
        "no-weights", "unknown-reward", "unknown-scheduler", "zero-lr", "report-to-a-number", "report-to-empty"])
def test_sections_are_checked_as_the_cli_takes_them(section, cls, settings, message):
    with pytest.raises(ConfigError) as raised:
        from_dict(cls, settings, section)
    assert message in str(raised.value)


def test_valid_edge_values_are_accepted():
    assert from_dict(SamplingConfig, {"temperature": 0, "n_samples": 1}, "sampling").n_samples == 1
    assert from_dict(EvaluationConfig, {"n_samples": 4, "temperature": 0.8}, "evaluation").n_samples == 4
    assert from_dict(EvaluationConfig, {"temperature": 0.8}, "evaluation").n_samples == 1
    assert from_dict(ScoreConfig, {"reward_weights": {"cosine": 0, "correctness": 1}}, "score").reward_weights
    assert from_dict(TrainingConfig, {"optim": {"lr_scheduler": "inverse_sqrt"}}, "training").optim.lr_scheduler
    validate(0, "/properties/seed", "seed")
    validate(2**32 - 1, "/properties/seed", "seed")


def test_planning_rejects_several_greedy_evaluation_samples():
    config = copy.deepcopy(BASIC)
    config["evaluation"] = {**config.get("evaluation", {}), "n_samples": 8, "temperature": 0}
    with pytest.raises(ConfigError, match=r"config evaluation.n_samples: 8 responses per prompt at "
                                          r"evaluation.temperature 0 \(greedy decoding\)"):
        check_stage_sections(config)
    check_stage_sections({**config, "evaluation": {**config["evaluation"], "temperature": 0.6}})


@pytest.mark.parametrize("training, variant, message", [
    ({"report_to": "wandb"}, {}, "config training.report_to: 'wandb' needs the Python package wandb, which is not "
                                 "installed here (pip install wandb)"),
    ({}, {"report_to": ["tensorboard", "wandb"]}, "config variants.low.training.report_to: 'wandb' needs the Python "
                                                  "package wandb"),
    ({}, {"report_to": "all"}, "config variants.low.training.report_to: 'all' reports to whichever trackers"),
], ids=["training", "variant", "variant-all"])
@pytest.mark.failure_mode(
    "training.report_to naming a tracker transformers does not offer, 'all', or one whose package is not installed",
    sees="planning stops naming training.report_to (or variants.<name>.training.report_to), the tracker and the "
         "package to install; the train job checks its own environment (a container's) again before loading",
    kept="everything; no job starts")
def test_planning_names_the_key_of_a_tracker_it_cannot_run(monkeypatch, training, variant, message):
    from transformers.integrations import integration_utils

    monkeypatch.setattr(integration_utils, "is_wandb_available", lambda: False)
    config = copy.deepcopy(BASIC)
    config["training"] = {**config.get("training", {}), **training}
    config["variants"] = {"low": {"training": {"loss": {"lam": 0.1}, **variant}}}
    validate(config, set_defaults=True)
    with pytest.raises(ConfigError) as raised:
        check_trackers(config)
    assert message in str(raised.value)
    config["variants"]["low"]["training"]["report_to"] = "tensorboard"
    config["training"]["report_to"] = "none"
    check_trackers(config)


@pytest.mark.parametrize("variants, message", [
    ({"low": {"control": "low", "training": {}}}, "config variants.low.control: 'low' is not another variant"),
    ({"low": {"control": "zero", "training": {}}}, "config variants.low.control: 'zero' is not another variant "
                                                   "(variants: low)"),
    ({"low": {"objectives": ["advdistill"], "control": "ref", "training": {}},
      "ref": {"objectives": ["sft"], "training": {}}},
     "config variants.low.control: 'ref' does not train ['advdistill'], which 'low' trains"),
], ids=["itself", "unknown", "other-objective"])
def test_a_variant_control_must_be_another_variant_of_the_same_objective(variants, message):
    config = copy.deepcopy(BASIC)
    config["variants"] = variants
    validate(config, set_defaults=True)
    with pytest.raises(ConfigError) as raised:
        check_variants(config)
    assert message in str(raised.value)
    config["variants"] = {"lam0.5": {"objectives": ["advdistill"], "control": "lam0", "training": {}},
                          "lam0": {"objectives": ["advdistill"], "training": {"loss": {"lam": 0.0}}}}
    validate(config, set_defaults=True)
    check_variants(config)


def test_planning_checks_parse_every_stage_section(tmp_path):
    """A value the schema accepts but the stage's own section rejects (its ``__post_init__``) stops planning."""
    path = tmp_path / "config.yaml"
    config = copy.deepcopy(BASIC)
    config["sampling"].update(temperature=0, n_samples=4)
    path.write_text(yaml.safe_dump(config))
    validated = copy.deepcopy(config)
    validate(validated, set_defaults=True)
    with pytest.raises(ConfigError, match=r"^config sampling\.n_samples: 4 responses per prompt at sampling\."
                                          r"temperature 0 \(greedy decoding\)"):
        check_stage_sections(validated)
    with pytest.raises(SystemExit):
        check_config(config, [path])
    config = copy.deepcopy(BASIC)
    config["teacher"]["bootstrap"]["shape"]["hidden_size"] = 32
    check_config(config, [path])
    assert config["sampling"]["jobs"] == 1


@pytest.mark.parametrize("shape, message", [
    # {s}: where the shape is in the config, before each key the message names
    ({"hidden_size": 30, "num_attention_heads": 4}, "{s}hidden_size: 30 is not a multiple of {s}num_attention_heads 4"),
    ({"hidden_size": 20, "num_attention_heads": 4}, "{s}hidden_size: 20 over {s}num_attention_heads 4 gives heads of "
                                                    "odd width 5; the rotary position embedding needs an even width"),
    ({"num_attention_heads": 4, "num_key_value_heads": 3},
     "{s}num_attention_heads: 4 is not a multiple of {s}num_key_value_heads 3"),
], ids=["hidden-size", "odd-head-width", "kv-heads"])
@pytest.mark.failure_mode(
    "bootstrap.shape whose hidden_size the attention heads do not divide into even widths, or whose "
    "num_key_value_heads do not divide num_attention_heads",
    sees="planning stops naming the key (teacher.bootstrap.shape.hidden_size, students[<i>].bootstrap.shape...) and "
         "both sizes; bootstrap-model given such --settings by hand stops the same way (exit 2), not in attention",
    kept="everything; no job starts")
def test_a_bootstrap_shape_attention_cannot_split_names_its_key(tmp_path, capsys, shape, message):
    with pytest.raises(ConfigError) as raised:
        from_dict(BootstrapConfig, {"shape": shape}, "bootstrap")
    assert str(raised.value) == "config " + message.format(s="bootstrap.shape.")
    with pytest.raises(ConfigError) as raised:
        ModelShape(**shape)
    assert str(raised.value) == message.format(s="")
    config = copy.deepcopy(BASIC)
    config["teacher"]["bootstrap"]["shape"].update(shape)
    config["students"].append({"name": "scratch", "source": "bootstrap", "objectives": ["sft"],
                               "bootstrap": copy.deepcopy(config["teacher"]["bootstrap"])})
    with pytest.raises(ConfigError) as raised:
        check_stage_sections(config)
    assert str(raised.value) == "config " + message.format(s="teacher.bootstrap.shape.")
    config["teacher"]["bootstrap"]["shape"] = BASIC["teacher"]["bootstrap"]["shape"]
    with pytest.raises(ConfigError) as raised:
        check_stage_sections(config)
    assert str(raised.value) == "config " + message.format(s="students[1].bootstrap.shape.")
    rows, tokenizer = tmp_path / "rows.parquet", tmp_path / "tokenizer"
    rows.touch()
    tokenizer.mkdir()
    assert cli.main(["bootstrap-model", "--rows", str(rows), "--tokenizer", str(tokenizer), "--settings",
                     json.dumps({"shape": shape}), "--out", str(tmp_path / "model")]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == ("advdistill bootstrap-model: error: config "
                                                        + message.format(s="bootstrap.shape."))


def test_nested_command_line_values_get_the_schema_type():
    """Snakemake hands values nested in a --config mapping on as text (YAML's BaseLoader)."""
    given = {"training": {"optim": {"learning_rate": "2e-3", "max_steps": "3"}, "report_to": "none"},
             "resources": {"gpu_rules": "true", "gpu_mem_gb": "null"}, "seeds": ["7", "8"],
             "variants": {"lam0": {"training": {"loss": {"lam": "0"}}}}}
    config = copy.deepcopy(BASIC)
    update_config(config, copy.deepcopy(given))
    type_command_line_values(config, given)
    assert config["training"]["optim"]["learning_rate"] == 0.002 and config["training"]["optim"]["max_steps"] == 3
    assert config["training"]["report_to"] == "none"  # a string where the schema takes one
    assert config["resources"] == {"gpu_rules": True, "gpu_mem_gb": None} and config["seeds"] == [7, 8]
    assert config["variants"]["lam0"]["training"]["loss"]["lam"] == 0  # a variant overrides training keys
    validate(config, set_defaults=True)


@pytest.mark.parametrize("given, message", [
    ({"training": {"optim": {"learning_rate": "fast"}}},
     "config training.optim.learning_rate: 'fast' from --config is not a number; "),
    ({"training": {"optim": {"max_steps": "4.0"}}},
     "config training.optim.max_steps: '4.0' from --config is not an integer"),
    ({"score": {"drop_zero_variance": "yes"}},
     "config score.drop_zero_variance: 'yes' from --config is not true or false"),
    ({"sampling": {"temperature": "nan"}}, "config sampling.temperature: 'nan' from --config is not a number"),
])
def test_a_command_line_value_of_no_schema_type_names_the_key_and_the_config_file_way(given, message):
    config = copy.deepcopy(BASIC)
    update_config(config, copy.deepcopy(given))
    with pytest.raises(ConfigError) as raised:
        type_command_line_values(config, given)
    assert message in str(raised.value)
    section = next(iter(given))
    assert f"--configfile config.yaml override.yaml, override.yaml holding {section}: {{" in str(raised.value)


@pytest.mark.failure_mode(
    "out-of-range or unknown setting passed to a CLI stage by hand (--settings, --seed)",
    sees="the stage stops before reading its inputs: one line naming the key and the allowed range, exit status 2, "
         "no traceback",
    kept="everything; nothing written")
def test_cli_stage_validates_its_settings_against_the_schema(tmp_path):
    rows = tmp_path / "rows.parquet"
    rows.touch()
    out = tmp_path / "samples.parquet"
    arguments = ["sample", "--model", str(tmp_path / "model"), "--rows", str(rows), "--out", str(out)]
    done = subprocess.run([sys.executable, "-m", "advdistill.cli", *arguments, "--settings",
                           '{"temperature": -0.5, "top_p": 2}'], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["advdistill sample: error: config sampling.temperature: -0.5 is less than "
                                        "the minimum of 0",
                                        "config sampling.top_p: 2 is greater than the maximum of 1"]
    done = subprocess.run([sys.executable, "-m", "advdistill.cli", *arguments, "--seed", str(2**32)],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert "argument --seed: config seed: 4294967296 is greater than the maximum of 4294967295" in done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists()
    # in range: parsed into the stage's settings
    assert cli.build_parser().parse_args([*arguments, "--seed", str(2**32 - 1)]).seed == 2**32 - 1
    assert from_json(SamplingConfig, '{"temperature": 0.5, "top_p": 1}', "sampling").temperature == 0.5


def test_schema_ships_with_the_package(tmp_path):
    """A wheel built from what the container images copy (containers/*.def) carries the schema in the package."""
    source = tmp_path / "source"
    shutil.copytree(REPO / "advdistill", source / "advdistill", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(source)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    wheel = next(tmp_path.glob("advdistill-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        assert yaml.safe_load(archive.read("advdistill/config.schema.yaml")) == load_schema()


def test_a_run_name_that_names_an_existing_file_stops_planning(tmp_path, monkeypatch):
    from advdistill.runs import check_run_folder

    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"^config run_name: results/notes.txt exists and is not a folder"):
        check_run_folder({"run_name": "notes.txt"}, ["config.yaml"])
    check_run_folder({"run_name": "default"}, ["config.yaml"])
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    (tmp_path / "elsewhere" / "results").write_text("mine")
    with pytest.raises(ConfigError, match=r"^config run_name: results exists and is not a folder; the run's outputs "
                                          r"go to results/default: move the file away$"):
        check_run_folder({"run_name": "default"}, ["config.yaml"])
    assert (tmp_path / "results" / "notes.txt").read_text() == "mine"


def test_a_run_record_lets_its_own_config_files_and_equal_configs_through(tmp_path, monkeypatch):
    from advdistill.runs import check_run_folder, write_record

    monkeypatch.chdir(tmp_path)
    config = {"run_name": "default", "seed": 1, "sampling": {"temperature": 0.9}}
    write_record(config, [tmp_path / "config.yaml"])
    edited = {**config, "sampling": {"temperature": 0.7}}
    check_run_folder(edited, ["config.yaml"])  # its own file, edited: an incremental rerun
    check_run_folder(config, ["copy.yaml"])  # another file that gives the same configuration
    with pytest.raises(ConfigError, match=r"^config run_name: 'default' is the run of other config files "
                                          r"\(config.yaml; results/default/run.json\), and this configuration "
                                          r"\(copy.yaml\) differs from it in sampling.temperature"):
        check_run_folder(edited, ["copy.yaml"])


def test_an_upstream_run_lends_its_results_only_where_its_config_agrees(tmp_path, monkeypatch):
    from advdistill.runs import check_upstream_run, write_record

    monkeypatch.chdir(tmp_path)
    base = yaml.safe_load((REPO / ".test" / "config_basic.yaml").read_text())
    write_record(base, ["config_basic.yaml"])
    sweep = {**copy.deepcopy(base), "run_name": "sweep", "upstream_run": "test_basic", "seeds": [1, 2],
             "training": {"optim": {"learning_rate": 0.1}}}
    sweep["students"][0]["objectives"] = ["advdistill"]
    check_upstream_run(sweep)  # training, seeds and objectives are the sweep's own
    sweep["students"][0]["snapshot"]["step"] = 3
    with pytest.raises(ConfigError, match=r"^config upstream_run: run 'test_basic' \(config_basic.yaml\) was made "
                                          r"with another students\[0\].snapshot.step"):
        check_upstream_run(sweep)
    sweep["students"][0]["snapshot"]["step"] = 2
    sweep["experiments"] = {"gsm8k": {"testsets": ["arith"]}}
    with pytest.raises(ConfigError, match=r"run 'test_basic' has no experiment gsm8k"):
        check_upstream_run(sweep)


@pytest.mark.parametrize("path", [("run_name",), ("teacher", "name"), ("students", 0, "name")])
def test_a_name_with_a_trailing_newline_is_refused(path):
    """JSON Schema's final ``$`` is the end of the string; Python's also matched before a trailing newline."""
    config = yaml.safe_load((REPO / ".test" / "config_basic.yaml").read_text())
    holder = config
    for key in path[:-1]:
        holder = holder[key]
    holder[path[-1]] = "student\n"
    with pytest.raises(ConfigError, match=r"'student\\n' is not a name used as one path component"):
        validate(config, set_defaults=True)
