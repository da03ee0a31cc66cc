"""The memory plan: parameter counts, estimator behaviour, the gpu_mem_gb gate and GPU resources in a dry run."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml

from advdistill import devices
from advdistill.config import OptimConfig, SamplingConfig, TrainingConfig
from advdistill.memory_plan import (
    QWEN25,
    architecture_from_config,
    check_plan,
    find_architecture,
    format_plan,
    inference_estimate,
    plan_memory,
    training_estimate,
)
from tests.helpers import REPO

PAPER = REPO / "config" / "paper" / "gsm8k.yaml"

# Totals of the Qwen2.5 model cards in billions, within one unit of their last digit (the cards cut
# rather than round in places: 14.77B is "14.7B"). The 32B card's "32.5B" disagrees with its own
# checkpoint (65,527,752,704 bytes of bf16 = 32.76B), so that one is checked to the parameter below.
PUBLISHED_BILLIONS = {"0.5B": (0.49, 0.01), "1.5B": (1.54, 0.01), "3B": (3.09, 0.01), "7B": (7.61, 0.01),
                      "14B": (14.7, 0.1), "72B": (72.7, 0.1)}


@pytest.mark.parametrize("size", sorted(PUBLISHED_BILLIONS))
def test_qwen25_parameter_counts_match_the_published_totals(size):
    published, last_digit = PUBLISHED_BILLIONS[size]
    assert QWEN25[f"Qwen/Qwen2.5-{size}"].parameters / 1e9 == pytest.approx(published, abs=last_digit)


def test_qwen25_hand_counted_parameters():
    # 1.5B: d 1536, 28 layers, 12 heads / 2 KV heads of 128, MLP 8960, vocabulary 151936, tied embeddings
    attention = 1536 * 1536 + 2 * 1536 * 256 + 1536 * 1536 + (1536 + 2 * 256)  # q, k, v, o, q/k/v bias
    layer = attention + 3 * 1536 * 8960 + 2 * 1536  # SwiGLU MLP, two RMSNorms
    assert QWEN25["Qwen/Qwen2.5-1.5B"].parameters == 28 * layer + 151936 * 1536 + 1536 == 1_543_714_304
    assert QWEN25["Qwen/Qwen2.5-32B"].parameters == 32_763_876_352
    # untied 7B: embedding and LM head of 152064 x 3584 each
    assert QWEN25["Qwen/Qwen2.5-7B"].embedding_parameters == 2 * 152064 * 3584


def test_architecture_from_a_local_config_json(tmp_path):
    config = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "intermediate_size": 128, "vocab_size": 1000, "tie_word_embeddings": False}
    (tmp_path / "config.json").write_text(json.dumps(config))
    arch, origin = find_architecture(str(tmp_path))
    assert origin == f"config.json in {tmp_path}"
    assert (arch.num_key_value_heads, arch.head_dim, arch.qkv_bias) == (4, 16, False)  # Llama defaults
    assert arch.parameters == 2 * (4 * 64 * 64 + 3 * 64 * 128 + 2 * 64) + 2 * 1000 * 64 + 64


def test_architecture_from_the_hugging_face_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    snapshot = tmp_path / "models--someone--tiny" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(
        {"model_type": "qwen2", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
         "num_key_value_heads": 1, "intermediate_size": 64, "vocab_size": 100, "tie_word_embeddings": True}))
    (tmp_path / "models--someone--tiny" / "refs").mkdir()
    (tmp_path / "models--someone--tiny" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    arch, origin = find_architecture("someone/tiny")
    assert origin == "config.json in the Hugging Face cache"
    assert arch.hidden_size == 32 and arch.tie_word_embeddings


def test_a_broken_local_folder_is_told_from_a_missing_one(tmp_path):
    assert find_architecture(str(tmp_path)) == (None, f"model folder {tmp_path} is empty")
    (tmp_path / "tokenizer.json").write_text("{}")
    assert find_architecture(str(tmp_path)) == (None, f"model folder {tmp_path} has no config.json")
    assert find_architecture(str(tmp_path / "gone")) == (None, f"model folder {tmp_path / 'gone'} not found")


def test_table_shapes_are_named_and_unknown_models_are_not_guessed():
    assert find_architecture("Qwen/Qwen2.5-7B-Instruct") == (QWEN25["Qwen/Qwen2.5-7B"], "built-in Qwen2.5 table")
    arch, origin = find_architecture("nobody/no-such-model-7b")
    assert arch is None and origin.startswith("no config.json for 'nobody/no-such-model-7b'")
    with pytest.raises(ValueError, match="model_type 'mixtral' is not a dense decoder"):
        architecture_from_config({"model_type": "mixtral"})


def train(objective="advdistill", gpu_mem_gb=None, batch=1, **settings):
    cfg = TrainingConfig(optim=OptimConfig(max_seq_length=2048, per_device_batch_size=batch), **settings)
    return training_estimate(f"s-{objective}", objective, QWEN25["Qwen/Qwen2.5-1.5B"], "table", cfg, 8,
                             gpu_rules=True, gpu_mem_gb=gpu_mem_gb)


def test_gradient_checkpointing_lowers_activations():
    full, checkpointed = train(), train(gradient_checkpointing=True)
    assert checkpointed.parts["activations"] < full.parts["activations"] / 5
    assert checkpointed.gib < full.gib
    assert {k: v for k, v in checkpointed.parts.items() if k != "activations"} == \
        {k: v for k, v in full.parts.items() if k != "activations"}


def test_fsdp_shards_model_states_and_ddp_replicates_them():
    single, fsdp, ddp = train(), train(processes=4, fsdp=True), train(processes=4)
    for part in ("weights", "gradients", "adamw"):
        assert fsdp.parts[part] == pytest.approx(single.parts[part] / 4, abs=0.01)
        assert ddp.parts[part] == single.parts[part]
    assert "ddp_buckets" in ddp.parts and "ddp_buckets" not in single.parts
    assert fsdp.parts["activations"] == single.parts["activations"]
    assert (fsdp.gpus, ddp.gpus, single.gpus) == (4, 4, 1)


def test_precision_orders_the_model_states():
    mixed, pure, fp32 = train(precision="bf16-mixed"), train(precision="bf16-pure"), train(precision="fp32")
    states = {name: sum(e.parts[p] for p in ("weights", "gradients", "adamw")) for name, e in
              (("mixed", mixed), ("pure", pure), ("fp32", fp32))}
    assert states["mixed"] == states["fp32"] == pytest.approx(2 * states["pure"], rel=0.01)
    assert mixed.gib > pure.gib
    assert fp32.parts["activations"] > mixed.parts["activations"]  # 4-byte activations
    assert train(precision="auto").note.startswith("bf16-mixed")  # a GPU run


def test_auto_precision_of_a_cpu_run_is_the_trainer_s(monkeypatch):
    """On a CPU run the plan resolves ``auto`` as the trainer will on this machine (advdistill.devices)."""
    cfg = TrainingConfig(optim=OptimConfig(max_seq_length=2048))
    for flags, expected in (({"amx_bf16"}, "bf16-mixed"), ({"avx2"}, "fp32")):
        monkeypatch.setattr(devices, "cpu_flags", lambda flags=flags: frozenset(flags))
        estimate = training_estimate("s", "advdistill", QWEN25["Qwen/Qwen2.5-1.5B"], "table", cfg, 8,
                                     gpu_rules=False, gpu_mem_gb=None)
        assert estimate.note.startswith(expected)


def test_sft_micro_batch_is_per_device_batch_size():
    assert train("sft").parts["activations"] * 4 < train("advdistill").parts["activations"]


def test_advdistill_micro_batch_is_per_device_batch_size_groups():
    """per_device_batch_size counts prompts for both objectives: 4 groups of 8 responses are 32 sequences, the
    activations of 8 SFT micro-batches of 4 (the parts that scale with the micro-batch's tokens)."""
    one, four = train("advdistill"), train("advdistill", batch=4)
    assert four.parts["activations"] == pytest.approx(4 * one.parts["activations"], rel=0.01)
    assert four.parts["activations"] == pytest.approx(train("sft", batch=32).parts["activations"], rel=0.01)
    assert "micro-batch 4 group(s) x 8 = 32 x 2048 tokens" in four.note
    assert "micro-batch 1 group(s) x 8 = 8 x 2048 tokens" in one.note
    assert "or training.optim.per_device_batch_size" in four.fix
    assert "per_device_batch_size" not in one.fix


def test_vllm_splits_over_tensor_parallel_and_counts_sequences_that_fit():
    def sample(model, tp, gpu_mem_gb=80):
        engine = SamplingConfig(backend="vllm", dtype="bfloat16", tensor_parallel_size=tp, max_model_len=4096)
        return inference_estimate("sample", model, QWEN25[model], "table", engine, 2048, True, gpu_mem_gb)

    one, two = sample("Qwen/Qwen2.5-7B", 1), sample("Qwen/Qwen2.5-7B", 2)
    assert two.parts["weights"] == pytest.approx(one.parts["weights"] / 2, abs=0.01)
    assert one.budget_gib == 72.0 and one.fits and re.search(r"KV cache: \d+ at once", one.note)
    too_large = sample("Qwen/Qwen2.5-72B", 1)
    assert not too_large.fits and "KV cache: 0 at once" in too_large.note
    assert sample("Qwen/Qwen2.5-72B", 4).fits
    assert sample("Qwen/Qwen2.5-7B", 1, gpu_mem_gb=None).fits is None


def test_check_plan_names_stage_model_estimate_and_fix():
    estimates = [train(gpu_mem_gb=40), train(gpu_mem_gb=40, gradient_checkpointing=True)]
    assert [e.fits for e in estimates] == [False, True]
    with pytest.raises(ValueError, match=r"train of s-advdistill: about \d+\.\d GiB per GPU, more than 40 GiB; "
                                         r"set training.gradient_checkpointing: true"):
        check_plan(estimates, 40)
    assert "NO (> 40)" in format_plan(estimates) and "yes (<= 40)" in format_plan(estimates)


def test_plan_of_the_paper_config_and_unknown_models():
    config = yaml.safe_load(PAPER.read_text())
    config["students"][1]["source"] = "nobody/no-such-model"
    sources = {m["name"]: m["source"] for m in [config["teacher"], *config["students"]]}
    plan = plan_memory(config, sources)
    assert [(e.stage, e.model) for e in plan] == [
        ("sample", "qwen2.5-7b"), ("train", "qwen2.5-1.5b-sft"), ("train", "qwen2.5-1.5b-advdistill"),
        ("train", "qwen2.5-3b-sft"), ("evaluate", "qwen2.5-7b"), ("evaluate", "qwen2.5-1.5b (base and trained)"),
        ("evaluate", "qwen2.5-3b (base and trained)")]
    unknown = [e for e in plan if e.model.startswith("qwen2.5-3b")]
    assert all(e.gib is None and e.fits is None and e.origin == "unknown" for e in unknown)
    assert unknown[0].note == "not checked: no config.json for 'nobody/no-such-model' (not a local folder, not in " \
                              "the Hugging Face cache)"
    assert "unknown" in format_plan(plan)


@pytest.mark.parametrize("config_file", [REPO / "config.yaml", REPO / ".test" / "config_basic.yaml"],
                         ids=["embedded-default", "test-fixture"])
def test_plan_of_a_bootstrapped_config_with_gpu_rules(config_file):
    """The tokenizer section keeps the ``dataset`` its rule reads; the plan takes only its vocabulary size."""
    config = yaml.safe_load(config_file.read_text())
    config["resources"] = {"gpu_rules": True, "gpu_mem_gb": 80}
    plan = plan_memory(config, {})
    assert {e.stage for e in plan} == {"sample", "train", "evaluate"}
    assert all(e.origin == "bootstrap settings" and e.gib is not None and e.fits for e in plan)
    shape, vocab = config["teacher"]["bootstrap"]["shape"], config["tokenizer"]["vocab_size"]
    d, layers, inter = shape["hidden_size"], shape["num_hidden_layers"], shape["intermediate_size"]
    kv = shape["num_key_value_heads"] * d // shape["num_attention_heads"]
    layer = 2 * d * d + 2 * d * kv + (d + 2 * kv) + 3 * d * inter + 2 * d
    weights_gib = 2 * (layers * layer + vocab * d + d) / 1024**3  # bf16 on a GPU, tied embeddings
    assert plan[0].stage == "sample" and plan[0].parts["weights"] == round(weights_gib, 2)


def test_plan_of_a_bootstrapped_config_rejects_unknown_tokenizer_keys():
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["tokenizer"]["vocab"] = 300
    with pytest.raises(ValueError, match=r"tokenizer.vocab: unknown key"):
        plan_memory(config, {})


def test_module_stays_free_of_torch_and_transformers():
    code = "import sys, advdistill.memory_plan; print('torch' in sys.modules or 'transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_report_shows_the_memory_plan(tmp_path):
    from advdistill.memory_plan import plan_rows
    from advdistill.report import build_report

    rows = plan_rows([train(gpu_mem_gb=80)])
    index = build_report({}, {}, {}, {}, None, tmp_path, ["m"], ["t"], memory_plan=rows)
    assert json.loads((tmp_path / "memory_plan.json").read_text()) == rows
    assert "Memory plan" in index.read_text() and "s-advdistill" in index.read_text()


def run_snakemake(tmp_path, *configs):
    return subprocess.run(["snakemake", "-s", str(REPO / "Snakefile"), "--dry-run", "--configfile",
                           *map(str, configs)], cwd=tmp_path, capture_output=True, text=True, timeout=300)


@pytest.mark.failure_mode(
    "a stage that does not fit resources.gpu_mem_gb",
    sees="the run stops before any job, naming the stage, the model, the estimate and the fix",
    kept="everything")
def test_gpu_mem_gb_stops_the_dry_run_naming_stage_model_and_fix(tmp_path):
    (tmp_path / "small.yaml").write_text("resources: {gpu_rules: true, gpu_mem_gb: 10}\n")
    result = run_snakemake(tmp_path, PAPER, tmp_path / "small.yaml")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "do not fit resources.gpu_mem_gb = 10 GiB" in output
    assert "sample of qwen2.5-7b: about" in output and "raise sampling.tensor_parallel_size" in output
    assert "train of qwen2.5-1.5b-advdistill: about" in output and "training.optim.max_seq_length" in output
    assert "Job stats" not in output


def test_cpu_default_prints_no_plan_and_is_not_checked(tmp_path):
    (tmp_path / "tiny_gpu.yaml").write_text("resources: {gpu_rules: false, gpu_mem_gb: 0.001}\n")
    result = run_snakemake(tmp_path, REPO / "config.yaml", tmp_path / "tiny_gpu.yaml")
    assert result.returncode == 0, result.stderr
    assert "Memory plan" not in result.stdout + result.stderr
    assert "gpu=" not in result.stdout


def test_gpu_resources_follow_tensor_parallel_size_and_processes(tmp_path):
    """A variant that trains on other processes asks for its own GPUs and has its own memory estimate."""
    (tmp_path / "gpus.yaml").write_text(yaml.safe_dump({
        "sampling": {"tensor_parallel_size": 2}, "evaluation": {"tensor_parallel_size": 4},
        "training": {"processes": 3, "fsdp": True},
        "variants": {"two": {"objectives": ["advdistill"], "training": {"processes": 2}}}}))
    result = run_snakemake(tmp_path, PAPER, tmp_path / "gpus.yaml")
    assert result.returncode == 0, result.stderr
    assert "Memory plan (advdistill/memory_plan.py):" in result.stdout + result.stderr
    plan = (result.stdout + result.stderr).split("Memory plan (advdistill/memory_plan.py):")[1]
    assert re.search(r"train\s+qwen2.5-1.5b-advdistill@two\s+\S+\s+2\s", plan)
    gpus = {}
    for block in result.stdout.split("\nrule ")[1:]:
        found = re.search(r"resources: .*\bgpu=(\d+)", block)
        gpus.setdefault(block.split(":")[0], set()).add(int(found.group(1)) if found else None)
    assert gpus["sample"] == {2} and gpus["evaluate"] == {4} and gpus["train"] == {3, 2}
    assert gpus["score"] == {None}


def test_gpu_rules_on_the_embedded_default_plans(tmp_path):
    (tmp_path / "gpu.yaml").write_text("resources: {gpu_rules: true}\n")
    result = run_snakemake(tmp_path, REPO / "config.yaml", tmp_path / "gpu.yaml")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    plan = output.split("Memory plan (advdistill/memory_plan.py):")[1]
    assert re.search(r"train\s+student-advdistill\s+\S+\s+1\s+\?\s+bootstrap settings", plan)
