import re
from collections import Counter

import polars as pl
import pytest

from advdistill.datasets import get_adapter
from advdistill.datasets.base import ROW_SCHEMA, DatasetAdapter, describe, matches, normalise_split
from advdistill.datasets.synthetic import written_difference, written_sum
from advdistill.errors import BadRow, ConfigError, DatasetError


def test_written_arithmetic_is_exact():
    assert written_sum(48, 37) == "48 + 37: 8 + 7 = 15 carry 1, 4 + 3 + 1 = 8, so 48 + 37 = 85."
    assert written_difference(91, 59) == "91 - 59: 11 - 9 = 2 borrow 1, 9 - 1 - 5 = 3, so 91 - 59 = 32."
    assert written_difference(100, 1).endswith("so 100 - 1 = 99.")


def test_synthetic_is_deterministic_and_splits_are_disjoint():
    options = {"seed": 3, "n_train": 200, "n_test": 50}
    train_a, _ = normalise_split(get_adapter("synthetic", "synthetic", options), "train", "arith")
    train_b, _ = normalise_split(get_adapter("synthetic", "synthetic", options), "train", "arith")
    test, _ = normalise_split(get_adapter("synthetic", "synthetic", options), "test", "arith")
    assert train_a.equals(train_b)
    assert (train_a.height, test.height) == (200, 50)
    assert not set(train_a["question"]) & set(test["question"])
    assert dict(train_a.schema) == ROW_SCHEMA


def test_synthetic_answers_match_their_solutions():
    rows, _ = normalise_split(get_adapter("synthetic", "synthetic", {"seed": 1, "n_train": 100}), "train", "x")
    for row in rows.iter_rows(named=True):
        assert row["solution"].endswith(f"= {row['answer']}.")
        assert row["kind"] == "numeric"


def test_ood_variant_covers_every_perturbation():
    rows, _ = normalise_split(get_adapter("synthetic", "synthetic", {"variant": "ood", "n_test": 60}), "test", "o")
    kinds = Counter(i.rsplit("-", 1)[-1] for i in rows["id"])
    assert set(kinds) == {"bigger_numbers", "extra_step", "distractor"}
    chosen = {"variant": "ood", "n_test": 60, "perturbations": ["rephrasing", "distractor"]}
    rows, _ = normalise_split(get_adapter("synthetic", "synthetic", chosen), "test", "o")
    assert set(Counter(i.rsplit("-", 1)[-1] for i in rows["id"])) == {"rephrasing", "distractor"}
    rephrased = rows.filter(rows["id"].str.ends_with("rephrasing"))
    assert rephrased["question"].str.starts_with("At first, ").all()
    assert all(int(n) < 100 for q in rows["question"] for n in re.findall(r"\d+", q))
    with pytest.raises(DatasetError, match="no split 'train'"):
        normalise_split(get_adapter("synthetic", "synthetic", {"variant": "ood"}), "train", "o")


def test_one_digit_problems_add_in_one_line_and_keep_their_numbers_small():
    options = {"seed": 5, "n_train": 200, "n_test": 0, "digits": 1}
    rows, _ = normalise_split(get_adapter("synthetic", "synthetic", options), "train", "a")
    for row in rows.iter_rows(named=True):
        lines = row["solution"].split(". ")
        assert all(re.fullmatch(r"\d+ [+-] \d \= \d+\.?", line) for line in lines), row["solution"]
        assert eval(lines[-1].split(" =")[0]) == int(row["answer"]) >= 0
        assert all(int(n) <= 38 for n in re.findall(r"\d+", row["question"]))
    with pytest.raises(ConfigError, match="options.digits: expected 1 or 2, got 3"):
        get_adapter("synthetic", "synthetic", {"digits": 3}, dataset="a")


def test_mixed_variant_mixes_plain_and_perturbed_problems_in_both_splits():
    options = {"variant": "mixed", "seed": 2, "n_train": 300, "n_test": 30, "digits": 1,
               "perturbations": ["rephrasing", "distractor"]}
    train, _ = normalise_split(get_adapter("synthetic", "synthetic", options), "train", "m")
    test, _ = normalise_split(get_adapter("synthetic", "synthetic", options), "test", "m")
    kinds = Counter(i.rsplit("-", 1)[-1] if not i.split("-")[-1].isdigit() else "plain" for i in train["id"])
    assert set(kinds) == {"plain", "rephrasing", "distractor"} and min(kinds.values()) > 60
    assert not set(train["question"]) & set(test["question"])
    assert not any(q.count("Then") > 1 for q in train["question"])


