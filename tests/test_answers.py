import pytest

from advdistill.answers import (
    extract_answer,
    extract_boxed,
    is_correct,
    normalize_number,
)


@pytest.mark.parametrize(("text", "expected"), [
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("first \\boxed{1} then \\boxed{2}", "2"),
    ("\\boxed {7}", "7"),
    ("\\fbox{9}", "9"),
    ("\\boxed{unbalanced", None),
    ("no box here", None),
    ("\\boxed{3} \\boxed{4", "3"),
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
])
def test_is_correct_multiple_choice(predicted, expected):
    assert is_correct(predicted, "B", "multiple_choice", CHOICES) is expected
