"""Planning through `snakemake --dry-run`: config values never reach a shell command unquoted, and a bad config
stops the run before any job with one message naming the key (no Python traceback)."""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from advdistill.planning import params_json, trained_runs
from tests.helpers import REPO, assert_clean_stop, copy_workflow

CONFIGS = [REPO / ".test" / "config_basic.yaml", REPO / "config" / "paper" / "gsm8k.yaml"]
# every hostile feature in one value: command substitution, backticks, separators, both quotes, spaces, a newline
HOSTILE = "$(touch pwned) `touch pwned` ; touch pwned; rm -rf ./results & it's \"quoted\" | touch pwned\nline two"
STUBS = "advdistill() { printf '%s\\0' \"$@\" > \"$ARGV\"; }; accelerate() { advdistill \"$@\"; }\n"


def snakemake(workdir: Path, *args: str, snakefile: Path = REPO / "Snakefile", **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["snakemake", "-s", str(snakefile), "--dry-run", "--printshellcmds", *args], cwd=workdir,
                          capture_output=True, text=True, timeout=300, **kwargs)


def string_leaves(node, path=()):
    """Every string value of a config with its key path (keys themselves are names, checked elsewhere)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from string_leaves(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from string_leaves(value, (*path, index))
    elif isinstance(node, str):
        yield path


def set_at(config, path, value):
    for key in path[:-1]:
        config = config[key]
    config[path[-1]] = value


def value_at(config, path):
    for key in path:
        config = config[key]
    return config


def key_text(path) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path).lstrip(".")


def shell_commands(output: str) -> list[str]:
    """The commands `--printshellcmds` shows, each up to the line where its quoting closes."""
    commands = []
    for chunk in output.split("Shell command: ")[1:]:
        lines = chunk.split("\n")
        for end in range(1, len(lines) + 1):
            text = "\n".join(lines[:end])
            try:
                shlex.split(text)
            except ValueError:
                continue
            break
        else:
            raise AssertionError(f"a printed command whose quotes never close: {chunk[:1000]}")
        if text != "None":
            commands.append(text)
    return commands


def json_strings(node):
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from json_strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from json_strings(value)
    elif isinstance(node, str):
        yield node


def arguments_as_bash_sees_them(command: str, scratch: Path) -> list[str]:
    """Run the command in bash with `advdistill` and `accelerate` as stubs that write out their arguments."""
    words = shlex.split(command)
    log = words[words.index(">") + 1]
    (scratch / log).parent.mkdir(parents=True, exist_ok=True)
    argv = scratch / "argv"
    done = subprocess.run(["bash", "-c", STUBS + command], cwd=scratch, capture_output=True, text=True, timeout=30,
                          env={"ARGV": str(argv), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    return argv.read_text().split("\0")[:-1]


@pytest.mark.slow
@pytest.mark.parametrize("config_file", CONFIGS, ids=lambda path: path.stem)
@pytest.mark.failure_mode(
    "config value with shell metacharacters ($(...), backticks, ;, quotes, spaces, newlines)",
    sees="the value reaches its command as one quoted argument (or inside one quoted JSON argument); a value that "
         "must be a name is rejected while planning, naming the key",
    kept="everything; nothing of the value is executed")
def test_hostile_config_values_stay_single_arguments(config_file, tmp_path):
    """Every string value of the config holds a hostile string at once (tagged with its index); every printed
    command, run by bash with stub programs, receives each one intact inside one argument, and no `pwned` file
    appears."""
    workflow = copy_workflow(tmp_path / "repo")
    base = yaml.safe_load(config_file.read_text())
    base["prompt"]["system_prompt"] = "a system prompt"
    leaves = list(string_leaves(base))
    config, injected = copy.deepcopy(base), {}
    for index, path in enumerate(leaves):
        injected[path] = f"h{index}x {HOSTILE}"
        set_at(config, path, injected[path])
    for _ in range(3):  # values that must be names (or enum members) are rejected, named, and put back
        (workflow / "hostile.yaml").write_text(yaml.safe_dump(config))
        result = snakemake(workflow, "--configfile", "hostile.yaml", snakefile=workflow / "Snakefile")
        assert not list(tmp_path.rglob("pwned"))
        if result.returncode == 0:
            break
        output = assert_clean_stop(result)
        rejected = [path for path in injected
                    if re.search(rf"^config {re.escape(key_text(path))}: ", output, re.MULTILINE)]
        assert rejected, output[-3000:]
        for path in rejected:
            set_at(config, path, value_at(base, path))
            del injected[path]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    commands = shell_commands(result.stdout)
    assert len(commands) >= 15
    reached = set()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    for command in commands:
        argv = arguments_as_bash_sees_them(command, scratch)
        words = shlex.split(command)
        assert argv == words[1:words.index(">")], command  # bash and shlex agree on every word
        atoms = argv + [text for arg in argv if arg.startswith("{") for text in json_strings(json.loads(arg))]
        for path, value in injected.items():
            if value.split()[0] in command:
                assert any(value in atom for atom in atoms), (key_text(path), command)
                reached.add(key_text(path))
        assert not list(tmp_path.rglob("pwned")), command
    # the free-text values do reach commands: adapters, sources, adapter options, the system prompt
    assert {"prompt.system_prompt", "teacher.source"} <= reached
    assert any(key.endswith(".adapter") for key in reached) and any(key.endswith(".source") for key in reached)


@pytest.mark.failure_mode(
    "config text holding markup (</script><img onerror=...>) in a value that reaches a rule's params",
    sees="nothing: the params carry it as JSON escapes, so Snakemake's report page embeds no live markup",
    kept="the value itself, which the stages read back unchanged")
def test_markup_in_config_values_reaches_params_only_as_json_escapes(tmp_path):
    markup = "</script><img src=x onerror=alert(1)> & more"

    def change(config):
        config["paper_reference"] = {"notes": [markup]}
        config["prompt"]["system_prompt"] = markup
    result = snakemake(tmp_path, "--configfile", str(write_config(tmp_path, change)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "</script>" not in result.stdout and "<img" not in result.stdout
    assert "\\u003c/script\\u003e\\u003cimg src=x onerror=alert(1)\\u003e \\u0026 more" in result.stdout
    assert json.loads(params_json({"notes": [markup]}, tmp_path)) == {"notes": [markup]}


@pytest.mark.failure_mode(
    "a profile's slurm_extra (or another value the SLURM executor submits) holding ; | & $ ` or a line break",
    sees="planning stops naming the profile section, the resource, its value and the metacharacters",
    kept="everything; no job is submitted and no command runs on the submitting host")
@pytest.mark.parametrize("option", [("--default-resources", "slurm_extra='--qos=x; touch pwned'"),
                                    ("--set-resources", "train:slurm_account='$(touch pwned)'"),
                                    ("--set-resources", "train:tasks='1;touch pwned'")])
def test_shell_metacharacters_in_submitted_resources_stop_planning(tmp_path, option):
    result = snakemake(tmp_path, "--configfile", str(CONFIGS[0]), *option)
    output = assert_clean_stop(result)
    name = option[1].split("=")[0].split(":")[-1]
    assert re.search(rf"^profile (default-resources|set-resources train): {name} = .* holds the shell "
                     r"metacharacter\(s\) ", output, re.MULTILINE), output[-2000:]
    assert not list(tmp_path.rglob("pwned"))
    ok = snakemake(tmp_path, "--configfile", str(CONFIGS[0]), "--default-resources", "slurm_extra='--qos=long'")
    assert ok.returncode == 0, ok.stderr[-2000:]


@pytest.mark.failure_mode(
    "settings too long for a command line: a 140 kB system prompt, the report plan of 30 students x 3 seeds",
    sees="nothing: such a value reaches its job as @<file> named by its digest, so every command stays far below "
         "Linux's 128 KiB per argument (the jobs used to fail with 'Argument list too long')",
    kept="the value, which the stage reads back from the file unchanged")
def test_long_settings_reach_their_jobs_through_files(tmp_path):
    def change(config):
        config["prompt"]["system_prompt"] = "Think step by step. " * 7000
        config["students"] = [{**config["students"][0], "name": f"student{i}"} for i in range(30)]
        config["seeds"] = [7, 8, 9]
    result = snakemake(tmp_path, "--configfile", str(write_config(tmp_path, change)))
    assert result.returncode == 0, result.stderr[-3000:]
    commands = shell_commands(result.stdout)
    assert commands and max(map(len, commands)) < 16384
    report = next(command for command in commands if " report --plan " in command)
    plan_file = tmp_path / shlex.split(report)[shlex.split(report).index("--plan") + 1].removeprefix("@")
    assert plan_file.parent == tmp_path / ".snakemake" / "advdistill" / "params"
    plan = json.loads(plan_file.read_text())
    assert len(plan_file.read_text()) > 131072 and len(plan["trained"]) == 30 * 2 * 3
    bootstrap = next(command for command in commands if " bootstrap-model " in command)
    prompt_file = tmp_path / shlex.split(bootstrap)[shlex.split(bootstrap).index("--prompt") + 1].removeprefix("@")
    assert json.loads(prompt_file.read_text())["system_prompt"] == "Think step by step. " * 7000


def test_every_shell_placeholder_is_quoted():
    """Each `{...}` of every rule's shell command is shell-quoted (`:q`), wildcards and paths included."""
    for rules in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        for shell in re.findall(r"^    shell:\n((?:        .*\n)+)", rules.read_text(), flags=re.MULTILINE):
            placeholders = re.findall(r"\{([^}]*)\}", shell)
            assert placeholders and all(p.endswith(":q") for p in placeholders), (rules.name, shell)