class ListAdapter(DatasetAdapter):
    """Records given in memory, in a GSM8K-like layout."""

    name = "list"
    splits = ("test",)
    option_types = {"records": list}

    def records(self, split):
        return self.options["records"]

    def normalise(self, record, index, split):
        if "question" not in record:
            raise BadRow("missing_question")
        return {"id": str(record.get("id", index)), "question": record["question"],
                "answer": record.get("answer", ""), "kind": "numeric"}


@pytest.mark.failure_mode(
    "malformed or unanswerable rows in a release file",
    sees="rows skipped and counted by reason in the prepare report",
    kept="every valid row")
def test_bad_rows_are_skipped_and_counted():
    records = [
        {"question": "1 + 1?", "answer": "2"},
        {"answer": "3"},
        "not a record",
        {"question": "  ", "answer": "4"},
        {"question": "2 + 2?", "answer": ""},
        {"id": "0", "question": "duplicate id", "answer": "5"},
        {"question": "3 + 3?", "answer": "6"},
    ]
    frame, report = normalise_split(ListAdapter("mem", {"records": records}), "test", "toy")
    assert frame["answer"].to_list() == ["2", "6"]
    assert report.rows_read == 7
    assert report.to_json()["skipped_by_reason"] == {
        "duplicate_id": 1, "empty_answer": 1, "empty_question": 1, "missing_question": 1, "not_a_record": 1}


@pytest.mark.failure_mode(
    "release file without a single usable row",
    sees="prepare stops: no usable rows, with the skip counts",
    kept="nothing written")
def test_no_usable_rows_is_a_clear_error():
    with pytest.raises(DatasetError, match="dataset 'toy' split 'test' .* no usable rows"):
        normalise_split(ListAdapter("mem", {"records": [{"answer": "1"}]}), "test", "toy")


@pytest.mark.failure_mode(
    "unknown dataset adapter name",
    sees="error naming the known adapters",
    kept="nothing written")
def test_unknown_adapter_names_the_known_ones():
    with pytest.raises(DatasetError, match="unknown dataset adapter 'nope'.*synthetic"):
        get_adapter("nope", "x")


def test_rows_frame_round_trips_through_parquet(tmp_path, synthetic_rows):
    from advdistill.io import write_parquet

    write_parquet(synthetic_rows[1], tmp_path / "t.parquet")
    assert pl.read_parquet(tmp_path / "t.parquet").equals(synthetic_rows[1])


def test_type_declarations():
    assert matches(["a", "b"], list[str]) and not matches(["a", 1], list[str]) and not matches("ab", list[str])
    assert matches({"train": "x"}, dict[str, str]) and not matches({"train": ["x"]}, dict[str, str])
    assert matches(None, (str, None)) and matches(3, (int, float)) and not matches(True, (int, float))
    assert describe((list[str], None)) == "list[str] or null"


class UndeclaredAdapter(ListAdapter):
    """Passes ``solution`` through without declaring its type, as a careless adapter would."""

    def normalise(self, record, index, split):
        return {**super().normalise(record, index, split), "solution": record.get("solution", "")}


@pytest.mark.failure_mode("normalised row of the wrong type (an adapter passed a field through unchecked)",
                          sees="row skipped, counted as bad_type_<column> in the prepare report",
                          kept="every other row; the rows table is always written")
def test_rows_that_break_the_schema_are_skipped_and_counted():
    records = [{"question": "1 + 1?", "answer": "2", "solution": "one and one"},
               {"question": "2 + 2?", "answer": "4", "solution": {"steps": ["2 + 2"]}},
               {"question": ["3 + 3?"], "answer": "6"},
               {"question": "4 + 4?", "answer": 8}]
    frame, report = normalise_split(UndeclaredAdapter("mem", {"records": records}), "test", "toy")
    assert frame.select("question", "answer", "solution").rows() == [("1 + 1?", "2", "one and one")]
    assert report.to_json()["skipped_by_reason"] == {"bad_type_answer": 1, "bad_type_question": 1,
                                                     "bad_type_solution": 1}


