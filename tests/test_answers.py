import random
import re
import time

import pytest

from advdistill.answers import (
    extract_answer,
    extract_boxed,
    is_correct,
    judge_answers,
    normalize_number,
)
from advdistill.datasets import get_adapter
from advdistill.datasets.base import normalise_split
from advdistill.rewards import is_well_formatted
from tests.helpers import REPO, SHARED_DATA

FIXTURES = REPO / "tests" / "fixtures" / "datasets"


@pytest.mark.parametrize(("text", "expected"), [
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("first \\boxed{1} then \\boxed{2}", "2"),
    ("\\boxed {7}", "7"),
    ("\\fbox{9}", "9"),
    ("\\boxed{unbalanced", None),
    ("no box here", None),
    ("\\boxed{3} \\boxed{4", "3"),
    ("\\boxed{\\boxed{1}}", "1"),                                          # the box opened last wins
    ("\\boxed{a{b}c} \\boxed{", "a{b}c"),
    ("} \\boxed{x}}", "x"),
    ("\\boxedx{1}", None),
])
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(("response", "expected"), [
    ("<think>\\boxed{1}</think><answer>\\boxed{2}</answer>", "2"),           # boxed in answer wins
    ("<think>\\boxed{1}</think><answer>2</answer>", "1"),                     # boxed anywhere before bare answer
    ("<think>x</think><answer> 42 </answer>", "42"),                          # answer text fallback
    ("The answer is 42.", None),                                              # no last-number fallback
    ("", None),
])
def test_extract_answer(response, expected):
    assert extract_answer(response) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("1,234", "1234"), ("\\$5", "5"), ("12 \\text{ apples}", "12"), ("-3", "-3"), ("0.50", "0.5"),
    ("50\\%", "50"), ("1 and 2", None), ("x", None),
    ("5e2", "500"), ("1\u202f000", "1000"), ("\u221227", "-27"), ("\\sqrt{27}", None), ("27!", None), ("7i", None),
    ("\\dfrac12", None), ("27 \\text{ thousand}", None), ("12.50 dollars", "12.5"), ("5e-100", "5E-100"),
])
def test_normalize_number(text, expected):
    assert normalize_number(text) == expected


@pytest.mark.parametrize(("predicted", "gold", "kind", "expected"), [
    ("1,234 dollars", "1234", "numeric", True),
    ("12 \\text{ apples}", "12", "numeric", True),
    ("-10", "-10", "numeric", True),
    ("10", "-10", "numeric", False),
    ("\\frac{1}{2}", "0.5", "math", True),
    ("\\frac{1}{2}", "\\dfrac{1}{2}", "math", True),
    ("x^2", "x^{2}", "math", True),
    ("3", "4", "math", False),
    (None, "4", "numeric", False),
    ("   ", "4", "numeric", False),
    ("\\frac{{", "4", "math", False),                                        # garbage never raises
])
def test_is_correct_numeric_and_math(predicted, gold, kind, expected):
    assert is_correct(predicted, gold, kind) is expected


CHOICES = ["red", "green", "blue"]


@pytest.mark.parametrize(("predicted", "expected"), [
    ("B", True), ("(B)", True), ("B)", True), ("B. green", True), ("\\text{B}", True),
    ("green", True), (" Green ", True), ("A", False), ("blue", False), ("Z", False),
    ("b", True), ("(b)", True), ("b)", True), ("b.", True), ("a", False), ("d", False), ("be", False),
])
def test_is_correct_multiple_choice(predicted, expected):
    assert is_correct(predicted, "B", "multiple_choice", CHOICES) is expected


def test_lower_case_letter_that_is_an_option_text_means_the_text():
    choices = ["b", "a", "z"]  # option A's text is "b"
    assert not is_correct("b", "B", "multiple_choice", choices)
    assert is_correct("b", "A", "multiple_choice", choices)
    assert is_correct("(b)", "B", "multiple_choice", choices)
    assert not is_correct("b", "B", "multiple_choice", None)  # no options: a lone lower-case letter is no letter