def write_config(tmp_path: Path, change) -> Path:
    config = yaml.safe_load(CONFIGS[0].read_text())
    change(config)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def add_student(name):
    return lambda config: config["students"].append({**config["students"][0], "name": name})


def set_key(path, value):
    return lambda config: set_at(config, path, value)


@pytest.mark.parametrize("change, message", [
    (set_key(("score", "reward_weights"), {"cosine": 2.0, "lenght": 1.0}),
     "config score.reward_weights: key 'lenght' is not one of ['cosine', 'format', 'correctness']"),
    (set_key(("score", "reward_weights"), {"cosine": 0, "format": 0.0}),
     "config score.reward_weights: no reward has a non-zero weight"),
    (set_key(("sampling", "temperature"), 0),
     "config sampling.n_samples: 3 responses per prompt at sampling.temperature 0 (greedy decoding) would all be "
     "the same; set n_samples to 1 or a temperature above 0"),
    (set_key(("training", "optim", "lr_scheduler"), "cosine_with_min_lr"),
     "config training.optim.lr_scheduler: 'cosine_with_min_lr' is not one of ['linear', 'cosine'"),
    (set_key(("seed",), 2**32), "config seed: 4294967296 is greater than the maximum of 4294967295"),
    (set_key(("seed",), -1), "config seed: -1 is less than the minimum of 0"),
    (set_key(("teacher", "name"), ".."), "config teacher.name: '..' is not a name used as one path component"),
    (set_key(("datasets", "arith", "splits"), ["train", "../test"]),
     "config datasets.arith.splits[1]: '../test' is not a name used as one path component"),
    (set_key(("students", 0, "name"), "-student"), "config students[0].name: '-student' is not a name"),
    (add_student("student-sft"), "config students[0].objectives ('sft', trained as 'student-sft') and "
                                 "students[1].name both give the model name 'student-sft'"),
    (set_key(("teacher", "name"), "student-base"), "config teacher.name: 'student-base' ends in '-base', the name of "
                                                   "student 'student's base model"),
    (set_key(("variants",), {"../up": {"training": {"loss": {"lam": 0.0}}}}),
     "config variants: key '../up' is not a name used as one path component"),
    (set_key(("variants",), {"seed3": {"training": {"loss": {"lam": 0.0}}}}),
     "config variants: key 'seed3' is reserved: seed<digits> names a replicate seed"),
    (set_key(("variants",), {"low": {"training": {"loss": {"lamda": 0.0}}}}),
     "config variants.low.training.loss.lamda: unknown key (known: backend, ce_reduction"),
    (set_key(("variants",), {"low": {"training": {"loss": {"lam": -1}}}}),
     "config variants.low.training.loss.lam: -1 is less than the minimum of 0"),
    (set_key(("seeds",), [7, 7]), "config seeds: [7, 7] has non-unique elements"),
    (set_key(("score", "min_correct"), 4), "config score.min_correct: 4 is above sampling.n_samples 3"),
    (set_key(("plain_runs",), False), "config plain_runs: false trains the variants only, but there are no variants"),
    (set_key(("report_name",), "sweep"), "config report_name: replaced by run_name, the folder results/<run_name>"),
    (set_key(("training", "match_steps"), True), "config training.match_steps: removed: SFT and AdvDistill take the "
                                                 "same optimizer steps anyway"),
    (set_key(("variants",), {"long": {"training": {"match_steps": False}}}),
     "config variants.long.training.match_steps: removed"),
    (set_key(("upstream_run",), "elsewhere"), "config upstream_run: 'elsewhere' has no record "
                                              "results/elsewhere/run.json; run that configuration first"),
    (set_key(("upstream_run",), "test_basic"), "config upstream_run: 'test_basic' is this run itself (run_name)"),
    (set_key(("paper_reference",), {"accuracy": {"arith": {"student-dpo": 50.0}}}),
     "config paper_reference.accuracy.arith.student-dpo: not a model this configuration"),
    (set_key(("datasets", "arith", "source"), "./no-such-release.jsonl"),
     "config datasets.arith.source: file ./no-such-release.jsonl not found (split 'train')"),
    (set_key(("students", 0, "source"), "/no/such/model"), "config students[0].source: model folder /no/such/model "
                                                           "not found"),
    (set_key(("students", 0, "source"), "./empty-model"), "config students[0].source: model folder ./empty-model is "
                                                          "empty"),
    (set_key(("students", 0, "source"), str(REPO / "workflow")),
     f"config students[0].source: model folder {REPO / 'workflow'} has no config.json"),
    (lambda config: (set_at(config, ("students", 0, "name"), "s" * 100),
                     set_at(config, ("variants",), {"v" * 100: {"training": {"loss": {"lam": 0.0}}}})),
     f"the file name 'loss_terms_arith_{'s' * 40}...' derived from it needs 261 bytes with the pipeline's "
     "temporary and manifest suffixes, over the file system's limit of 255: shorten the name"),
    (set_key(("students", 0, "source"), str(REPO / "README.md")),
     f"config students[0].source: model folder {REPO / 'README.md'} is not a folder"),
    (set_key(("datasets", "arith", "source"), str(REPO / "workflow")),
     f"config datasets.arith.source: file {REPO / 'workflow'} is not a file (split 'train')"),
    (set_key(("evaluation", "max_new_tokens"), 512), "config evaluation.max_new_tokens: 512 leaves no room for a "
                                                     "prompt in teacher.bootstrap.shape.max_position_embeddings 512"),
    (set_key(("sampling", "max_new_tokens"), 600), "config sampling.max_new_tokens: 600 leaves no room for a "
                                                   "prompt in teacher.bootstrap.shape.max_position_embeddings 512"),
    (set_key(("students", 0, "snapshot", "step"), 5),
     "config students[0].snapshot.step: 5 is beyond the 4 steps of the run of 'teacher'"),
    (set_key(("students", 0, "snapshot", "of"), "student"),
     "config students[0].snapshot.of: 'student' is not another model with source 'bootstrap'"),
    (set_key(("students", 0, "snapshot", "of"), "gpt"),
     "config students[0].snapshot.of: 'gpt' is not another model with source 'bootstrap'"),
    (set_key(("variants",), {"low": {"training": {"report_to": ["tensorboard", "wandbb"]}}}),
     "config variants.low.training.report_to: 'wandbb' is not a tracker transformers offers; the trackers: "),
    (set_key(("variants",), {"low": {"control": "zero", "training": {"loss": {"lam": 0.1}}}}),
     "config variants.low.control: 'zero' is not another variant (variants: low)"),
    (set_key(("variants",), {"low": {"objectives": ["advdistill"], "control": "ref", "training": {}},
                             "ref": {"objectives": ["sft"], "training": {}}}),
     "config variants.low.control: 'ref' does not train ['advdistill'], which 'low' trains; a control must train "
     "the same objective"),
], ids=["unknown-reward", "zero-weights", "greedy-samples", "scheduler", "seed-high", "seed-negative", "dot-dot-name",
        "split-path", "dash-name", "student-sft-collision", "teacher-named-as-a-base", "variant-path",
        "variant-seedlike", "variant-unknown-key", "variant-bad-value", "repeated-seed", "min-correct-above-samples",
        "variants-only-none",
        "report-name-replaced", "match-steps-removed", "variant-match-steps-removed", "upstream-never-run", "upstream-itself",
        "paper-unknown-model", "missing-local-release", "missing-local-model", "empty-local-model",
        "broken-local-model", "file-name-too-long",
        "model-source-a-file", "dataset-source-a-folder",
        "evaluation-past-context", "sampling-past-context", "snapshot-past-run", "snapshot-of-itself",
        "snapshot-of-unknown", "variant-unknown-tracker", "variant-control-unknown",
        "variant-control-other-objective"])
