"""Release-file adapters on fixtures written in each official layout, and on the real files when present."""

import json
import logging
import subprocess
import sys

import polars as pl
import pytest

from advdistill.datasets import ADAPTERS, get_adapter
from advdistill.datasets.base import normalise_split
from advdistill.errors import DatasetError
from tests.helpers import REPO, SHARED_DATA, files_under, run_cli

FIXTURES = REPO / "tests" / "fixtures" / "datasets"
MMLU_GOOD = {"question_id": 1, "question": "Which colour?", "options": ["red", "green", "blue"], "answer": "B",
             "answer_index": 1, "cot_content": "", "category": "math"}


def prepare(name, file, split="test", options=None):
    return normalise_split(get_adapter(name, str(FIXTURES / file), options), split, name)


def write_jsonl(path, records, encoding="utf-8"):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding=encoding)
    return path


def test_gsm8k_gold_answers_and_skips():
    rows, report = prepare("gsm8k", "gsm8k.jsonl")
    assert rows["answer"].to_list() == ["5", "2000", "-3"]
    assert rows["solution"][0] == "3 + 2 = 5"
    assert report.to_json()["skipped_by_reason"] == {
        "invalid_utf8": 1, "malformed_json": 1, "missing_final_answer": 1, "missing_question": 1, "unanswerable": 1}


@pytest.mark.failure_mode(
    "release-file line with a lone surrogate, very deep nesting, an over-long integer or a key given twice",
    sees="the line skipped and counted by reason in the prepare report (unencodable_question, too_deeply_nested, "
         "integer_too_long, repeated_key)",
    kept="every other line of the split")
def test_lines_python_or_utf8_cannot_hold_are_skipped_and_counted(tmp_path):
    good = '{"question": "Tom has 3 and buys 2?", "answer": "3 + 2 = 5\\n#### 5"}'
    lines = [good,
             '{"question": "lone \\ud800 surrogate", "answer": "#### 5"}',
             "[" * 100_000 + "]" * 100_000,
             '{"question": "q", "answer": "#### 5", "n": ' + "1" * 5000 + "}",
             '{"question": "first", "question": "second", "answer": "#### 5"}',
             good.replace("Tom", "Ann")]
    source = tmp_path / "gsm8k.jsonl"
    source.write_text("\n".join(lines) + "\n")
    rows, report = normalise_split(get_adapter("gsm8k", str(source)), "test", "gsm8k")
    assert rows["question"].to_list() == ["Tom has 3 and buys 2?", "Ann has 3 and buys 2?"]
    assert report.to_json()["skipped_by_reason"] == {"integer_too_long": 1, "repeated_key": 1,
                                                     "too_deeply_nested": 1, "unencodable_question": 1}


def test_gsm_plus_keeps_numbers_and_fractions_and_skips_unanswerable():
    rows, report = prepare("gsm_plus", "gsm_plus.jsonl")
    assert list(zip(rows["answer"], rows["kind"])) == [("4.33", "numeric"), ("1/4", "math"), ("1200", "numeric")]
    assert report.skipped == {"unanswerable": 1, "missing_answer": 1}
    only, _ = prepare("gsm_plus", "gsm_plus.jsonl", options={"perturbation_types": ["digit expansion"]})
    assert only["answer"].to_list() == ["1200"]


def test_gsm_golds_keep_commas_only_as_thousands_separators(tmp_path):
    finals = ["1,234", "12,345,678", "-1,000", "58.625", "0.042", "2,5", "250.000", "2.500", "1,23,456", "1234,567",
              "0,5", "1.234.567", "1,234.5"]
    gsm8k = write_jsonl(tmp_path / "gsm8k.jsonl",
                        [{"question": f"q{i}", "answer": f"so\n#### {final}"} for i, final in enumerate(finals)])
    rows, report = normalise_split(get_adapter("gsm8k", str(gsm8k)), "test", "gsm8k")
    assert rows["answer"].to_list() == ["1234", "12345678", "-1000", "58.625", "0.042", "1234.5"]
    assert dict(report.skipped) == {"ambiguous_gold_answer": 7}
    plus = write_jsonl(tmp_path / "gsm_plus.jsonl",
                       [{"question": f"q{i}", "answer": final, "solution": f"#### {final}"}
                        for i, final in enumerate(finals)])
    rows, report = normalise_split(get_adapter("gsm_plus", str(plus)), "test", "gsm_plus")
    assert rows["answer"].to_list() == ["1234", "12345678", "-1000", "58.625", "0.042", "1234.5"]
    assert dict(report.skipped) == {"ambiguous_gold_answer": 7}


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


