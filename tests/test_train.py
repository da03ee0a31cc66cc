import json
import shutil

import polars as pl
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from advdistill.config import LossConfig, OptimConfig, PromptConfig, TrainingConfig
from advdistill.errors import TrainingError
from advdistill.io import check_rows, claim_resume_folder
from advdistill.prompts import render_prompts
from advdistill.train import run_train
from advdistill.training.checkpoints import (
    checkpoint_problem,
    seal_checkpoint,
    set_aside_incomplete_checkpoints,
    training_fingerprint,
)
from advdistill.training.collators import GroupCollator
from advdistill.training.groups import (
    Group,
    best_pairs,
    build_groups,
    divergent_masks,
    response_tokens,
    shared_prefix_lengths,
    split_validation,
)
from advdistill.training.tokens import TokenizedPair, tokenize_pairs
from advdistill.training.trainer import build_trainer, fit, train_model
from tests.helpers import run_cli

TINY_OPTIM = OptimConfig(learning_rate=1e-3, max_steps=2, per_device_batch_size=2, gradient_accumulation_steps=1,
                         max_seq_length=128, save_steps=2, logging_steps=1)


def scored_table(synthetic_rows, kept=True):
    train = synthetic_rows[0].head(4)
    rows = []
    for pid, answer in zip(train["id"], train["answer"]):
        for idx in range(3):
            good = idx == 0
            rows.append({"prompt_id": pid, "sample_idx": idx, "kept": kept, "correct": good,
                         "advantage": 1.0 if good else -0.5,
                         "response": f"<think>x</think>\n<answer>\\boxed{{{answer if good else 0}}}</answer>"})
    return pl.DataFrame(rows)


def write_scored_table(folder, synthetic_rows, kept=True):
    """:func:`scored_table` as the scored parquet that ``advdistill train`` reads."""
    path = folder / "scored.parquet"
    scored_table(synthetic_rows, kept).write_parquet(path)
    return path