@pytest.mark.failure_mode(
    "a snapshot student naming a model that is not bootstrapped, or a step beyond its run",
    sees="planning stops naming students[i].snapshot.of or .step and the run's max_steps",
    kept="everything; no job starts")
@pytest.mark.failure_mode(
    "sampling or evaluation max_new_tokens at or beyond a bootstrapped model's context",
    sees="planning stops naming the key, the model's max_position_embeddings and both numbers",
    kept="everything; no job starts")
@pytest.mark.failure_mode(
    "names that are valid alone but derive a file name over the 255-byte limit (a 100-character student and "
    "variant: the report's loss plot)",
    sees="planning stops naming the keys, the name, the bytes it needs and the limit", kept="everything; no job "
                                                                                             "starts")
@pytest.mark.failure_mode(
    "a local model folder (a model's source, or the local_sources entry of its hub id) that is empty or lacks "
    "config.json, complete weights, a tokenizer, a chat template or an end-of-sequence token",
    sees="planning stops naming the key, the folder and what it lacks (the check each stage makes before loading a "
         "model, advdistill/model_folders.py), not the first GPU job",
    kept="everything; no job starts")
@pytest.mark.failure_mode(
    "a dataset or model source that is a local path (absolute, ./, ../, ~ or a release-file suffix) that does "
    "not exist",
    sees="planning stops naming datasets.<name>.source or <model>.source and the path", kept="everything; no job "
                                                                                          "starts")