@pytest.mark.failure_mode(
    "dataset source file missing",
    sees="one line naming the file, exit 2",
    kept="nothing written")
def test_missing_local_file_is_a_one_line_error():
    with pytest.raises(DatasetError, match=r"^dataset 'gsm8k': local file not found: .*nope\.jsonl$"):
        normalise_split(get_adapter("gsm8k", str(FIXTURES / "nope.jsonl")), "test", "gsm8k")


@pytest.mark.failure_mode(
    "release file without the fields its adapter needs",
    sees="one line naming the missing fields and the file",
    kept="nothing written")
def test_file_with_wrong_fields_names_them():
    with pytest.raises(DatasetError, match=r"dataset 'gsm8k': .*wrong_fields.jsonl has no field\(s\) question, answer"):
        prepare("gsm8k", "wrong_fields.jsonl")


@pytest.mark.failure_mode(
    "hub id unreachable (offline machine)",
    sees="one line naming the id and suggesting a local file (local_sources)",
    kept="nothing written")
def test_unreachable_hub_id_is_a_one_line_error():
    code = ("from advdistill.datasets import get_adapter\nfrom advdistill.datasets.base import normalise_split\n"
            "normalise_split(get_adapter('gsm8k', 'nobody/no-such-dataset'), 'test', 'gsm8k')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                                 "HOME": str(REPO.parent)})
    last = result.stderr.strip().splitlines()[-1]
    assert "DatasetError: dataset 'gsm8k': cannot load 'nobody/no-such-dataset'" in last


@pytest.mark.failure_mode("release record with a value of the wrong type (integer answer, list question, "
                          "integer or dict options, nested dict, boolean id)",
                          sees="record skipped, counted as bad_type_<field> in the prepare report (exit 0)",
                          kept="every other record of the split")
def test_wrong_value_types_are_skipped_and_counted(capsys, tmp_path):
    records = [MMLU_GOOD,
               {**MMLU_GOOD, "question_id": 2, "answer": 1},
               {**MMLU_GOOD, "question_id": 3, "question": ["Which", "colour?"]},
               {**MMLU_GOOD, "question_id": 4, "options": 3},
               {**MMLU_GOOD, "question_id": 5, "options": ["red", {"text": "green"}]},
               {**MMLU_GOOD, "question_id": 6, "category": {"name": "math"}},
               {**MMLU_GOOD, "question_id": True},
               {**MMLU_GOOD, "question_id": 70, "cot_content": None, "category": None},  # null optional fields
               {**MMLU_GOOD, "question_id": None, "question": "Which shade?"}]  # null id: its position, not "None"
    source = write_jsonl(tmp_path / "mmlu.jsonl", records)
    out = tmp_path / "out"
    code, err = run_cli(capsys, "prepare", "--dataset", "mmlu_pro", "--source", source, "--split", "validation",
                        "--name", "mmlu", "--out", out / "validation.parquet")
    assert code == 0 and "Traceback" not in err
    report = json.loads((out / "validation.report.json").read_text())
    assert report["skipped_by_reason"] == {"bad_type_answer": 1, "bad_type_category": 1, "bad_type_options": 2,
                                           "bad_type_question": 1, "bad_type_question_id": 1}
    rows = pl.read_parquet(out / "validation.parquet")
    assert rows.select("id", "question", "choices", "solution").rows() == [
        ("1", "Which colour?", ["red", "green", "blue"], ""), ("70", "Which colour?", ["red", "green", "blue"], ""),
        ("8", "Which shade?", ["red", "green", "blue"], "")]
    assert files_under(tmp_path) == {"mmlu.jsonl", "out/validation.parquet", "out/validation.report.json",
                                     "out/validation.parquet.manifest.json"}


@pytest.mark.failure_mode("GSM8K record with an integer answer or a null question",
                          sees="record skipped, counted as bad_type_answer / missing_question",
                          kept="every other record")
def test_gsm8k_wrong_types_and_nulls(tmp_path):
    good = {"question": "Tom has 3 and buys 2?", "answer": "3 + 2 = 5\n#### 5"}
    source = write_jsonl(tmp_path / "gsm8k.jsonl", [good, {**good, "answer": 5}, {**good, "question": None},
                                                   {**good, "answer": {"text": "#### 5"}}, good])
    rows, report = normalise_split(get_adapter("gsm8k", str(source)), "test", "gsm8k")
    assert rows["answer"].to_list() == ["5", "5"]
    assert report.skipped == {"bad_type_answer": 2, "missing_question": 1}


@pytest.mark.failure_mode("MMLU-Pro options given as a string (e.g. a CSV export's JSON text)",
                          sees="record skipped, counted as bad_type_options (never split into letters, not parsed)",
                          kept="every record whose options are a list of strings")
def test_mmlu_pro_options_as_a_string_are_skipped_not_split(tmp_path):
    source = write_jsonl(tmp_path / "mmlu.jsonl", [
        MMLU_GOOD, {**MMLU_GOOD, "question_id": 2, "options": "ABCD"},
        {**MMLU_GOOD, "question_id": 3, "options": json.dumps(["red", "green", "blue"])}])
    rows, report = normalise_split(get_adapter("mmlu_pro", str(source)), "validation", "mmlu_pro")
    assert rows.select("id", "choices").rows() == [("1", ["red", "green", "blue"])]
    assert report.skipped == {"bad_type_options": 2}


@pytest.mark.failure_mode("release file starting with a UTF-8 byte-order mark (.jsonl, .json)",
                          sees="nothing: the mark is not part of the first record",
                          kept="every record, the first one included")
@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_byte_order_mark_is_not_part_of_the_first_record(tmp_path, suffix):
    records = [{"question": "Tom has 3 and buys 2?", "answer": "3 + 2 = 5\n#### 5"},
               {"question": "Below zero?", "answer": "It drops.\n#### -3"}]
    text = "".join(json.dumps(r) + "\n" for r in records) if suffix == ".jsonl" else json.dumps(records)
    plain, marked = tmp_path / f"plain{suffix}", tmp_path / f"marked{suffix}"
    plain.write_text(text, encoding="utf-8")
    marked.write_text(text, encoding="utf-8-sig")
    assert marked.read_bytes().startswith(b"\xef\xbb\xbf")
    expected, _ = normalise_split(get_adapter("gsm8k", str(plain)), "test", "gsm8k")
    rows, report = normalise_split(get_adapter("gsm8k", str(marked)), "test", "gsm8k")
    assert rows.equals(expected) and rows.height == 2 and not report.skipped


@pytest.mark.failure_mode("corrupt or truncated parquet release file",
                          sees="prepare stops (exit 2): '<file>: not a readable parquet file (...)', no traceback",
                          kept="everything; nothing is written")
def test_parquet_release_file_and_a_corrupt_one(capsys, tmp_path):
    source = tmp_path / "mmlu.parquet"
    pl.DataFrame([MMLU_GOOD, {**MMLU_GOOD, "question_id": 2, "answer": "C"}]).write_parquet(source)
    rows, _ = normalise_split(get_adapter("mmlu_pro", str(source)), "validation", "mmlu_pro")
    assert rows.select("id", "answer", "choices").rows() == [("1", "B", ["red", "green", "blue"]),
                                                             ("2", "C", ["red", "green", "blue"])]
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(source.read_bytes()[: len(source.read_bytes()) // 2])
    code, err = run_cli(capsys, "prepare", "--dataset", "mmlu_pro", "--source", corrupt, "--split", "validation",
                        "--out", tmp_path / "out" / "rows.parquet")
    assert code == 2 and "Traceback" not in err
    assert err.startswith(f"advdistill prepare: error: {corrupt}: not a readable parquet file (")
    assert files_under(tmp_path) == {"mmlu.parquet", "corrupt.parquet"}


GOOD_GSM8K = {"question": "Tom has 3 and buys 2?", "answer": "3 + 2 = 5\n#### 5"}


def test_skip_examples_name_the_line_of_the_file_not_the_record_count(tmp_path):
    lines = [json.dumps(GOOD_GSM8K), "", json.dumps({**GOOD_GSM8K, "question": None}), "", "  ", "{not json",
             json.dumps({**GOOD_GSM8K, "answer": "no final answer"}), json.dumps({**GOOD_GSM8K, "question": None})]
    source = tmp_path / "train.jsonl"
    source.write_text("\n".join(lines) + "\n")
    _, report = normalise_split(get_adapter("gsm8k", str(source)), "train", "gsm8k")
    examples = report.to_json()["first_skipped_row_by_reason"]
    assert {reason: example.split(": ")[0] for reason, example in examples.items()} == {
        "missing_question": "train.jsonl line 3", "malformed_json": "train.jsonl line 6",
        "missing_final_answer": "train.jsonl line 7"}
    assert examples["missing_final_answer"].endswith("'no final answer'}")


@pytest.mark.parametrize("suffix", [".json", ".parquet"])
def test_skip_examples_of_json_and_parquet_files_name_the_record(tmp_path, suffix):
    records = [GOOD_GSM8K, {**GOOD_GSM8K, "question": None}, GOOD_GSM8K, {**GOOD_GSM8K, "answer": "no final"}]
    source = tmp_path / f"test{suffix}"
    if suffix == ".json":
        source.write_text(json.dumps({"data": records}, indent=2))
    else:
        pl.DataFrame(records).write_parquet(source)
    _, report = normalise_split(get_adapter("gsm8k", str(source)), "test", "gsm8k")
    examples = report.to_json()["first_skipped_row_by_reason"]
    assert {reason: example.split(": ")[0] for reason, example in examples.items()} == {
        "missing_question": f"test{suffix} record 1", "missing_final_answer": f"test{suffix} record 3"}


def test_prepare_logs_each_skip_reason_with_its_first_example(capsys, caplog, tmp_path):
    source = tmp_path / "gsm8k.jsonl"
    source.write_text("\n".join([json.dumps(GOOD_GSM8K), "", "{not json", json.dumps({**GOOD_GSM8K, "question": None}),
                                 json.dumps({**GOOD_GSM8K, "question": None})]) + "\n")
    out = tmp_path / "out" / "test.parquet"
    with caplog.at_level(logging.INFO, logger="advdistill.prepare"):
        code, err = run_cli(capsys, "prepare", "--dataset", "gsm8k", "--source", source, "--split", "test",
                            "--out", out)
    assert code == 0 and "Traceback" not in err
    assert [r.getMessage() for r in caplog.records if r.name == "advdistill.prepare"] == [
        f"gsm8k/test: kept 1 of 4 rows from {source}",
        "gsm8k/test: skipped 1 as malformed_json, first at gsm8k.jsonl line 3",
        "gsm8k/test: skipped 2 as missing_question, first at gsm8k.jsonl line 4"]
    report = json.loads(out.with_suffix(".report.json").read_text())
    assert report["skipped_by_reason"] == {"malformed_json": 1, "missing_question": 2}
    assert report["first_skipped_row_by_reason"]["missing_question"].startswith("gsm8k.jsonl line 4: {")


def test_json_release_file_skips_the_records_that_repeat_a_key(tmp_path):
    records = [json.dumps(GOOD_GSM8K), '{"question": "first", "question": "second", "answer": "#### 5"}',
               '{"question": "q", "answer": "#### 6", "meta": [{"n": 1, "n": 2}]}',
               json.dumps({**GOOD_GSM8K, "question": "Ann has 3 and buys 2?"})]
    source = tmp_path / "gsm8k.json"
    source.write_text('{"data": [' + ",\n".join(records) + "]}")
    rows, report = normalise_split(get_adapter("gsm8k", str(source)), "test", "gsm8k")
    assert rows["question"].to_list() == ["Tom has 3 and buys 2?", "Ann has 3 and buys 2?"]
    assert report.skipped == {"repeated_key": 2}
    assert report.to_json()["first_skipped_row_by_reason"]["repeated_key"].startswith("gsm8k.json record 1: ")
    top = tmp_path / "top.json"
    top.write_text('{"data": [], "data": [' + records[0] + "]}")
    with pytest.raises(DatasetError, match=r"^dataset 'gsm8k': .*top\.json gives key 'data' twice at its top level"):
        normalise_split(get_adapter("gsm8k", str(top)), "test", "gsm8k")


@pytest.mark.parametrize(("text", "message"), [
    ('{"data": [' + "[" * 100_000 + "]" * 100_000 + "]}", "is nested too deeply to be read as JSON"),
    ('{"data": [{"question": "q", "answer": "#### ' + "7" * 5000 + '", "n": ' + "7" * 5000 + "}]}",
     r"cannot be read as JSON \(Exceeds the limit"),
])
def test_a_json_release_file_python_cannot_read_is_named_not_a_traceback(tmp_path, text, message):
    source = tmp_path / "gsm8k.json"
    source.write_text(text)
    with pytest.raises(DatasetError, match=rf"^dataset 'gsm8k': .*gsm8k\.json {message}"):
        normalise_split(get_adapter("gsm8k", str(source)), "test", "gsm8k")


def test_unknown_option_stops_prepare_before_anything_is_written(capsys, tmp_path):
    code, err = run_cli(capsys, "prepare", "--dataset", "gsm8k", "--source", FIXTURES / "gsm8k.jsonl", "--split",
                        "test", "--name", "gsm8k_main", "--options", '{"hub_confg": "main"}',
                        "--out", tmp_path / "rows.parquet")
    assert code == 2 and "Traceback" not in err
    assert err == ("advdistill prepare: error: datasets.gsm8k_main.options.hub_confg: unknown option of the 'gsm8k' "
                   "adapter (known: hub_config, hub_splits)\n")
    assert files_under(tmp_path) == set()


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