def test_tokenize_pair_masks_prompt_and_truncates(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    pair = tokenize_pairs(tokenizer, ["question here"], ["answer text"], max_length=1000)[0]
    prompt_len = len(tokenizer("question here", add_special_tokens=False)["input_ids"])
    assert pair.labels[:prompt_len] == [-100] * prompt_len
    assert pair.labels[-1] == tokenizer.eos_token_id and not pair.truncated
    short = tokenize_pairs(tokenizer, ["question here"], ["answer text"], max_length=prompt_len + 1)[0]
    assert short.truncated and len(short.input_ids) == prompt_len + 1


def test_groups_best_pairs_and_truncation_count(tiny_model_dir, synthetic_rows):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    scored = scored_table(synthetic_rows)
    prompts = {pid: f"prompt {pid}" for pid in scored["prompt_id"]}
    groups, truncated = build_groups(prompts, scored, tokenizer, max_length=1000)
    assert len(groups) == 4 and truncated == 0
    assert [g.correct for g in groups] == [[True, False, False]] * 4
    _, truncated = build_groups(prompts, scored, tokenizer, max_length=8)
    assert truncated == 12
    ties = Group("g", groups[0].pairs, [0.5, 0.5, -1.0], [True, True, False])
    assert best_pairs([ties])[0] is groups[0].pairs[0]
    train, held = split_validation(groups, 0.25, seed=0)
    assert len(train) == 3 and len(held) == 1


def test_divergent_masks_start_after_the_longest_prefix_shared_with_a_correct_response():
    """Token-level longest common prefix of each wrong response's response tokens with every correct response of
    its group: the mask marks the tokens after it; a wrong response that is a prefix of a correct one (or the
    same) has none; the prompt (masked labels) and padding are never marked."""
    prompt = [-100] * 3

    def pair(tokens):
        return TokenizedPair([7, 8, 9] + tokens, prompt + tokens, truncated=False)

    group = Group("g", [pair([1, 2, 3, 4, 0]), pair([1, 2, 5, 6, 0]), pair([1, 9, 9]), pair([1, 2, 3, 4, 5, 6]),
                        pair([1, 2, 3]), pair([4, 4]), pair([1, 2, 3, 5, 0])],
                  [1.0, -1.0, -1.0, -1.0, -1.0, -1.0, 0.5], [True, False, False, False, False, False, True])
    assert shared_prefix_lengths(group) == [0, 2, 1, 4, 3, 0, 0]
    masks = divergent_masks(group)
    assert masks[1] == [False] * 5 + [True] * 3
    assert masks[3] == [False] * 7 + [True] * 2
    assert masks[4] == [False] * 6  # a prefix of a correct response: nothing went wrong in its tokens
    assert masks[5] == [False] * 3 + [True] * 2
    batch = GroupCollator(0, "divergent")([group])
    assert batch["contrastive_mask"].shape == batch["labels"].shape
    for row, mask in enumerate(masks):
        assert batch["contrastive_mask"][row].tolist() == mask + [False] * (batch["labels"].shape[1] - len(mask))
    assert not (batch["contrastive_mask"] & (batch["labels"] == -100)).any()
    assert "contrastive_mask" not in GroupCollator(0)([group])
    with pytest.raises(ValueError, match="contrastive_tokens: expected 'all' or 'divergent'"):
        GroupCollator(0, "diverging")


def test_advdistill_trains_with_divergent_contrastive_tokens(tiny_model_dir, synthetic_rows, tmp_path):
    """contrastive_tokens: divergent runs through the trainer (two groups per micro-batch) and logs its terms;
    the wrong responses of scored_table share '<think>x</think>' and the start of the answer with the correct one,
    so their divergent tokens are fewer and the contrastive term differs from the paper's (in the group whose gold
    answer is the wrong responses' 0 they are the correct response itself: no divergent token at all)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    scored = scored_table(synthetic_rows)
    groups, _ = build_groups({pid: f"prompt {pid}" for pid in scored["prompt_id"]}, scored, tokenizer, 128)
    divergent_tokens = [len(response_tokens(p)) - n for g in groups for n, p, ok in
                        zip(shared_prefix_lengths(g), g.pairs, g.correct) if not ok]
    assert sorted(divergent_tokens) == [0, 0, 4, 4, 4, 4, 4, 4]

    def logged(tokens: str) -> list[dict]:
        cfg = TrainingConfig(optim=OptimConfig(**{**TINY_OPTIM.__dict__, "max_steps": 2}),
                             loss=LossConfig(backend="torch", lam=0.5, contrastive_tokens=tokens))
        metrics = train_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer, "advdistill", groups,
                              cfg, tmp_path / tokens, seed=0, save_checkpoints=False)
        return [entry for entry in metrics["log_history"] if "loss" in entry]

    divergent, paper = logged("divergent"), logged("all")
    for entry in divergent:
        assert entry["weighted_ce"] + entry["contrastive"] == pytest.approx(entry["loss"], rel=1e-4)
        assert entry["contrastive"] > 0
    assert divergent[0]["weighted_ce"] == pytest.approx(paper[0]["weighted_ce"], rel=1e-6)
    assert divergent[0]["contrastive"] != pytest.approx(paper[0]["contrastive"], rel=1e-3)


@pytest.mark.parametrize("objective", ["sft", "advdistill"])
def test_training_resumes_from_last_checkpoint(tiny_model_dir, synthetic_rows, objective, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    scored = scored_table(synthetic_rows)
    groups, _ = build_groups({pid: f"prompt {pid}" for pid in scored["prompt_id"]}, scored, tokenizer, 128)
    items = best_pairs(groups) if objective == "sft" else groups
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    first = train_model(model, tokenizer, objective, items, TrainingConfig(optim=TINY_OPTIM), tmp_path, seed=0)
    assert first["resumed_from"] is None
    longer = TrainingConfig(optim=OptimConfig(**{**TINY_OPTIM.__dict__, "max_steps": 3}))
    second = train_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer, objective, items, longer,
                         tmp_path, seed=0)
    assert second["resumed_from"].endswith("checkpoint-2")
    assert second["log_history"][-1]["step"] == 3


@pytest.mark.failure_mode(
    "non-finite training loss",
    sees="train stops: non-finite loss with the step and the micro-batch's groups (or, with nonfinite_loss: skip, "
         "the micro-batch is skipped and counted in train_metrics.json)",
    kept="checkpoints of the run")
def test_nonfinite_loss_stops_with_step_and_group(tiny_model_dir, synthetic_rows, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    scored = scored_table(synthetic_rows)
    groups, _ = build_groups({pid: "p" for pid in scored["prompt_id"]}, scored, tokenizer, 128)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.get_output_embeddings().weight.fill_(float("nan"))
    cfg = TrainingConfig(optim=TINY_OPTIM, loss=LossConfig(backend="torch"))
    with pytest.raises(TrainingError, match=r"non-finite loss .* step 0, group "):
        train_model(model, tokenizer, "advdistill", groups, cfg, tmp_path, seed=0, save_checkpoints=False)


@pytest.mark.failure_mode(
    "every scored group filtered out",
    sees="train stops: no kept groups to train on, naming the scored file",
    kept="the scored groups")
def test_no_kept_groups_is_a_clear_error(tiny_model_dir, synthetic_rows, rows_file, tmp_path):
    scored = write_scored_table(tmp_path, synthetic_rows, kept=False)
    with pytest.raises(TrainingError, match="no kept groups"):
        run_train(str(tiny_model_dir), rows_file, scored, "sft", TrainingConfig(optim=TINY_OPTIM),
                     PromptConfig(), 0, tmp_path / "out", tmp_path / "ck")


@pytest.fixture()
def no_model(monkeypatch):
    """Fail the test if train gets as far as fetching or loading the student."""
    import advdistill.train as train_module

    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded before the scored table was checked")

    monkeypatch.setattr(train_module, "local_model", loaded)
    monkeypatch.setattr(train_module, "load_student", loaded)


def train_cli(capsys, model, rows_file, scored, objective="sft"):
    return run_cli(capsys, "train", "--model", model, "--rows", rows_file, "--scored", scored, "--objective",
                   objective, "--out", scored.parent / "out")


@pytest.mark.failure_mode(
    "scored table with no rows",
    sees="train stops: '<file>: the scored table has no rows', not 'every group was filtered out by score'",
    kept="everything; no model is loaded")
def test_an_empty_scored_table_is_named_apart_from_every_group_filtered_out(
        tiny_model_dir, synthetic_rows, rows_file, tmp_path, no_model):
    scored = tmp_path / "scored.parquet"
    scored_table(synthetic_rows).head(0).write_parquet(scored)
    with pytest.raises(TrainingError) as caught:
        run_train(str(tiny_model_dir), rows_file, scored, "sft", TrainingConfig(optim=TINY_OPTIM),
                  PromptConfig(), 0, tmp_path / "out", tmp_path / "ck")
    assert str(caught.value) == f"{scored}: the scored table has no rows, so no groups to train on"


@pytest.mark.failure_mode(
    "scored table with a NaN, infinite or null advantage, or a null kept or correct flag",
    sees="train stops (exit 2) naming the file, the column, the count and the first rows (it used to train SFT on "
         "each group's first response, or fail mid-run with a traceback)",
    kept="everything; no model is loaded")
@pytest.mark.parametrize("objective", ["sft", "advdistill"])
@pytest.mark.parametrize(("column", "value", "problem", "shown"), [
    ("advantage", float("nan"), "a missing or non-finite advantage in a kept group", "advantage nan"),
    ("advantage", float("-inf"), "a missing or non-finite advantage in a kept group", "advantage -inf"),
    ("advantage", None, "a missing or non-finite advantage in a kept group", "advantage None"),
    ("correct", None, "a missing correct flag in a kept group", "advantage -0.5"),
    ("response", None, "a missing response in a kept group", "advantage -0.5"),
    ("kept", None, "a missing kept flag", "advantage -0.5"),
])
def test_scored_rows_train_cannot_use_stop_before_the_model_is_loaded(
        capsys, tiny_model_dir, synthetic_rows, rows_file, tmp_path, no_model, objective, column, value, problem,
        shown):
    table = scored_table(synthetic_rows)
    first = table["prompt_id"][4]
    scored = tmp_path / "scored.parquet"
    table.with_columns(pl.when(pl.int_range(pl.len()) == 4).then(pl.lit(value, dtype=table.schema[column]))
                       .otherwise(pl.col(column)).alias(column)).write_parquet(scored)
    code, err = train_cli(capsys, tiny_model_dir, rows_file, scored, objective)
    assert (code, err) == (2, f"advdistill train: error: {scored}: 1 row(s) with {problem}, first: row 4 "
                              f"(prompt_id {first!r}, sample_idx 1, {shown})\n")


def test_a_non_finite_advantage_outside_the_kept_groups_is_not_read(synthetic_rows, tmp_path):
    import advdistill.train as train_module

    table = scored_table(synthetic_rows, kept=False).with_columns(advantage=pl.lit(float("nan")))
    check_rows(table, tmp_path / "scored.parquet", train_module.SCORED_PROBLEMS, ["prompt_id"])


@pytest.mark.failure_mode(
    "repeated (prompt_id, sample_idx) in the scored table",
    sees="train stops (exit 2) naming the file and the repeated rows, as score does for repeated samples (it used "
         "to train on every such group twice)",
    kept="everything; no model is loaded")
def test_repeated_scored_samples_stop_naming_the_rows(capsys, tiny_model_dir, synthetic_rows, rows_file, tmp_path,
                                                      no_model):
    table = scored_table(synthetic_rows)
    first = table["prompt_id"][0]
    scored = tmp_path / "scored.parquet"
    pl.concat([table, table.head(1)]).write_parquet(scored)
    code, err = train_cli(capsys, tiny_model_dir, rows_file, scored)
    assert (code, err) == (2, f"advdistill train: error: {scored}: 2 row(s) with a repeated (prompt_id, sample_idx), "
                              f"first: row 0 (prompt_id {first!r}, sample_idx 0, advantage 1.0); "
                              f"row 12 (prompt_id {first!r}, sample_idx 0, advantage 1.0)\n")


def test_a_job_killed_after_its_model_is_in_place_leaves_its_metrics_and_checkpoints(
        tiny_model_dir, synthetic_rows, rows_file, tmp_path, monkeypatch):
    """The metrics go into the model folder before it moves into place, and the checkpoints go only after: a kill
    in between left a model folder without train_metrics.json (the report failed) and nothing to resume from."""
    import advdistill.train as train_module

    def killed(path, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        run_train(str(tiny_model_dir), rows_file, write_scored_table(tmp_path, synthetic_rows), "sft",
                  TrainingConfig(optim=TINY_OPTIM), PromptConfig(), 0, tmp_path / "out", tmp_path / "checkpoints")
    monkeypatch.undo()
    assert json.loads((tmp_path / "out" / "train_metrics.json").read_text())["objective"] == "sft"
    assert (tmp_path / "out" / "model.safetensors").is_file() and (tmp_path / "checkpoints").is_dir()


@pytest.mark.failure_mode(
    "rerun after a config edit finds checkpoints of another run",
    sees="the run starts from the student base (INFO line)",
    kept="the finished model of the earlier run until the new one replaces it")
def test_rerun_resumes_only_checkpoints_of_the_same_run(tiny_model_dir, synthetic_rows, rows_file, tmp_path):
    """A finished run leaves no checkpoint behind, so a rerun with another learning rate trains from the
    student base (it used to resume the finished run's last checkpoint and save the old model again);
    a killed run's checkpoint is resumed by the same run only."""
    scored = write_scored_table(tmp_path, synthetic_rows)
    work = tmp_path / "checkpoints"
    cfg = TrainingConfig(optim=TINY_OPTIM)
    other_lr = TrainingConfig(optim=OptimConfig(**{**TINY_OPTIM.__dict__, "learning_rate": 5e-3}))

    def train(config: TrainingConfig, name: str) -> dict:
        return run_train(str(tiny_model_dir), rows_file, scored, "sft", config, PromptConfig(), 0, tmp_path / name,
                         work)

    def weights(name: str) -> dict:
        return load_file(tmp_path / name / "model.safetensors")

    assert train(cfg, "first")["resumed_from"] is None
    assert not work.exists()
    assert train(other_lr, "second")["resumed_from"] is None
    assert any(not torch.equal(a, weights("second")[k]) for k, a in weights("first").items())

    def killed_run_of(config: TrainingConfig) -> None:
        claim_resume_folder(work, training_fingerprint(str(tiny_model_dir), rows_file, scored, "sft", config,
                                                       PromptConfig(), 0))
        tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
        groups, _ = build_groups({pid: "p" for pid in scored_table(synthetic_rows)["prompt_id"]},
                                 scored_table(synthetic_rows), tokenizer, 128)
        train_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer, "sft", best_pairs(groups),
                    config, work, seed=0)
        assert (work / "checkpoint-2").is_dir()

    killed_run_of(cfg)
    assert train(other_lr, "third")["resumed_from"] is None
    killed_run_of(cfg)
    assert train(cfg, "fourth")["resumed_from"].endswith("checkpoint-2")


class KillAtStep(TrainerCallback):
    """Stops a run the way a SLURM time limit does: abruptly, between steps."""

    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt(f"killed at step {self.step}")


@pytest.mark.failure_mode(
    "checkpoint whose trainer_state.json reads but whose weights or optimizer state were truncated since",
    sees="warning naming the file, its size and the size it was saved with; resumes from an earlier checkpoint",
    kept="the damaged folder, renamed incomplete-checkpoint-N, until the run finishes")
def test_a_truncated_or_unsealed_checkpoint_is_set_aside_and_a_sealed_one_resumed(tmp_path, caplog):
    for step in (1, 2, 3):
        folder = tmp_path / f"checkpoint-{step}"
        (folder / "nested").mkdir(parents=True)
        for name in ("trainer_state.json", "model.safetensors", "optimizer.pt", "nested/rng.pth"):
            (folder / name).write_bytes(b"x" * 100)
        if step < 3:  # checkpoint-3 was cut off before its seal
            seal_checkpoint(folder)
    assert checkpoint_problem(tmp_path / "checkpoint-1") is None
    (tmp_path / "checkpoint-2" / "optimizer.pt").write_bytes(b"x" * 40)
    assert checkpoint_problem(tmp_path / "checkpoint-2") == ("optimizer.pt has 40 bytes, 100 when it was saved "
                                                              "(truncated?)")
    assert "no readable checkpoint_complete.json" in checkpoint_problem(tmp_path / "checkpoint-3")
    assert set_aside_incomplete_checkpoints(tmp_path) == ["checkpoint-3", "checkpoint-2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1", "incomplete-checkpoint-2",
                                                          "incomplete-checkpoint-3"]
    assert "optimizer.pt has 40 bytes" in caplog.text
    (tmp_path / "checkpoint-1" / "nested" / "rng.pth").unlink()
    assert checkpoint_problem(tmp_path / "checkpoint-1") == "nested/rng.pth is missing"


@pytest.mark.failure_mode(
    "checkpoint half-written when the job was killed",
    sees="warning naming it; resumes from the newest complete checkpoint; metrics of the whole run",
    kept="the half-written folder, renamed incomplete-checkpoint-N, until the run finishes")
def test_resume_skips_a_half_written_checkpoint_and_reports_the_whole_run(tiny_model_dir, synthetic_rows, rows_file,
                                                                          tmp_path):
    """A run killed while saving checkpoint-3 resumes from checkpoint-2 (it used to pick checkpoint-3 and fail on
    its missing trainer_state.json at every rerun); its metrics equal an uninterrupted run's."""
    scored = write_scored_table(tmp_path, synthetic_rows)
    cfg = TrainingConfig(optim=OptimConfig(**{**TINY_OPTIM.__dict__, "max_steps": 4, "save_steps": 1,
                                              "per_device_batch_size": 1, "warmup_ratio": 0.0}),
                         validation_fraction=0.0)
    whole = run_train(str(tiny_model_dir), rows_file, scored, "sft", cfg, PromptConfig(), 0, tmp_path / "whole",
                      tmp_path / "whole.checkpoints")

    work = tmp_path / "killed.checkpoints"
    claim_resume_folder(work, training_fingerprint(str(tiny_model_dir), rows_file, scored, "sft", cfg,
                                                   PromptConfig(), 0))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = dict(zip(pl.read_parquet(rows_file)["id"], render_prompts(pl.read_parquet(rows_file).to_dicts(),
                                                                        tokenizer, PromptConfig())))
    groups, _ = build_groups(prompts, pl.read_parquet(scored), tokenizer, cfg.optim.max_seq_length)
    trainer = build_trainer(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), tokenizer,
                            "sft", best_pairs(groups), cfg, work, seed=0)
    trainer.add_callback(KillAtStep(2))
    with pytest.raises(KeyboardInterrupt):
        fit(trainer, work)
    half_written = work / "checkpoint-3"
    half_written.mkdir()
    shutil.copy(work / "checkpoint-2" / "model.safetensors", half_written)

    resumed = run_train(str(tiny_model_dir), rows_file, scored, "sft", cfg, PromptConfig(), 0, tmp_path / "resumed",
                        work)
    assert resumed["resumed_from"].endswith("checkpoint-2")
    assert resumed["incomplete_checkpoints"] == ["checkpoint-3"]
    assert resumed["global_step"] == whole["global_step"] == 4
    assert [e["step"] for e in resumed["log_history"] if "loss" in e] == [1, 2, 3, 4]
    assert resumed["train_loss"] == pytest.approx(whole["train_loss"], rel=1e-6)
    assert resumed["train_runtime"] > resumed["segment_runtime"]
    saved = json.loads((tmp_path / "resumed" / "train_metrics.json").read_text())
    assert saved["train_loss"] == resumed["train_loss"] and not work.exists()
    for name, weight in load_file(tmp_path / "whole" / "model.safetensors").items():
        torch.testing.assert_close(load_file(tmp_path / "resumed" / "model.safetensors")[name], weight)