@pytest.mark.failure_mode(
    "a training variant that is not a safe name, looks like a seed suffix, or overrides an unknown or invalid "
    "training key; a seed listed twice",
    sees="planning stops naming variants.<name>.training.<key> (or seeds) and what is wrong",
    kept="everything; no job starts")
@pytest.mark.failure_mode(
    "score.min_correct above sampling.n_samples (no group could ever be kept)",
    sees="planning stops naming both keys and values", kept="everything; no job starts")
@pytest.mark.failure_mode(
    "upstream_run naming a run that never ran here, or this run itself",
    sees="planning stops naming upstream_run and the missing record", kept="everything; no job starts")
@pytest.mark.failure_mode(
    "plain_runs: false (train the variants only) without any variant",
    sees="planning stops naming plain_runs: nothing would be trained", kept="everything; no job starts")
@pytest.mark.failure_mode(
    "paper_reference names a model or test set the configuration does not evaluate (a typo would hide a row)",
    sees="planning stops naming paper_reference.<table>.<set>.<model> and the models evaluated",
    kept="everything; no job starts")
@pytest.mark.failure_mode(
    "unknown reward name, or no non-zero weight, in score.reward_weights",
    sees="planning stops naming score.reward_weights and the known rewards", kept="everything; no job starts")
@pytest.mark.failure_mode(
    "sampling.temperature 0 with sampling.n_samples > 1",
    sees="planning stops naming both keys (greedy decoding gives identical samples)",
    kept="everything; no job starts")