@pytest.mark.failure_mode("unknown adapter option (a typo such as test_fracton)",
                          sees="prepare stops (exit 2): datasets.<name>.options.<key> is unknown, with the known ones",
                          kept="everything; nothing is read or written")
def test_unknown_option_names_the_key_and_the_known_ones():
    with pytest.raises(ConfigError, match=r"^datasets\.mmlu\.options\.test_fracton: unknown option of the 'mmlu_pro' "
                                          r"adapter \(known: categories, hub_config, hub_splits, split_seed, "
                                          r"test_fraction\)$"):
        get_adapter("mmlu_pro", "x.jsonl", {"test_fracton": 0.5}, dataset="mmlu")
    with pytest.raises(ConfigError, match=r"^datasets\.arith\.options\.n_trian: unknown option .*n_train"):
        get_adapter("synthetic", "synthetic", {"n_trian": 5}, dataset="arith")
    assert get_adapter("mmlu_pro", "x.jsonl", {"test_fraction": 0.5, "categories": None}).test_fraction == 0.5


@pytest.mark.failure_mode("adapter option of the wrong type or value (test_fraction '0.2', variant odd)",
                          sees="prepare stops (exit 2): datasets.<name>.options.<key>: expected ..., got ...",
                          kept="everything; nothing is read or written")
@pytest.mark.parametrize(("adapter", "options", "message"), [
    ("mmlu_pro", {"test_fraction": "0.2"}, "options.test_fraction: expected int or float, got '0.2'"),
    ("mmlu_pro", {"categories": "math"}, "options.categories: expected list[str] or null, got 'math'"),
    ("open_s1", {"test_fraction": 18}, "options.test_fraction: expected a share between 0 and 1, got 18.0"),
    ("gsm8k", {"hub_splits": {"test": 1}}, "options.hub_splits: expected dict[str, str], got {'test': 1}"),
    ("synthetic", {"variant": "odd"}, "options.variant: expected in_distribution, ood or mixed, got 'odd'"),
    ("synthetic", {"n_test": -1}, "options.n_test: expected a count from 0 to 10,000,000, got -1"),
    ("synthetic", {"seed": True}, "options.seed: expected int, got True"),
    ("synthetic", {"variant": "ood", "perturbations": ["bigger"]}, "options.perturbations: expected a non-empty "
     "list of bigger_numbers, rephrasing, extra_step, distractor, got ['bigger']"),
    ("synthetic", {"variant": "ood", "perturbations": []}, "options.perturbations: expected a non-empty "
     "list of bigger_numbers, rephrasing, extra_step, distractor, got []"),
])
def test_mistyped_option_is_a_config_error(adapter, options, message):
    with pytest.raises(ConfigError) as caught:
        get_adapter(adapter, "synthetic", options, dataset="d")
    assert str(caught.value) == f"datasets.d.{message}"


@pytest.mark.failure_mode(
    "rows parquet without a question column, with a null or whitespace question, an empty answer, an unknown kind "
    "('numerc'), an integer answer or an id given twice (sample, score, train, evaluate)",
    sees="one line naming the file, the column and (for bad values) the first row id, exit 2",
    kept="everything; no model is loaded")