def test_advdistill_logs_its_loss_terms_grad_norm_and_tokens(tiny_model_dir, synthetic_rows, tmp_path):
    """Each logged step of a 1-micro-batch run: weighted CE + contrastive term = the logged loss."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    scored = scored_table(synthetic_rows)
    groups, _ = build_groups({pid: f"prompt {pid}" for pid in scored["prompt_id"]}, scored, tokenizer, 128)
    optim = OptimConfig(**{**TINY_OPTIM.__dict__, "max_steps": 3, "per_device_batch_size": 1})
    cfg = TrainingConfig(optim=optim, loss=LossConfig(backend="torch", lam=0.5))
    metrics = train_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer, "advdistill", groups,
                          cfg, tmp_path, seed=0, save_checkpoints=False)
    logged = [entry for entry in metrics["log_history"] if "loss" in entry]
    assert [entry["step"] for entry in logged] == [1, 2, 3]
    for entry in logged:
        assert entry["weighted_ce"] + entry["contrastive"] == pytest.approx(entry["loss"], rel=1e-4)
        assert entry["contrastive"] > 0 and 0 < entry["wrong_p_mean"] < 1 and entry["wrong_at_clamp"] == 0
        assert entry["grad_norm"] > 0
    tokens = [entry["num_input_tokens_seen"] for entry in logged]
    assert tokens == sorted(tokens) and tokens[0] > 0 and metrics["tokens_seen"] == tokens[-1]


class WeightsEachStep(TrainerCallback):
    """A copy of the student's weights after every optimizer step."""

    def __init__(self, model):
        self.model, self.steps = model, []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append({name: p.detach().clone() for name, p in self.model.named_parameters()})


