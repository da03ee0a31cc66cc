"""A model folder is checked before a stage loads it: each way of being broken is one line naming the folder."""

from __future__ import annotations

import json
import shutil

import pytest

from advdistill.errors import InputError
from advdistill.model_folders import check_model_source, model_folder_problem
from tests.helpers import files_under, run_cli


def _strip_eos(folder):
    for name in ("tokenizer_config.json", "generation_config.json", "config.json"):
        data = json.loads((folder / name).read_text())
        for key in ("eos_token", "eos_token_id"):
            data.pop(key, None)
        (folder / name).write_text(json.dumps(data))


BREAKAGES = {
    "no config.json": (lambda f: (f / "config.json").unlink(), "has no config.json"),
    "half the weights": (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[
        :(f / "model.safetensors").stat().st_size // 2]), "model.safetensors is truncated or damaged"),
    "no weights": (lambda f: (f / "model.safetensors").unlink(), "has no weights"),
    "no tokenizer": (lambda f: (f / "tokenizer.json").unlink(), "has no tokenizer"),
    "no chat template": (lambda f: (f / "chat_template.jinja").unlink(), "has no chat template"),
    "no EOS token": (_strip_eos, "names no end-of-sequence token"),
    "empty": (lambda f: [p.unlink() for p in f.iterdir()], "is empty"),
    "damaged generation config": (lambda f: (f / "generation_config.json").write_text("{not json"),
                                  "has a generation_config.json that is not a JSON object"),
    "no model_type": (lambda f: _edit_json(f / "config.json", lambda c: c.pop("model_type")),
                      "has a config.json without a model_type"),
    "cut-off tokenizer": (lambda f: (f / "tokenizer.json").write_text('{"version": "1.0", "trunc'),
                          "has a tokenizer.json that is not a JSON object"),
    "tokenizer larger than the model": (lambda f: _edit_json(f / "config.json", lambda c: c.update(vocab_size=8)),
                                        r"has a tokenizer whose token ids reach \d+, beyond config.json vocab_size 8"),
    "broken chat template": (lambda f: (f / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }"),
                             r"has a chat template that does not parse \(line 1: "),
}


def _edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.failure_mode(
    "model folder without config.json (or its model_type), with half a model.safetensors, without tokenizer, chat "
    "template or EOS token, with a cut-off tokenizer.json, a tokenizer larger than the model's vocabulary, a chat "
    "template that does not parse, a damaged generation_config.json, or empty (sample, train, evaluate)",
    sees="one line: --model: model folder <path> <what is wrong>, exit 2, before any model is loaded",
    kept="everything")
@pytest.mark.parametrize("breakage", BREAKAGES)
def test_a_broken_model_folder_is_named_with_what_is_wrong(tiny_model_dir, tmp_path, breakage):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    assert model_folder_problem(folder) is None
    damage, expected = BREAKAGES[breakage]
    damage(folder)
    with pytest.raises(InputError, match=rf"^--model: model folder {folder} {expected}"):
        check_model_source(str(folder))


def test_a_missing_local_model_is_an_error_and_a_hub_id_is_left_to_the_hub(tmp_path):
    with pytest.raises(InputError, match=f"--model: no such model folder: {tmp_path / 'gone'}"):
        check_model_source(str(tmp_path / "gone"))
    with pytest.raises(InputError, match="no such model folder: ./models/teacher"):
        check_model_source("./models/teacher")
    check_model_source("Qwen/Qwen2.5-1.5B")


def test_evaluate_stops_on_a_broken_model_before_loading_it(capsys, tiny_model_dir, rows_file, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "config.json").unlink()
    before = files_under(tmp_path)
    code, err = run_cli(capsys, "evaluate", "--model", str(folder), "--rows", rows_file, "--out",
                        tmp_path / "responses.parquet", "--metrics", tmp_path / "metrics.json")
    assert code == 2 and "Traceback" not in err
    assert err.strip() == f"advdistill evaluate: error: --model: model folder {folder} has no config.json"
    assert files_under(tmp_path) == before
