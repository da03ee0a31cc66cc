"""Synthetic arithmetic word problems: the embedded, offline default dataset.

Problems are generated from a seed, so every machine builds the same rows. The ``in_distribution`` variant has
one or two add/subtract steps (splits ``train`` and ``test``); ``ood`` (split ``test``) perturbs each problem in
one of the ways of its ``perturbations`` option, in the spirit of GSM-PLUS: ``bigger_numbers`` (one digit more),
``rephrasing`` (sentences and question worded as no plain problem is), ``extra_step`` (a third step) or
``distractor`` (a sentence that carries an irrelevant number); the default is the first, third and fourth.
``mixed`` (splits ``train`` and ``test``) draws plain and perturbed problems alike: a broad corpus to bootstrap
models on, beside narrow distillation prompts. ``digits`` 2 (the default) uses two-digit numbers and works in
columns, units first, as a small model needs: ``48 + 37: 8 + 7 = 15 carry 1, 4 + 3 + 1 = 8, so 48 + 37 = 85.``;
``digits`` 1 starts from 2-20 and adds or takes one-digit amounts in one line: ``12 + 7 = 19.``
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from advdistill.datasets.base import DatasetAdapter
from advdistill.errors import BadRow

PEOPLE = (("Mia", "She"), ("Tom", "He"), ("Ava", "She"), ("Leo", "He"), ("Zoe", "She"),
          ("Sam", "He"), ("Ivy", "She"), ("Max", "He"))
ITEMS = ("apples", "marbles", "stickers", "coins", "books", "shells", "cards", "pencils")
GAIN = ("{who} finds {n} more.", "{who} buys {n} more.", "{who} gets {n} more.")
LOSS = ("{who} gives away {n}.", "{who} loses {n}.", "{who} sells {n}.")
OPENING = "{name} has {n} {item}."
QUESTION = "How many {item} does {name} have now?"
WORDINGS = {
    "trained": (OPENING, GAIN, LOSS, QUESTION),
    "rephrased": ("At first, {name} owns {n} {item}.",
                  ("{who} receives {n} extra.", "{who} collects another {n}.", "{who} is given {n} more."),
                  ("{who} hands over {n}.", "{who} drops {n}.", "{who} trades away {n}."),
                  "What is the number of {item} that {name} owns at the end?"),
}
"""Sentence templates: (opening, gains, losses, question); ``rephrased`` is never used for training rows."""
DISTRACTORS = ("{other} has {n} {item}.", "It rains for {n} minutes.", "The shop is {n} meters away.")
PERTURBATIONS = ("bigger_numbers", "rephrasing", "extra_step", "distractor")
DEFAULT_PERTURBATIONS = ["bigger_numbers", "extra_step", "distractor"]

TWO_DIGITS = (10, 99)
THREE_DIGITS = (100, 999)
NUMBER_RANGES = {1: ((2, 20), (2, 9)), 2: (TWO_DIGITS, TWO_DIGITS), 3: (THREE_DIGITS, THREE_DIGITS)}
"""``digits`` -> (range of the starting count, range of each step's amount)."""


def written_sum(a: int, b: int) -> str:
    """Column addition, units first, e.g. ``48 + 37: 8 + 7 = 15 carry 1, 4 + 3 + 1 = 8, so 48 + 37 = 85.``"""
    steps, carry = [], 0
    digits_a, digits_b = str(a)[::-1], str(b)[::-1]
    for i in range(max(len(digits_a), len(digits_b))):
        x = int(digits_a[i]) if i < len(digits_a) else 0
        y = int(digits_b[i]) if i < len(digits_b) else 0
        terms = " + ".join([str(x), str(y)] + (["1"] if carry else []))
        total = x + y + carry
        carry = total // 10
        steps.append(f"{terms} = {total}" + (" carry 1" if carry else ""))
    return f"{a} + {b}: {', '.join(steps)}, so {a} + {b} = {a + b}."


def written_difference(a: int, b: int) -> str:
    """Column subtraction (a >= b), units first, e.g. ``91 - 59: 11 - 9 = 2 borrow 1, 9 - 1 - 5 = 3, so ...``"""
    steps, borrow = [], 0
    digits_a, digits_b = str(a)[::-1], str(b)[::-1]
    for i in range(len(digits_a)):
        x = int(digits_a[i])
        y = int(digits_b[i]) if i < len(digits_b) else 0
        borrow_out = int(x - borrow < y)
        top = x + 10 * borrow_out
        terms = " - ".join([str(top)] + (["1"] if borrow else []) + [str(y)])
        steps.append(f"{terms} = {top - borrow - y}" + (" borrow 1" if borrow_out else ""))
        borrow = borrow_out
    return f"{a} - {b}: {', '.join(steps)}, so {a} - {b} = {a - b}."


def make_problem(rng: random.Random, steps: int, digits: int, distractor: bool = False,
                 wording: str = "trained") -> dict[str, str]:
    """One word problem with its reasoning and final answer.

    Amounts of one digit are added in one line (``12 + 7 = 19.``); longer ones in columns.
    """
    (first, last), (lo, hi) = NUMBER_RANGES[digits]
    in_columns = digits > 1
    opening, gains, losses, question = WORDINGS[wording]
    (name, pronoun), item = rng.choice(PEOPLE), rng.choice(ITEMS)
    total = rng.randint(first, last)
    sentences = [opening.format(name=name, n=total, item=item)]
    reasoning = []
    for step in range(steps):
        who = "Then " + pronoun.lower() if step else pronoun
        if total >= lo and rng.random() < 0.5:
            n = rng.randint(lo, min(hi, total))
            sentences.append(rng.choice(losses).format(who=who, n=n))
            reasoning.append(written_difference(total, n) if in_columns else f"{total} - {n} = {total - n}.")
            total -= n
        else:
            n = rng.randint(lo, hi)
            sentences.append(rng.choice(gains).format(who=who, n=n))
            reasoning.append(written_sum(total, n) if in_columns else f"{total} + {n} = {total + n}.")
            total += n
    if distractor:
        other = rng.choice([p for p, _ in PEOPLE if p != name])
        extra = rng.choice(DISTRACTORS).format(
            other=other, n=rng.randint(first, last), item=rng.choice(ITEMS))
        sentences.insert(rng.randint(1, len(sentences)), extra)
    sentences.append(question.format(item=item, name=name))
    return {"question": " ".join(sentences), "solution": " ".join(reasoning), "answer": str(total)}


MAX_PROBLEMS = 10_000_000  # rows per split; more would not fit in memory as one table
MAX_REPEATED_DRAWS = 100_000  # consecutive repeats that mean the problem space is used up (it would loop forever)


class SyntheticArithmetic(DatasetAdapter):
    """Options: ``variant`` (``in_distribution`` | ``ood`` | ``mixed``), ``digits`` (1 | 2), ``seed``, ``n_train``,
    ``n_test``, and for ``ood`` and ``mixed`` the ``perturbations`` to draw from (uniformly; ``mixed`` draws a plain
    problem as one more choice)."""

    name = "synthetic"
    option_types = {"variant": str, "seed": int, "n_train": int, "n_test": int, "perturbations": list[str],
                    "digits": int}

    def __init__(self, source: str, options: dict[str, Any] | None = None, dataset: str | None = None):
        super().__init__(source, options, dataset)
        self.variant = self.options.get("variant", "in_distribution")
        if self.variant not in ("in_distribution", "ood", "mixed"):
            raise self.option_error("variant", f"expected in_distribution, ood or mixed, got '{self.variant}'")
        self.splits = ("test",) if self.variant == "ood" else ("train", "test")
        self.seed = self.options.get("seed", 0)
        self.digits = self.options.get("digits", 2)
        if self.digits not in (1, 2):
            raise self.option_error("digits", f"expected 1 or 2, got {self.digits}")
        self.perturbations = self.options.get("perturbations", DEFAULT_PERTURBATIONS)
        unknown = sorted(set(self.perturbations) - set(PERTURBATIONS))
        if unknown or not self.perturbations:
            raise self.option_error("perturbations", f"expected a non-empty list of {', '.join(PERTURBATIONS)}, got "
                                                     f"{self.perturbations}")
        self.sizes = {"train": self.options.get("n_train", 0), "test": self.options.get("n_test", 100)}
        for split, size in self.sizes.items():
            if not 0 <= size <= MAX_PROBLEMS:
                raise self.option_error(f"n_{split}", f"expected a count from 0 to {MAX_PROBLEMS:,}, got {size}")

    def _problems(self, rng: random.Random) -> Iterator[dict[str, str]]:
        kinds = {"in_distribution": [""], "ood": self.perturbations, "mixed": ["", *self.perturbations]}[self.variant]
        while True:
            perturbation = rng.choice(kinds) if len(kinds) > 1 else kinds[0]
            yield {**self._problem(rng, perturbation), "perturbation": perturbation}

    def _problem(self, rng: random.Random, perturbation: str) -> dict[str, str]:
        if perturbation == "bigger_numbers":
            return make_problem(rng, rng.choice((1, 2)), self.digits + 1)
        if perturbation == "rephrasing":
            return make_problem(rng, rng.choice((1, 2)), self.digits, wording="rephrased")
        if perturbation == "extra_step":
            return make_problem(rng, 3, self.digits)
        return make_problem(rng, rng.choice((1, 2)), self.digits, distractor=perturbation == "distractor")

    def records(self, split: str) -> Iterator[dict[str, Any]]:
        """Unique problems; the test split comes first in the stream, so train never repeats it."""
        rng = random.Random(f"{self.seed}:{self.variant}")
        seen: set[str] = set()
        order = ("test",) if self.variant == "ood" else ("test", "train")
        for current in order:
            produced = repeats = 0
            for problem in self._problems(rng):
                if produced == self.sizes[current]:
                    break
                if problem["question"] in seen:
                    repeats += 1
                    if repeats == MAX_REPEATED_DRAWS:
                        raise self.option_error(
                            f"n_{current}", f"asked for {self.sizes[current]:,} distinct problems, but the last "
                            f"{MAX_REPEATED_DRAWS:,} drawn after {produced:,} were all repeats: this variant and "
                            "digits have too few; ask for fewer")
                    continue
                repeats = 0
                seen.add(problem["question"])
                produced += 1
                if current == split:
                    yield {**problem, "index": produced - 1}
            if current == split:
                return

    def normalise(self, record: dict[str, Any], index: int, split: str) -> dict[str, Any]:
        if not record.get("answer"):
            raise BadRow("missing_answer")
        suffix = f"-{record['perturbation']}" if record.get("perturbation") else ""
        return {
            "id": f"{self.variant}-{split}-{record['index']:05d}{suffix}",
            "question": record["question"],
            "answer": record["answer"],
            "kind": "numeric",
            "choices": [],
            "solution": record["solution"],
        }