def groups_with_equal_length_best_responses(tokenizer, train_rows, prompts: int = 10):
    """``prompts`` kept groups of 4 responses: the best (a unique, distinct highest advantage, at a different
    position in each group) is ``<answer>\\boxed{d}</answer>`` with one digit d, so every best response has the
    same number of tokens; the other responses have other lengths."""
    rows = []
    for g, (pid, answer) in enumerate(zip(train_rows["id"][:prompts], train_rows["answer"][:prompts])):
        best = g % 4
        for idx in range(4):
            rows.append({"prompt_id": pid, "sample_idx": idx, "kept": True, "correct": idx == best,
                         "advantage": 1.0 + 0.01 * g if idx == best else -0.3 * (idx + 1) + 0.01 * g,
                         "response": f"<answer>\\boxed{{{g % 10}}}</answer>" if idx == best else
                                     f"<think>{'step ' * (idx + 2 * g % 5 + 1)}</think>\n"
                                     f"<answer>\\boxed{{{answer}{idx}}}</answer>"})
    groups, truncated = build_groups({pid: f"question {pid}" for pid in train_rows["id"][:prompts]},
                                     pl.DataFrame(rows), tokenizer, 128)
    assert truncated == 0 and len(groups) == prompts
    best = best_pairs(groups)
    assert [p is g.pairs[g.advantages.index(max(g.advantages))] for p, g in zip(best, groups)] == [True] * prompts
    assert len({sum(label != -100 for label in pair.labels) for pair in best}) == 1  # equal lengths
    assert len({sum(label != -100 for label in pair.labels) for g in groups for pair in g.pairs}) > 1
    return groups