# One table of (answer, gold, kind, expected), every gold as an adapter writes it from a real release file in
# ../shared/data (the row is named where one row is meant); multiple-choice golds use the options of a real
# MMLU-Pro row (MMLU_CHOICES). Classes: a number with anything but units, currency or spacing around it goes to
# math-verify; signs; thousands separators only between three-digit groups; scientific notation; units;
# exact decimals; zero-padded golds; math-verify golds; multiple-choice letters in either case.
M = "\u2212"   # minus sign
EN = "\u2013"  # en dash
NNBSP, THIN, NBSP = "\u202f", "\u2009", "\u00a0"
MMLU_CHOICES = {
    "C": ["TCP connect", "SCTP INIT scan", "SYN stealth scan"],  # mmlu_pro question_id 10737, gold C
    "D": ["Functional equivalence.", "Translation equivalence.", "Conceptual equivalence.",
          "Market equivalence."],  # mmlu_pro question_id 438, gold D
}
TABLE = [
    # amc23 id 0, gold 27.0: the number must be all that is said
    ("27", "27.0", "numeric", True),
    ("\\sqrt{27}", "27.0", "numeric", False),
    ("27\\pi", "27.0", "numeric", False),
    (M + "27", "27.0", "numeric", False),
    ("27!", "27.0", "numeric", False),
    ("27^2", "27.0", "numeric", False),
    ("27\u00b2", "27.0", "numeric", False),
    ("27\u00b72", "27.0", "numeric", False),
    ("27\u00bd", "27.0", "numeric", False),
    ("27 \\text{ thousand}", "27.0", "numeric", False),
    ("27 squared", "27.0", "numeric", False),
    ("27\\text{ squared}", "27.0", "numeric", False),
    ("27 pi", "27.0", "numeric", False),
    ("27k", "27.0", "numeric", False),
    ("27 x", "27.0", "numeric", False),
    ("not 27", "27.0", "numeric", False),
    ("27-", "27.0", "numeric", False),
    ("27 \\cdot", "27.0", "numeric", False),
    ("27 and 3", "27.0", "numeric", False),
    ("\\sqrt{729}", "27.0", "numeric", True),
    ("\\frac{54}{2}", "27.0", "numeric", True),
    ("+27", "27.0", "numeric", True),
    ("27.", "27.0", "numeric", True),
    # amc23 ids 5 (gold 7.0) and 8 (3.0), math500 golds 2 and 12: operators and letters around the number
    ("7i", "7.0", "numeric", False),
    ("7 i", "7.0", "numeric", False),
    ("\\pi/3", "3.0", "numeric", False),
    ("x^2", "2", "math", False),
    ("\\dfrac12", "12", "math", False),
    ("\\dfrac12", "\\frac{1}{2}", "math", True),
    # the amc23 gold -1.0: minus signs
    (M + "1", "-1.0", "numeric", True),
    (EN + "1", "-1.0", "numeric", True),
    ("- 1", "-1.0", "numeric", True),
    ("1", "-1.0", "numeric", False),
    # gsm8k test row 146, gold 2125 (#### 2,125): thousands separators between groups of three digits only
    ("2,125", "2125", "numeric", True),
    ("2 125", "2125", "numeric", True),
    ("2" + NNBSP + "125", "2125", "numeric", True),
    ("2" + THIN + "125", "2125", "numeric", True),
    ("2" + NBSP + "125", "2125", "numeric", True),
    ("2\\,125", "2125", "numeric", True),
    ("2{,}125", "2125", "numeric", True),
    ("\\$2,125 dollars", "2125", "numeric", True),
    ("21,25", "2125", "numeric", False),
    ("2,12,5", "2125", "numeric", False),
    ("2.125", "2125", "numeric", False),  # a full stop is a decimal point
    # gsm8k test row 201 (#### 114,200) and the seven-digit gold 1450000 (#### 1,450,000)
    ("114 200", "114200", "numeric", True),
    ("1,450,000", "1450000", "numeric", True),
    ("1,450 000", "1450000", "numeric", False),
    ("1.450.000", "1450000", "numeric", False),
    # gsm8k test row 249, gold 5600: scientific notation
    ("5.6e3", "5600", "numeric", True),
    ("56E2", "5600", "numeric", True),
    ("5.6e2", "5600", "numeric", False),
    # amc23 id 2, gold 45.0: units, currency, percent, degrees
    ("45\\%", "45.0", "numeric", True),
    ("45%", "45.0", "numeric", True),
    ("\\text{45 cm}", "45.0", "numeric", True),
    ("45 \\text{ apples}", "45.0", "numeric", True),
    ("45^\\circ", "45.0", "numeric", True),
    ("\\$45", "45.0", "numeric", True),
    ("45 \\text{ dozen}", "45.0", "numeric", False),
    # gsm_plus decimals (4.33, 58.625, 0.042): exact, no rounding
    ("4.330", "4.33", "numeric", True),
    ("4.3300001", "4.33", "numeric", False),
    ("58.625", "58.625", "numeric", True),
    ("58.62", "58.625", "numeric", False),
    (".042", "0.042", "numeric", True),
    # math500 gold .0000672 (kind math): bare numbers compare exactly (math-verify would round)
    ("0.0000672", ".0000672", "math", True),
    ("0.0000671", ".0000672", "math", False),
    # aime24 zero-padded golds (025, 073)
    ("25", "025", "numeric", True),
    ("0025", "025", "numeric", True),
    ("250", "025", "numeric", False),
    ("73.0", "073", "numeric", True),
    # gsm8k negative gold -10 (test)
    ("-10", "-10", "numeric", True),
    (M + "10", "-10", "numeric", True),
    ("10", "-10", "numeric", False),
    # math500 golds through math-verify
    ("10080", "10,\\!080", "math", True),
    ("10,080", "10,\\!080", "math", True),
    ("\\sqrt{117}", "3\\sqrt{13}", "math", True),
    ("6-5i", "6 - 5i", "math", True),
    ("6+5i", "6 - 5i", "math", False),
    ("\\frac{4}{3}", "\\frac43", "math", True),
    # gsm_plus fraction gold 1/4 (kind math)
    ("0.25", "1/4", "math", True),
    ("\\frac{1}{4}", "1/4", "math", True),
    ("4", "1/4", "math", False),
    # mmlu_pro question_id 10737 (3 options, gold C) and 438 (4 options, gold D)
    ("C", "C", "multiple_choice", True),
    ("(c)", "C", "multiple_choice", True),
    ("c", "C", "multiple_choice", True),
    ("c)", "C", "multiple_choice", True),
    ("\\text{(c)}", "C", "multiple_choice", True),
    ("syn stealth scan", "C", "multiple_choice", True),
    ("d", "C", "multiple_choice", False),
    ("a", "C", "multiple_choice", False),
    ("scan", "C", "multiple_choice", False),
    ("(d)", "D", "multiple_choice", True),
    ("d", "D", "multiple_choice", True),
    ("market equivalence.", "D", "multiple_choice", True),
    ("(C)", "D", "multiple_choice", False),
]


