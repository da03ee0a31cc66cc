from collections import Counter

import polars as pl
import pytest

from advdistill.datasets import (
    ROW_SCHEMA,
    BadRow,
    DatasetAdapter,
    DatasetError,
    get_adapter,
    normalise_split,
)
from advdistill.datasets.synthetic import written_difference, written_sum


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
    with pytest.raises(DatasetError, match="no split 'train'"):
        normalise_split(get_adapter("synthetic", "synthetic", {"variant": "ood"}), "train", "o")


class ListAdapter(DatasetAdapter):
    """Records given in memory, in a GSM8K-like layout."""

    name = "list"
    splits = ("test",)

    def records(self, split):
        return self.options["records"]

    def normalise(self, record, index, split):
        if "question" not in record:
            raise BadRow("missing_question")
        return {"id": str(record.get("id", index)), "question": record["question"],
                "answer": record.get("answer", ""), "kind": "numeric"}


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


def test_no_usable_rows_is_a_clear_error():
    with pytest.raises(DatasetError, match="dataset 'toy' split 'test' .* no usable rows"):
        normalise_split(ListAdapter("mem", {"records": [{"answer": "1"}]}), "test", "toy")


def test_unknown_adapter_names_the_known_ones():
    with pytest.raises(DatasetError, match="unknown dataset adapter 'nope'.*synthetic"):
        get_adapter("nope", "x")


def test_rows_frame_round_trips_through_parquet(tmp_path, synthetic_rows):
    from advdistill.io import write_parquet

    write_parquet(synthetic_rows[1], tmp_path / "t.parquet")
    assert pl.read_parquet(tmp_path / "t.parquet").equals(synthetic_rows[1])