@pytest.mark.parametrize("batch", [1, 4])
def test_advdistill_with_one_hot_weights_and_no_contrastive_term_is_sft_on_the_best_responses(
        tiny_model_dir, synthetic_rows, tmp_path, batch):
    """lam = 0 and tau -> 0 (softmax(A / tau) one-hot on each group's best response) make AdvDistill SFT on the
    best responses when they have equal lengths: the same optimizer steps and the same weights after each, with
    ``per_device_batch_size`` counting prompts for both. 10 groups at 2 micro-batches per step: at a batch of 4
    the second step has one micro-batch of 2 groups. AdvDistill used to take one group per micro-batch whatever
    the batch size, so at 4 it took 5 steps to SFT's 2."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    groups = groups_with_equal_length_best_responses(tokenizer, synthetic_rows[0])
    optim = OptimConfig(learning_rate=3e-3, max_steps=-1, epochs=1, warmup_ratio=0.0, per_device_batch_size=batch,
                        gradient_accumulation_steps=2, max_seq_length=128, logging_steps=1, max_grad_norm=0.5)
    loss = LossConfig(backend="torch", lam=0.0, tau=1e-4)

    def trained(objective: str):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        each_step = WeightsEachStep(model)
        items = best_pairs(groups) if objective == "sft" else groups
        metrics = train_model(model, tokenizer, objective, items, TrainingConfig(optim=optim, loss=loss,
                                                                                  precision="fp32"),
                              tmp_path / objective, seed=0, save_checkpoints=False, callbacks=[each_step])
        return metrics, each_step.steps

    sft, sft_steps = trained("sft")
    advdistill, advdistill_steps_ = trained("advdistill")
    assert sft["global_step"] == {1: 5, 4: 2}[batch]
    assert advdistill["global_step"] == sft["global_step"]
    losses = [[entry["loss"] for entry in run["log_history"] if "loss" in entry] for run in (sft, advdistill)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).state_dict()
    for step, (expected, actual) in enumerate(zip(sft_steps, advdistill_steps_, strict=True)):
        for name, weight in expected.items():
            torch.testing.assert_close(actual[name], weight, rtol=1e-5, atol=1e-6, msg=f"step {step + 1}: {name}")
    assert any(not torch.equal(sft_steps[-1][name], start[name]) for name in sft_steps[-1])


def test_both_objectives_take_the_same_optimizer_steps_on_the_same_groups(tiny_model_dir, synthetic_rows, tmp_path):
    """per_device_batch_size counts prompts for both objectives: 7 groups, 2 per micro-batch, 2 micro-batches per
    step, 2 epochs are 2 * ceil(ceil(7 / 2) / 2) = 4 steps of AdvDistill and of SFT on their best responses
    (AdvDistill used to take one group per micro-batch: 8 steps here)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    train = synthetic_rows[0].head(7)
    rows = [{"prompt_id": pid, "sample_idx": idx, "kept": True, "correct": idx == 0,
             "advantage": 1.0 if idx == 0 else -0.5, "response": f"<answer>\\boxed{{{answer}}}</answer>"}
            for pid, answer in zip(train["id"], train["answer"]) for idx in range(2)]
    groups, _ = build_groups({pid: f"prompt {pid}" for pid in train["id"]}, pl.DataFrame(rows), tokenizer, 128)
    optim = OptimConfig(**{**TINY_OPTIM.__dict__, "max_steps": -1, "epochs": 2, "per_device_batch_size": 2,
                           "gradient_accumulation_steps": 2, "logging_steps": 100})

    def steps(objective: str) -> int:
        items = best_pairs(groups) if objective == "sft" else groups
        cfg = TrainingConfig(optim=optim, loss=LossConfig(backend="torch"))
        return train_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer, objective, items, cfg,
                           tmp_path / objective, seed=0, save_checkpoints=False)["global_step"]

    assert steps("advdistill") == steps("sft") == 4


