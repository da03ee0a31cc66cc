"""Rerun reasons name the changed config keys with old and new values (advdistill/rerun_reasons.py); the workflow
test of a one-key edit is in tests/test_workflow.py."""

from __future__ import annotations

import json

from advdistill.planning import params_json
from advdistill.rerun_reasons import describe_change

TRAINING = {"optim": {"learning_rate": 0.001, "max_steps": 2}, "loss": {"lam": 0.5}, "report_to": "none"}
SCORE = {"min_correct": 1, "cosine": {"max_length": 16}}


def recorded(value) -> str:
    """A parameter as Snakemake records it: the repr of the value the rule passes."""
    return repr(value)


def edited(section, **changes):
    section = json.loads(json.dumps(section))
    for path, value in changes.items():
        *parents, key = path.split("__")
        node = section
        for parent in parents:
            node = node[parent]
        node[key] = value
    return section


def test_one_changed_key_is_one_line_with_both_values(tmp_path):
    old, new = params_json(TRAINING, tmp_path), params_json(edited(TRAINING, optim__learning_rate=0.002), tmp_path)
    lines = describe_change([recorded(old)], [recorded(new)], {recorded(new): "training"})
    assert lines == ["training.optim.learning_rate: 0.001 -> 0.002"]


def test_each_json_parameter_is_compared_with_its_own_old_value(tmp_path):
    """Recorded values carry no names: two changed sections and a changed seed are paired by likeness."""
    old = [params_json(TRAINING, tmp_path), params_json(SCORE, tmp_path), 7]
    new = [params_json(edited(TRAINING, loss__lam=0.25, report_to=["tensorboard"]), tmp_path),
           params_json(edited(SCORE, cosine__max_length=32), tmp_path), 8]
    labels = dict(zip(map(recorded, new), ["training", "score", "seed"]))
    lines = describe_change(map(recorded, old), map(recorded, new), labels)
    assert lines == ["score.cosine.max_length: 16 -> 32", "seed: 7 -> 8", "training.loss.lam: 0.5 -> 0.25",
                     'training.report_to: "none" -> ["tensorboard"]']


def test_added_and_removed_keys_and_long_values(tmp_path):
    old = params_json({"system_prompt": None, "few_shot": 0}, tmp_path)
    new = params_json({"system_prompt": "x" * 500, "template": "chat"}, tmp_path)
    lines = describe_change([recorded(old)], [recorded(new)], {recorded(new): "prompt"})
    assert lines[0] == "prompt.few_shot: 0 -> (unset)"
    assert lines[1].startswith('prompt.system_prompt: null -> "xxx') and lines[1].endswith("...")
    assert len(lines[1]) < 150
    assert lines[2] == 'prompt.template: (unset) -> "chat"'


def test_a_section_stored_in_a_file_is_read_from_it(tmp_path):
    """A long section reaches its rule as @<file> (params_json); the reason compares the files' contents."""
    long = {"system_prompt": "y" * 9000, "few_shot": 0}
    old, new = params_json(long, tmp_path), params_json({**long, "few_shot": 2}, tmp_path)
    assert old.startswith("@") and new.startswith("@")
    lines = describe_change([recorded(old)], [recorded(new)], {recorded(new): "prompt"})
    assert lines == ["prompt.few_shot: 0 -> 2"]