@pytest.mark.failure_mode(
    "unknown training.optim.lr_scheduler (or one needing arguments the trainer does not pass)",
    sees="planning stops naming the key and the schedulers offered", kept="everything; no job starts")
@pytest.mark.failure_mode(
    "seed outside 0 .. 2**32 - 1", sees="planning stops naming seed and the range", kept="everything; no job starts")
@pytest.mark.failure_mode(
    "model, dataset, split or experiment name that is not one safe path component ('..', '.x', '-x', 'a/b')",
    sees="planning stops naming the key and what a name may contain", kept="everything; no job starts")
@pytest.mark.failure_mode(
    "derived model names collide (students 'x' and 'x-sft', or a teacher named '<student>-base')",
    sees="planning stops naming both config keys and the shared name", kept="everything; no job starts")
def test_bad_config_stops_planning_with_one_message_naming_the_key(tmp_path, change, message):
    (tmp_path / "empty-model").mkdir()
    result = snakemake(tmp_path, "--configfile", str(write_config(tmp_path, change)))
    output = assert_clean_stop(result)
    assert message in output
    assert not (tmp_path / "results").exists()


def offline_env(tmp_path: Path) -> dict[str, str]:
    """HF_HUB_OFFLINE=1 with empty Hugging Face caches (hub and datasets) of the test's own."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
            "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"), "HF_DATASETS_CACHE": str(tmp_path / "hf" / "datasets")}


@pytest.mark.failure_mode(
    "HF_HUB_OFFLINE=1 and a model or dataset hub id that local_sources does not map and the Hugging Face cache "
    "does not hold (the stage would stop at once on its node)",
    sees="planning stops naming the key (teacher/students[i].source, datasets.<name>.source), the hub id, the cache "
         "and local_sources as the way out; a hub model the cache holds plans",
    kept="everything; no job starts")
def test_an_unmapped_hub_id_under_hf_hub_offline_stops_planning(tmp_path, tiny_model_dir):
    env = offline_env(tmp_path)
    output = assert_clean_stop(snakemake(tmp_path, "--configfile", str(write_config(
        tmp_path, set_key(("students", 0, "source"), "nobody/no-such-model"))), env=env))
    assert (f"config students[0].source: 'nobody/no-such-model' is not in the Hugging Face cache "
            f"({tmp_path / 'hf' / 'hub'}) and HF_HUB_OFFLINE=1 forbids downloading it; give a local model folder "
            "instead (in a workflow config: local_sources maps the hub id to it)") in output

    def hub_dataset(config):
        config["datasets"]["arith_ood"] = {"adapter": "gsm_plus", "source": "qtli/GSM-Plus", "splits": ["test"]}
    output = assert_clean_stop(snakemake(tmp_path, "--configfile", str(write_config(tmp_path, hub_dataset)), env=env))
    assert ("config datasets.arith_ood.source: 'qtli/GSM-Plus' is not in the datasets cache and HF_HUB_OFFLINE=1 "
            "forbids downloading it (ConnectionError: ") in output
    assert "map it to a local copy of its release file in local_sources" in output

    commit = "0" * 40
    snapshot = tmp_path / "hf" / "hub" / "models--owner--tiny" / "snapshots" / commit  # the copy the stage loads
    shutil.copytree(tiny_model_dir, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text(commit)
    result = snakemake(tmp_path, "--configfile", str(write_config(tmp_path, set_key(("students", 0, "source"),
                                                                                    "owner/tiny"))), env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "--model owner/tiny " in result.stdout


def test_plain_runs_false_trains_the_variants_only():
    config = yaml.safe_load(CONFIGS[0].read_text())
    config.update(seeds=[config["seed"], 5], plain_runs=False,
                  variants={"short": {"objectives": ["sft"], "training": {"optim": {"max_steps": 3}}},
                            "lam0": {"training": {"loss": {"lam": 0.0}}}})
    names = [run.name for run in trained_runs(config)]
    assert names == ["student-sft@short", "student-sft@short@seed5", "student-sft@lam0", "student-sft@lam0@seed5",
                     "student-advdistill@lam0", "student-advdistill@lam0@seed5"]
    config["plain_runs"] = True
    assert [run.name for run in trained_runs(config)][:4] == [
        "student-sft", "student-sft@seed5", "student-advdistill", "student-advdistill@seed5"]


def test_edge_values_plan(tmp_path):
    """The valid side of each check above, all in one config."""
    def change(config):
        config["seed"] = 2**32 - 1
        config["sampling"].update(temperature=0, n_samples=1)
        config["score"]["reward_weights"] = {"cosine": 0, "correctness": 1.5}
        config["training"]["optim"]["lr_scheduler"] = "constant_with_warmup"
        config["teacher"]["name"] = "teacher.v1_0"
        config["students"][0]["snapshot"]["of"] = "teacher.v1_0"
        config["students"].append({**config["students"][0], "name": "student-sft.v2", "objectives": ["sft"]})
    result = snakemake(tmp_path, "--configfile", str(write_config(tmp_path, change)))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "results/test_basic/evaluate/arith/student-sft.v2-sft/arith/metrics.json" in result.stdout
    assert "--seed 4294967295" in result.stdout


@pytest.mark.failure_mode(
    "a key given twice in a --configfile",
    sees="planning stops: the file, line and column of the second one, the key, and the line of the first",
    kept="everything; no job starts")
def test_repeated_key_in_a_configfile_stops_planning(tmp_path):
    text = CONFIGS[0].read_text()
    (tmp_path / "twice.yaml").write_text(text + "seed: 8\n")
    output = assert_clean_stop(snakemake(tmp_path, "--configfile", "twice.yaml"))
    line = text.count("\n") + 1
    assert f"twice.yaml, line {line}, column 1: key 'seed' is given twice in this mapping (first on line " in output
    assert "YAML keeps only the last value" in output


@pytest.mark.failure_mode(
    "--configfile given twice (Snakemake keeps the last one's files alone)",
    sees="planning stops saying so and how to give several files", kept="everything; no job starts")
def test_a_second_configfile_option_stops_planning(tmp_path):
    output = assert_clean_stop(snakemake(tmp_path, "--configfile", str(CONFIGS[0]), "--configfile",
                                         str(REPO / "config" / "ablation.yaml")))
    assert "--configfile is given 2 times, and Snakemake keeps the files of the last one alone" in output


@pytest.mark.failure_mode(
    "a YAML alias bomb in a --configfile (a 1 kB file whose nested aliases expand to a billion values)",
    sees="planning stops at once naming the file, the expanded count and the limit", kept="everything; no job starts")
def test_a_yaml_alias_bomb_stops_planning_at_once(tmp_path):
    levels = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    (tmp_path / "bomb.yaml").write_text(CONFIGS[0].read_text() + "\n".join(
        ["x_bomb:", *(f"  {line}" for line in levels)]) + "\n")
    output = assert_clean_stop(snakemake(tmp_path, "--configfile", "bomb.yaml"))
    assert re.search(r"config file \S*bomb.yaml: its YAML aliases expand to 1,2\d\d,\d{3},\d{3} values, over the "
                     r"limit of 100,000 \(an alias bomb\?\)", output), output[-2000:]


@pytest.mark.failure_mode(
    "YAML syntax error in config.yaml",
    sees="planning stops: the file, line and column of the error and what the parser expected (a file given with "
         "--configfile is read by Snakemake before the workflow: its own message, without the line)",
    kept="everything; no job starts")
def test_yaml_error_in_config_yaml_stops_planning_with_line_and_column(tmp_path):
    (tmp_path / "config.yaml").write_text(CONFIGS[0].read_text().replace("splits: [train, test]", "splits: [train"))
    output = assert_clean_stop(snakemake(tmp_path))
    assert re.search(r"config file config.yaml, line \d+, column \d+: YAML syntax error: while parsing a flow "
                     r"sequence", output), output


@pytest.mark.failure_mode(
    "--configfile given where config.yaml exists (e.g. a paper config run from the repository)",
    sees="the run is the config file's alone: config.yaml's datasets and experiments are not merged into it",
    kept="config.yaml, unused")
def test_configfile_replaces_config_yaml(tmp_path):
    (tmp_path / "config.yaml").write_text((REPO / "config.yaml").read_text())
    result = snakemake(tmp_path, "--configfile", str(REPO / "config/paper/gsm8k.yaml"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "prepare/arith" not in result.stdout and "results/gsm8k/prepare/gsm8k/train.parquet" in result.stdout
    # without --configfile, config.yaml is the config
    result = snakemake(tmp_path)
    assert result.returncode == 0 and "results/default/prepare/arith/train.parquet" in result.stdout
