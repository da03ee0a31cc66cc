"""Release-file adapters on fixtures written in each official layout, and on the real files when present."""

import subprocess
import sys

import pytest

from advdistill.datasets import ADAPTERS, DatasetError, get_adapter, normalise_split
from tests.conftest import REPO, SHARED_DATA

FIXTURES = REPO / "tests" / "fixtures" / "datasets"


def prepare(name, file, split="test", options=None):
    return normalise_split(get_adapter(name, str(FIXTURES / file), options), split, name)


def test_gsm8k_gold_answers_and_skips():
    rows, report = prepare("gsm8k", "gsm8k.jsonl")
    assert rows["answer"].to_list() == ["5", "2000", "-3"]
    assert rows["solution"][0] == "3 + 2 = 5"
    assert report.to_json()["skipped_by_reason"] == {
        "invalid_utf8": 1, "malformed_json": 1, "missing_final_answer": 1, "missing_question": 1, "unanswerable": 1}


def test_gsm_plus_keeps_numbers_and_fractions_and_skips_unanswerable():
    rows, report = prepare("gsm_plus", "gsm_plus.jsonl")
    assert list(zip(rows["answer"], rows["kind"])) == [("4.33", "numeric"), ("1/4", "math"), ("1200", "numeric")]
    assert report.skipped == {"unanswerable": 1, "missing_answer": 1}
    only, _ = prepare("gsm_plus", "gsm_plus.jsonl", options={"perturbation_types": ["digit expansion"]})
    assert only["answer"].to_list() == ["1200"]


def test_mmlu_pro_letters_held_out_split_and_skips():
    test, test_report = prepare("mmlu_pro", "mmlu_pro.jsonl", "test")
    train, train_report = prepare("mmlu_pro", "mmlu_pro.jsonl", "train")
    assert not set(test["id"]) & set(train["id"])
    assert set(test["id"]) | set(train["id"]) == {str(i) for i in range(30)} | {"102"}
    assert 0 < test.height < train.height
    both = {r["id"]: r for r in [*test.iter_rows(named=True), *train.iter_rows(named=True)]}
    assert both["102"]["answer"] == "C"  # letter and answer_index disagree: the letter is trusted
    assert both["0"]["choices"] == ["red", "green", "blue", "cyan"] and both["0"]["kind"] == "multiple_choice"
    reasons = test_report.skipped + train_report.skipped
    assert reasons["answer_letter_out_of_range"] == 1 and reasons["missing_options"] == 1


def test_open_rs_level_filter():
    rows, report = prepare("open_rs", "open_rs.jsonl")
    assert rows["answer"].to_list() == ["\\frac{1}{2}"]
    assert report.skipped == {"other_level": 1, "missing_level": 1}
    every, _ = prepare("open_rs", "open_rs.jsonl", options={"level": None})
    assert every.height == 3


def test_missing_local_file_is_a_one_line_error():
    with pytest.raises(DatasetError, match=r"^dataset 'gsm8k': local file not found: .*nope\.jsonl$"):
        normalise_split(get_adapter("gsm8k", str(FIXTURES / "nope.jsonl")), "test", "gsm8k")


def test_file_with_wrong_fields_names_them():
    with pytest.raises(DatasetError, match=r"dataset 'gsm8k': .*wrong_fields.jsonl has no field\(s\) question, answer"):
        prepare("gsm8k", "wrong_fields.jsonl")


def test_unreachable_hub_id_is_a_one_line_error():
    code = ("from advdistill.datasets import get_adapter, normalise_split\n"
            "normalise_split(get_adapter('gsm8k', 'nobody/no-such-dataset'), 'test', 'gsm8k')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                                 "HOME": str(REPO.parent)})
    last = result.stderr.strip().splitlines()[-1]
    assert "DatasetError: dataset 'gsm8k': cannot load 'nobody/no-such-dataset'" in last


def test_every_adapter_is_registered():
    expected = {"synthetic", "gsm8k", "gsm_plus", "mmlu_pro", "open_s1", "open_rs", "math500", "aime24", "amc23"}
    assert expected <= set(ADAPTERS)


real = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="real benchmark files (../shared/data) not present")


@real
@pytest.mark.parametrize(("name", "file", "split", "kept", "skipped"), [
    ("gsm8k", "gsm8k_test.jsonl", "test", 1319, {}),
    ("gsm8k", "gsm8k_train.jsonl", "train", 7473, {}),
    ("gsm_plus", "gsm_plus_testmini.jsonl", "test", 2100, {"unanswerable": 300}),
    ("mmlu_pro", "mmlu_pro_test.jsonl", "test", 2316, {"in_train_split": 9716}),
    ("math500", "math500_test.jsonl", "test", 500, {}),
    ("aime24", "aime24_test.jsonl", "test", 30, {}),
    ("amc23", "amc23_test.jsonl", "test", 40, {}),
])
def test_real_release_files(name, file, split, kept, skipped):
    rows, report = normalise_split(get_adapter(name, str(SHARED_DATA / file)), split, name)
    assert rows.height == kept and dict(report.skipped) == skipped


@real
def test_real_gold_answers_quirks():
    gsm8k, _ = normalise_split(get_adapter("gsm8k", str(SHARED_DATA / "gsm8k_train.jsonl")), "train", "gsm8k")
    assert not gsm8k["answer"].str.contains(",").any()
    mmlu, _ = normalise_split(get_adapter("mmlu_pro", str(SHARED_DATA / "mmlu_pro_test.jsonl")), "train", "m")
    mmlu_test, _ = normalise_split(get_adapter("mmlu_pro", str(SHARED_DATA / "mmlu_pro_test.jsonl")), "test", "m")
    both = {r["id"]: r for r in [*mmlu.iter_rows(named=True), *mmlu_test.iter_rows(named=True)]}
    assert both["3983"]["answer"] == "C"  # the letter is trusted over answer_index
    aime, _ = normalise_split(get_adapter("aime24", str(SHARED_DATA / "aime24_test.jsonl")), "test", "a")
    from advdistill.answers import is_correct

    assert all(is_correct(str(int(a)), a, "numeric") for a in aime["answer"])
