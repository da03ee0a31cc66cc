import polars as pl
import pytest

from advdistill.config import PromptConfig, SamplingConfig
from advdistill.errors import ConfigError, InputError
from advdistill.sample import run_sample
from advdistill.sampling.base import Completion, GenerationParams, SamplingBackend
from advdistill.sampling.shards import SAMPLE_SCHEMA, sample_prompts

SETTINGS = SamplingConfig(n_samples=3, temperature=0.9, max_new_tokens=12, batch_size=4, shard_size=8)


def test_hf_sampling_is_deterministic_and_well_formed(tiny_model_dir, rows_file, tmp_path):
    first = run_sample(str(tiny_model_dir), rows_file, SETTINGS, PromptConfig(), 11, tmp_path / "a.parquet")
    run_sample(str(tiny_model_dir), rows_file, SETTINGS, PromptConfig(), 11, tmp_path / "b.parquet")
    other_seed = run_sample(str(tiny_model_dir), rows_file, SETTINGS, PromptConfig(), 12, tmp_path / "c.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    assert not first.equals(other_seed)
    assert dict(first.schema) == SAMPLE_SCHEMA
    assert first.height == 64 * 3
    assert first.group_by("prompt_id").len()["len"].unique().to_list() == [3]
    assert first["n_tokens"].max() <= 12
    assert (first.filter(pl.col("truncated"))["n_tokens"] == 12).all()
    assert not (tmp_path / ".a.parquet.parts").exists()


class CountingBackend(SamplingBackend):
    """Echoes the prompt's position and the seed, and records which prompts it was asked for."""

    def __init__(self, fail_after_calls: int | None = None):
        self.calls: list[list[str]] = []
        self.fail_after_calls = fail_after_calls

    def generate(self, prompts, params, seed):
        if self.fail_after_calls is not None and len(self.calls) == self.fail_after_calls:
            raise KeyboardInterrupt("simulated kill")
        self.calls.append(prompts)
        return [[Completion(f"{p}|{seed}|{i}", i, False) for i in range(params.n)] for p in prompts]


def run(backend, out, fingerprint="fp"):
    prompts = [f"p{i}" for i in range(20)]
    params = GenerationParams(n=2, temperature=1.0, top_p=1.0, max_new_tokens=4)
    cfg = SamplingConfig(batch_size=3, shard_size=6)
    return sample_prompts(backend, prompts, prompts, params, cfg, 5, out, fingerprint)


@pytest.mark.failure_mode(
    "sampling job killed midway",
    sees="the rerun resumes after the last complete shard and writes the bytes an uninterrupted run "
         "writes",
    kept="every complete shard")
def test_killed_run_resumes_from_last_complete_shard(tmp_path):
    reference = run(CountingBackend(), tmp_path / "ref.parquet")
    out = tmp_path / "samples.parquet"
    with pytest.raises(KeyboardInterrupt):
        run(CountingBackend(fail_after_calls=5), out)  # shard 0 (2 calls) and 1 (2 calls) done, shard 2 cut
    assert not out.exists()
    resumed_backend = CountingBackend()
    resumed = run(resumed_backend, out)
    assert [p for call in resumed_backend.calls for p in call] == [f"p{i}" for i in range(12, 20)]
    assert resumed.equals(reference)


@pytest.mark.failure_mode(
    "sampling shards left by a run with other settings",
    sees="an INFO line; sampling starts over",
    kept="nothing of the other run's shards (they were the stage's own)")
def test_parts_of_a_different_configuration_are_discarded(tmp_path):
    out = tmp_path / "samples.parquet"
    with pytest.raises(KeyboardInterrupt):
        run(CountingBackend(fail_after_calls=3), out, fingerprint="old")
    backend = CountingBackend()
    run(backend, out, fingerprint="new")
    assert sum(len(call) for call in backend.calls) == 20


@pytest.mark.parametrize(("stage", "temperature", "label"), [("evaluate", 0.0, "generating greedy answers"),
                                                             ("evaluate", 0.7, "sampling answers"),
                                                             ("sample", 0.9, "sampling responses")])
def test_the_progress_bar_says_what_is_generated(tmp_path, capsys, stage, temperature, label):
    params = GenerationParams(n=1, temperature=temperature, top_p=1.0, max_new_tokens=4)
    sample_prompts(CountingBackend(), ["a", "b"], ["p0", "p1"], params, SamplingConfig(batch_size=2, shard_size=2), 0,
                   tmp_path / "out.parquet", "fp", stage=stage)
    bar = capsys.readouterr().err
    assert f"{label}: 100%" in bar and "2/2" in bar


def test_greedy_with_several_samples_is_rejected():
    with pytest.raises(ConfigError, match="greedy"):
        GenerationParams(n=2, temperature=0.0, top_p=1.0, max_new_tokens=4)


@pytest.mark.failure_mode(
    "teacher completion of special tokens only, or undecodable bytes",
    sees="an empty or replacement-character response, scored like any other",
    kept="every other sample")
def test_special_token_only_and_undecodable_completions(tiny_model_dir):
    from advdistill.sampling.hf import HFBackend

    backend = HFBackend(str(tiny_model_dir))
    tokenizer = backend.tokenizer
    specials = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|endoftext|>"])
    only_special = backend._completion(specials + [tokenizer.eos_token_id], max_new_tokens=8)
    assert (only_special.text, only_special.n_tokens, only_special.truncated) == ("", 2, False)
    lone_lead_byte = tokenizer.convert_tokens_to_ids(["Ã"])  # byte 0xC3 without its continuation byte
    broken = backend._completion(lone_lead_byte * 3, max_new_tokens=3)
    assert "\ufffd" in broken.text and broken.truncated


@pytest.mark.failure_mode(
    "a prompt that leaves no room for max_new_tokens in a hub model's context (HF backend)",
    sees="a warning naming the prompt, its length and the context; the prompt counts as unanswered",
    kept="every other prompt's samples, as without it")
def test_hf_skips_a_prompt_too_long_for_the_context_and_samples_the_others(tiny_model_dir, caplog):
    """It used to generate past ``max_position_embeddings`` without a word."""
    from advdistill.sampling.hf import HFBackend

    backend = HFBackend(str(tiny_model_dir))
    short, long = "seven plus one", " ".join(["seven plus one"] * 40)
    lengths = [len(backend.tokenizer(text, add_special_tokens=False)["input_ids"]) for text in (short, long)]
    backend.context = lengths[0] + 8
    params = GenerationParams(n=2, temperature=0.9, top_p=1.0, max_new_tokens=8)
    alone = backend.generate([short], params, seed=3)
    with caplog.at_level("WARNING", logger="advdistill.sampling.base"):
        both = backend.generate([long, short], params, seed=3)
    assert both == [[], alone[0]] and len(alone[0]) == 2 and backend.skipped_too_long == 1
    assert (f"skipping 1 of 2 prompts of this call, longer than the model's context (max_position_embeddings) "
            f"{lengths[0] + 8} - max_new_tokens 8 = {lengths[0]} tokens (they get no samples): prompt 0 "
            f"({lengths[1]} tokens)") in caplog.text
    with pytest.raises(ConfigError, match="max_new_tokens 8 leaves no room for a prompt in the model's context"):
        backend.context = 8
        backend.generate([short], params, seed=3)


def test_part_ranges_cover_whole_shards():
    from advdistill.sample import part_range

    ranges = [part_range(20, 6, part, 3) for part in range(3)]
    assert ranges == [(0, 6), (6, 12), (12, 20)]
    assert [part_range(5, 6, part, 2) for part in range(2)] == [(0, 0), (0, 5)]
    with pytest.raises(ConfigError, match="outside"):
        part_range(20, 6, 3, 3)


@pytest.mark.failure_mode(
    "sampling parts that overlap",
    sees="merge stops naming the prompt, the sample and the parts",
    kept="the parts")
def test_split_sampling_merges_to_the_single_job_result(tmp_path, tiny_model_dir, rows_file):
    from advdistill.sample import merge_samples

    single = run_sample(str(tiny_model_dir), rows_file, SETTINGS, PromptConfig(), 3, tmp_path / "all.parquet")
    parts = [tmp_path / f"part-{i}.parquet" for i in range(3)]
    for i, path in enumerate(parts):
        run_sample(str(tiny_model_dir), rows_file, SETTINGS, PromptConfig(), 3, path, part=i, parts=3)
    assert merge_samples(parts, tmp_path / "merged.parquet").equals(single)
    with pytest.raises(InputError, match="overlap"):
        merge_samples([parts[0], parts[0]], tmp_path / "bad.parquet")
    # a part written with other integer widths merges as it is; a table with more columns is no part
    pl.read_parquet(parts[1]).cast({"sample_idx": pl.Int64, "n_tokens": pl.Int64}).write_parquet(parts[1])
    assert merge_samples(parts, tmp_path / "merged.parquet").equals(single)
    pl.read_parquet(parts[1]).with_columns(correct=True).write_parquet(parts[1])
    with pytest.raises(InputError, match=r"part-1\.parquet: not a sampling part \(extra column\(s\) correct\)"):
        merge_samples(parts, tmp_path / "bad.parquet")


def test_sampling_and_evaluation_refuse_an_empty_rows_file_before_loading_a_model(tmp_path, synthetic_rows):
    from advdistill.config import EvaluationConfig
    from advdistill.evaluate import run_evaluate
    from advdistill.io import write_parquet

    write_parquet(synthetic_rows[1].head(0), tmp_path / "none.parquet")
    absent = str(tmp_path / "no-model")  # the rows are refused before anything would load it
    with pytest.raises(InputError, match=r"none\.parquet: no rows to sample$"):
        run_sample(absent, tmp_path / "none.parquet", SETTINGS, PromptConfig(), 3, tmp_path / "s.parquet")
    with pytest.raises(InputError, match=r"none\.parquet: no test rows to evaluate$"):
        run_evaluate(absent, tmp_path / "none.parquet", EvaluationConfig(), PromptConfig(), None, 0,
                     tmp_path / "e.parquet", tmp_path / "e.json")


def test_chatml_answers_end_at_the_turn_end_not_only_at_a_base_models_eos(synthetic_rows):
    """Qwen2.5 base releases have EOS <|endoftext|> but close ChatML turns with <|im_end|>: sampling stops at
    both, and training targets end with <|im_end|> (they used to end with EOS, so a real base model ran on
    past <|im_end|> into an invented next turn)."""
    from transformers import GenerationConfig

    from advdistill.prompts import end_of_turn_id
    from advdistill.sampling.hf import stop_token_ids
    from advdistill.standin import standin_tokenizer
    from advdistill.training.tokens import tokenize_pairs

    tokenizer = standin_tokenizer(synthetic_rows[0].to_dicts())
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token == "<|endoftext|>" and end_of_turn_id(tokenizer) == im_end
    assert stop_token_ids(GenerationConfig(eos_token_id=tokenizer.eos_token_id), tokenizer) == {
        tokenizer.eos_token_id, im_end}
    assert tokenize_pairs(tokenizer, ["q"], ["a"], max_length=64)[0].input_ids[-1] == im_end

    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert end_of_turn_id(tokenizer) is None
    assert tokenize_pairs(tokenizer, ["q"], ["a"], max_length=64)[0].input_ids[-1] == tokenizer.eos_token_id