@pytest.mark.parametrize(("answer", "gold", "kind", "expected"), TABLE)
def test_answers_table(answer, gold, kind, expected):
    assert is_correct(answer, gold, kind, MMLU_CHOICES.get(gold) if kind == "multiple_choice" else None) is expected


def test_numbers_of_any_length_compare_exactly_without_a_traceback():
    huge = "9" * 5000  # past Python's 4300-digit limit for int(str)
    responses = [f"<think>t</think><answer>\\boxed{{{huge}}}</answer>",
                 f"<think>t</think><answer>\\boxed{{{huge[:-1]}8}}</answer>",
                 f"<think>t</think><answer>\\boxed{{\\sqrt{{{huge}}}}}</answer>"]
    for kind in ("numeric", "math"):
        _, correct = judge_answers(responses, [huge] * 3, [kind] * 3, [None] * 3)
        assert correct == [True, False, False]
    assert normalize_number(huge + ".000") == huge
    assert is_correct("1" + "0" * 30 + "1", "1" + "0" * 31, "numeric") is False  # no rounding to 28 digits
    assert is_correct("1e999999999", "1", "numeric") is False


def _adversarial_responses():
    return {
        "unclosed boxed": "\\boxed{" * 5000,
        "unclosed answer": "<answer>" * 5000,
        "unclosed fbox with spaces": "\\fbox {" * 5000,
        "boxed openers then spaces": ("\\boxed" + " " * 20) * 5000,
        "answer and boxed": "<think>x</think>" + "<answer>\\boxed{" * 5000,
        "closed tags repeated": "</think><answer>" * 5000,
        "one answer, unclosed boxes": "<think>x</think><answer>" + "\\boxed{" * 12000 + "</answer>",
        "deep nesting": "<think>x</think><answer>" + "\\boxed{" * 20000 + "1" + "}" * 20000 + "</answer>",
        "think tags": "<think>" * 10000 + "</think>" * 10000,
    }


