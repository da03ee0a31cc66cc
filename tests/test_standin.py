"""Stand-in models: saved the way the Qwen2.5 base releases are (bf16 safetensors, ChatML, <|endoftext|>)."""

import json

import pytest
from safetensors import safe_open
from transformers import AutoTokenizer

from advdistill.cli import main
from advdistill.provenance import STAND_IN_KEY, model_record
from advdistill.standin import DEFAULT_SYSTEM_PROMPT, END_OF_TEXT


@pytest.fixture(scope="module")
def standin_dir(tmp_path_factory, rows_file):
    out = tmp_path_factory.mktemp("standin") / "qwen2.5-1.5b"
    assert main(["standin", "--like", "Qwen/Qwen2.5-1.5B", "--rows", str(rows_file), "--out", str(out)]) == 0
    return out


def test_standin_is_saved_like_a_qwen25_release(standin_dir):
    config = json.loads((standin_dir / "config.json").read_text())
    assert (config["model_type"], config["architectures"], config["dtype"]) == ("qwen2", ["Qwen2ForCausalLM"],
                                                                                "bfloat16")
    assert config["tie_word_embeddings"] is True  # like the 1.5B release; the 7B stand-in is untied
    with safe_open(standin_dir / "model.safetensors", "pt") as weights:
        dtypes = {str(weights.get_slice(name).get_dtype()) for name in weights.keys()}
    assert dtypes == {"BF16"}
    tokenizer = AutoTokenizer.from_pretrained(standin_dir)
    eos = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    assert (tokenizer.eos_token, tokenizer.pad_token) == (END_OF_TEXT, END_OF_TEXT)
    assert config["eos_token_id"] == config["bos_token_id"] == eos
    assert json.loads((standin_dir / "generation_config.json").read_text())["eos_token_id"] == eos
    assert json.loads((standin_dir / "standin.json").read_text())["stands_in_for"] == "Qwen/Qwen2.5-1.5B"
    assert config[STAND_IN_KEY] == "Qwen/Qwen2.5-1.5B"  # what manifests and the report's banner go by
    assert model_record(str(standin_dir))["stands_in_for"] == "Qwen/Qwen2.5-1.5B"
    assert (standin_dir.parent / "qwen2.5-1.5b.manifest.json").exists()


def test_standin_chat_template_is_chatml_with_a_default_system_turn(standin_dir):
    tokenizer = AutoTokenizer.from_pretrained(standin_dir)
    user = [{"role": "user", "content": "2+2?"}]
    assert tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True) == (
        f"<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n")
    system = [{"role": "system", "content": "Be brief."}, *user, {"role": "assistant", "content": "4"}]
    assert tokenizer.apply_chat_template(system, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>\n")


def test_unknown_hub_id_is_named(rows_file, tmp_path, capsys):
    assert main(["standin", "--like", "Qwen/Qwen2.5-70B", "--rows", str(rows_file), "--out", str(tmp_path / "m")]) == 2
    assert "no stand-in for 'Qwen/Qwen2.5-70B'" in capsys.readouterr().err