@pytest.mark.failure_mode(
    "prompt.few_shot > 0 for sampling and training",
    sees="the teacher samples and the student trains on the few-shot prompts evaluation renders",
    kept="nothing to keep: it runs")
def test_few_shot_prompts_are_the_same_in_sampling_training_and_evaluation(tiny_model_dir, synthetic_rows,
                                                                           rows_file, tmp_path, monkeypatch):
    """With ``prompt.few_shot: 2`` the sampler and the trainer pick their turns from the training split by the
    sampler's seed (the trainer's own seed being a replicate's), as evaluation does for a trained student; it used
    to fail with "need 2 training rows with solutions, found 0"."""
    import advdistill.sample as sample_module
    import advdistill.train as train_module
    from advdistill.config import SamplingConfig

    prompt_cfg, sampler_seed, seen = PromptConfig(few_shot=2), 5, {}

    class Captured(Exception):
        pass

    def capture_sampled(_backend, ids, texts, *_args, **_kwargs):
        seen["sample"] = dict(zip(ids, texts))
        raise Captured

    def capture_trained(prompts, *_args, **_kwargs):
        seen["train"] = prompts
        raise Captured

    monkeypatch.setattr(sample_module, "sample_prompts", capture_sampled)
    monkeypatch.setattr(train_module, "build_groups", capture_trained)
    with pytest.raises(Captured):
        sample_module.run_sample(str(tiny_model_dir), rows_file, SamplingConfig(max_prompts=4, shard_size=4),
                                 prompt_cfg, sampler_seed, tmp_path / "samples.parquet")
    with pytest.raises(Captured):
        run_train(str(tiny_model_dir), rows_file, write_scored_table(tmp_path, synthetic_rows), "sft",
                  TrainingConfig(optim=TINY_OPTIM), prompt_cfg, 99, tmp_path / "out", tmp_path / "ck",
                  few_shot_seed=sampler_seed)
    train, tokenizer = synthetic_rows[0].to_dicts(), AutoTokenizer.from_pretrained(tiny_model_dir)
    evaluated = render_prompts(train[:4], tokenizer, prompt_cfg, train, sampler_seed)
    assert list(seen["sample"].values()) == evaluated
    assert [seen["train"][row["id"]] for row in train[:4]] == evaluated
    zero_shot = render_prompts(train[:4], tokenizer, PromptConfig())
    assert [text.count("<|im_start|>assistant") for text in evaluated] == [
        text.count("<|im_start|>assistant") + 2 for text in zero_shot]