@pytest.mark.parametrize("name", list(_adversarial_responses()))
def test_adversarial_responses_are_linear(name):
    response = _adversarial_responses()[name]
    assert 28_000 <= len(response) <= 200_000
    start = time.perf_counter()
    extract_boxed(response)
    extract_answer(response)
    is_well_formatted(response)
    assert time.perf_counter() - start < 0.5  # the quadratic scans took 3.6 s at 28 kB
    start = time.perf_counter()
    _, correct = judge_answers([response], ["27"], ["numeric"], [None])
    assert time.perf_counter() - start < 0.5 and correct == [False]  # nothing malformed reaches math-verify


# The extraction before the linear scan, kept here to show that the results are unchanged.
def _old_extract_boxed(text):
    found, position = None, 0
    while True:
        starts = [(i, o) for i, o in ((text.find(o, position), o) for o in ("\\boxed", "\\fbox")) if i >= 0]
        if not starts:
            return found
        start, opener = min(starts)
        cursor = start + len(opener)
        while cursor < len(text) and text[cursor].isspace():
            cursor += 1
        if cursor >= len(text) or text[cursor] != "{":
            position = start + len(opener)
            continue
        depth = 0
        for index in range(cursor, len(text)):
            depth += {"{": 1, "}": -1}.get(text[index], 0)
            if depth == 0:
                found = text[cursor + 1:index]
                break
        position = cursor + 1


def _old_extract_answer(response):
    blocks = re.findall(r"<answer>(.*?)</answer>", response, re.DOTALL)
    if blocks and _old_extract_boxed(blocks[-1]) is not None:
        return _old_extract_boxed(blocks[-1]).strip()
    if _old_extract_boxed(response) is not None:
        return _old_extract_boxed(response).strip()
    return next((block.strip() for block in reversed(blocks) if block.strip()), None)


def test_linear_extraction_gives_the_results_of_the_old_one():
    pieces = ["\\boxed", "\\fbox", "{", "}", " ", "x", "1", "<answer>", "</answer>", "<think>", "</think>"]
    rng = random.Random(0)
    for _ in range(5000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 14)))
        assert extract_boxed(text) == _old_extract_boxed(text), text
        assert extract_answer(text) == _old_extract_answer(text), text


real = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="real benchmark files (../shared/data) not present")


@real
@pytest.mark.parametrize(("name", "file", "split"), [
    ("gsm8k", "gsm8k_test.jsonl", "test"), ("gsm8k", "gsm8k_train.jsonl", "train"),
    ("gsm_plus", "gsm_plus_testmini.jsonl", "test"), ("math500", "math500_test.jsonl", "test"),
    ("amc23", "amc23_test.jsonl", "test"), ("aime24", "aime24_test.jsonl", "test"),
    ("mmlu_pro", "mmlu_pro_test.jsonl", "test"), ("mmlu_pro", "mmlu_pro_test.jsonl", "train"),
])
def test_every_real_gold_judges_itself_correct(name, file, split):
    assert_golds_judge_themselves_correct(name, SHARED_DATA / file, split)


@pytest.mark.parametrize(("name", "file", "split"), [
    ("gsm8k", "gsm8k.jsonl", "test"), ("gsm8k", "gsm8k_test.jsonl", "test"), ("gsm_plus", "gsm_plus.jsonl", "test"),
    ("mmlu_pro", "mmlu_pro.jsonl", "test"), ("mmlu_pro", "mmlu_pro.jsonl", "train"), ("open_rs", "open_rs.jsonl", "test"),
    ("open_s1", "open_s1.jsonl", "train"), ("open_s1", "open_s1.jsonl", "test"),
])
def test_every_fixture_gold_judges_itself_correct(name, file, split):
    """The same round trip as the real files' (adapter output through the judge), on the fixtures in the
    official layouts, so that it runs where ../shared/data is absent (CI)."""
    assert_golds_judge_themselves_correct(name, FIXTURES / file, split)


def assert_golds_judge_themselves_correct(name, path, split):
    rows, report = normalise_split(get_adapter(name, str(path)), split, name)
    assert rows.height > 0
    responses = [f"<think>..</think><answer>\\boxed{{{gold}}}</answer>" for gold in rows["answer"]]
    predicted, correct = judge_answers(responses, rows["answer"], rows["kind"], rows["choices"])
    wrong = [gold for gold, ok in zip(rows["answer"], correct) if not ok]
    assert not wrong, f"{len(wrong)} of {rows.height} golds judged wrong, first {wrong[:5]}"
    assert predicted == rows["answer"].to_list()
    assert "ambiguous_gold_answer" not in report.skipped
