import math
import random
import re
import time

import pytest

from advdistill.answers import extract_boxed
from advdistill.config import CosineConfig
from advdistill.rewards import (
    REWARD_FUNCTIONS,
    composite_reward,
    format_reward,
    is_well_formatted,
    make_cosine_reward,
)

L_MAX = 2048
cosine = make_cosine_reward(CosineConfig(max_length=L_MAX))


@pytest.mark.parametrize(("length", "correct", "expected"), [
    (0, True, 1.0), (L_MAX // 2, True, 0.75), (L_MAX, True, 0.5), (5 * L_MAX, True, 0.5),
    (0, False, 0.0), (L_MAX // 2, False, -0.25), (L_MAX, False, -0.5), (5 * L_MAX, False, -0.5),
    (L_MAX // 4, True, 0.5 + 0.25 * (1 + math.cos(math.pi / 4))),
    (L_MAX // 4, False, -0.5 + 0.25 * (1 + math.cos(math.pi / 4))),
])
def test_cosine_reward_hand_computed(length, correct, expected):
    assert cosine(lengths=[length], correct=[correct]) == pytest.approx([expected], abs=1e-12)


def test_cosine_punishes_long_wrong_answers_most_and_rewards_short_correct_ones():
    right = cosine(lengths=[10, 1000], correct=[True, True])
    wrong = cosine(lengths=[10, 1000], correct=[False, False])
    assert right[0] > right[1] and wrong[0] > wrong[1]


WELL_FORMED = "<think>2 + 2 = 4.</think>\n<answer>\\boxed{4}</answer>"


@pytest.mark.parametrize(("response", "expected"), [
    (WELL_FORMED, 1.0),
    ("  " + WELL_FORMED + "\n", 1.0),
    ("<answer>\\boxed{4}</answer>", 0.0),                                   # no think
    ("<think>2 + 2 = 4.</think>", 0.0),                                     # no answer
    ("<think>x</think><answer>4</answer>", 0.0),                            # no boxed
    ("<think>\\boxed{4}</think><answer>4</answer>", 0.0),                   # boxed outside the answer
    ("<think><think>x</think></think><answer>\\boxed{4}</answer>", 0.0),    # nested think
    (WELL_FORMED + "<answer>\\boxed{5}</answer>", 0.0),                     # duplicated answer
    (WELL_FORMED + " and more text", 0.0),                                  # text after the answer
    ("<answer>\\boxed{4}</answer><think>x</think>", 0.0),                   # wrong order
    ("", 0.0),
])
def test_format_reward(response, expected):
    assert format_reward([response]) == [expected]


# The format check before the linear one (a regular expression with two lazy groups, quadratic on unclosed tags),
# kept here to show that the answers are unchanged.
OLD_FORMAT = re.compile(r"^\s*<think>(?P<think>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*$", re.DOTALL)


def _old_is_well_formatted(response):
    match = OLD_FORMAT.match(response or "")
    if not match or any(response.count(t) != 1 for t in ("<think>", "</think>", "<answer>", "</answer>")):
        return False
    return extract_boxed(match.group("answer")) is not None


def test_linear_format_check_gives_the_answers_of_the_old_one():
    tags = ["<think>", "</think>", "<answer>", "</answer>"]
    text = ["\\boxed{", "\\boxed{4}", "}", "{", " ", "\n", "x", "4"]
    rng = random.Random(0)

    def filler():
        return "".join(rng.choice(tags if rng.random() < 0.1 else text) for _ in range(rng.randint(0, 4)))

    agreed = []
    for _ in range(5000):  # a well-formed skeleton with random text in every gap, so both answers occur
        parts = ["<think>", filler(), "</think>", filler(), "<answer>", filler(), "</answer>"]
        response = "".join(rng.choice(["", " ", "\n", filler()]) + part for part in parts) + rng.choice(["", " "])
        assert is_well_formatted(response) == _old_is_well_formatted(response), response
        agreed.append(is_well_formatted(response))
    assert 50 < sum(agreed) < 4950


@pytest.mark.parametrize("response", ["<answer>" * 5000, "<think>" * 5000, "</think><answer>" * 5000,
                                      "<think>x</think><answer>" + "\\boxed{" * 10000 + "</answer>",
                                      " " * 100_000 + WELL_FORMED])
def test_format_check_is_linear_on_adversarial_responses(response):
    assert len(response) >= 28_000
    start = time.perf_counter()
    format_reward([response])
    assert time.perf_counter() - start < 0.5


def test_registry_and_composite_weights():
    assert set(REWARD_FUNCTIONS) >= {"cosine", "format"}
    components = {"cosine": [1.0, -0.5], "format": [1.0, 0.0]}
    assert composite_reward(components, {"cosine": 2.0, "format": 1.0}) == [3.0, -1.0]
    with pytest.raises(ValueError, match="correctness"):
        composite_reward(components, {"correctness": 1.0})