def test_rows_the_later_stages_cannot_use_are_refused_naming_the_column(tmp_path):
    from advdistill.datasets.base import read_rows
    from advdistill.errors import InputError

    rows, _ = normalise_split(get_adapter("synthetic", "synthetic", {"n_test": 3}), "test", "x")
    path = tmp_path / "rows.parquet"
    rows.write_parquet(path)
    assert read_rows(path).height == 3
    rows.drop("question").write_parquet(path)
    with pytest.raises(InputError, match=r"rows.parquet: no column\(s\) question"):
        read_rows(path)
    rows.with_columns(question=pl.when(pl.col("id") == rows["id"][1]).then(None).otherwise(pl.col("question"))
                      ).write_parquet(path)
    with pytest.raises(InputError, match=rf"column 'question' is null in 1 row\(s\), first id '{rows['id'][1]}'"):
        read_rows(path)
    for column, value, message in (("question", " \n\t", "column 'question' is blank in 1 row"),
                                   ("answer", "", "column 'answer' is blank in 1 row"),
                                   ("kind", "numerc", "column 'kind' holds 'numerc' in 1 row")):
        rows.with_columns(pl.when(pl.col("id") == rows["id"][2]).then(pl.lit(value)).otherwise(pl.col(column))
                          .alias(column)).write_parquet(path)
        with pytest.raises(InputError, match=rf"{message}\(s\),? first id '{rows['id'][2]}'"):
            read_rows(path)
    rows.with_columns(answer=pl.lit(5)).write_parquet(path)
    with pytest.raises(InputError, match="column 'answer' has type Int32, expected String"):
        read_rows(path)
    pl.concat([rows, rows.head(1)]).write_parquet(path)
    with pytest.raises(InputError, match=rf"1 id\(s\) given to more than one row, first '{rows['id'][0]}'"):
        read_rows(path)


@pytest.mark.failure_mode(
    "rows parquet with a multiple_choice row whose choices are null or empty (sample, train, evaluate)",
    sees="one line naming the file, column 'choices', the count and the first row id, exit 2",
    kept="everything; no model is loaded")
def test_multiple_choice_rows_without_choices_are_refused(tmp_path):
    from advdistill.datasets.base import read_rows
    from advdistill.errors import InputError

    rows = pl.DataFrame([{"id": f"q{i}", "split": "test", "question": "Which?", "answer": "A",
                          "kind": "multiple_choice", "choices": ["yes", "no"], "solution": ""} for i in range(3)]
                        + [{"id": "n", "split": "test", "question": "1+1?", "answer": "2", "kind": "numeric",
                            "choices": None, "solution": ""}], schema=ROW_SCHEMA)
    path = tmp_path / "rows.parquet"
    rows.write_parquet(path)
    assert read_rows(path).height == 4  # a numeric row has no choices to list
    for value, problem in ((None, "null"), ([], "empty")):
        rows.with_columns(choices=pl.when(pl.col("id").is_in(["q1", "q2"])).then(pl.lit(value, pl.List(pl.String)))
                          .otherwise(pl.col("choices"))).write_parquet(path)
        with pytest.raises(InputError) as raised:
            read_rows(path)
        assert str(raised.value) == (f"{path}: column 'choices' is {problem} in 2 multiple_choice row(s), first id "
                                     "'q1': was it written by advdistill prepare?")


def test_config_text_utf8_cannot_encode_is_a_config_error():
    from advdistill.config import section_from_json

    with pytest.raises(ConfigError, match=r"^config prompt\.system_prompt: text that UTF-8 cannot encode"):
        section_from_json("prompt", '{"system_prompt": "a \\ud800 b"}')


@pytest.mark.failure_mode(
    "synthetic n_train/n_test beyond what memory holds, or more distinct problems than the variant has",
    sees="prepare stops (exit 2) naming datasets.<name>.options.n_<split> (it used to loop forever)",
    kept="everything; nothing is written")
def test_synthetic_sizes_are_bounded_and_an_exhausted_problem_space_stops(monkeypatch):
    from advdistill.datasets import synthetic

    with pytest.raises(ConfigError, match=r"options.n_train: expected a count from 0 to 10,000,000, got 10000000000"):
        get_adapter("synthetic", "synthetic", {"n_train": 10**10}, dataset="arith")
    monkeypatch.setattr(synthetic, "MAX_REPEATED_DRAWS", 50)
    adapter = get_adapter("synthetic", "synthetic", {"n_train": 3, "n_test": 0}, dataset="arith")
    monkeypatch.setattr(adapter, "_problems", lambda rng: iter(lambda: {"question": "same", "answer": "1"}, None))
    with pytest.raises(ConfigError, match=r"datasets.arith.options.n_train: asked for 3 distinct problems, but the "
                                          r"last 50 drawn after 1 were all repeats"):
        list(adapter.records("train"))
