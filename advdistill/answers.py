"""Final-answer extraction and checking, shared by scoring and evaluation.

Extraction order (:func:`extract_answer`): the last ``\\boxed{…}`` inside the last
``<answer>…</answer>`` block; else the last ``\\boxed{…}`` anywhere; else the text of the last
non-empty ``<answer>`` block; else nothing. There is deliberately no "last number in the text"
fallback: it would reward responses that ignore the requested format.

Checking (:func:`is_correct`): ``numeric`` answers compare as numbers after stripping thousands
separators, currency signs, units and trailing words (math-verify as a fallback); ``math`` answers
go through math-verify; ``multiple_choice`` answers match the gold letter in any common spelling
(``B``, ``(B)``, ``B)``, ``B. text``, ``\\text{B}``) or the gold option's text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

from math_verify import parse, verify

BOXED_OPENERS = ("\\boxed", "\\fbox")
ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+")
TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")
LETTER = re.compile(r"^\(?([A-Z])\)?(?:[.:)]\s*.*)?$", re.DOTALL)


def extract_boxed(text: str) -> str | None:
    """Content of the last brace-balanced ``\\boxed{…}`` (or ``\\fbox{…}``); unbalanced ones are ignored."""
    found = None
    position = 0
    while True:
        starts = [(text.find(opener, position), opener) for opener in BOXED_OPENERS]
        starts = [(i, o) for i, o in starts if i >= 0]
        if not starts:
            return found
        start, opener = min(starts)
        cursor = start + len(opener)
        while cursor < len(text) and text[cursor].isspace():
            cursor += 1
        if cursor >= len(text) or text[cursor] != "{":
            position = start + len(opener)
            continue
        content = _balanced(text, cursor)
        if content is not None:
            found = content
        position = cursor + 1


def _balanced(text: str, open_index: int) -> str | None:
    depth = 0
    for index in range(open_index, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return text[open_index + 1:index]
    return None


def extract_answer(response: str) -> str | None:
    blocks = ANSWER_BLOCK.findall(response or "")
    if blocks:
        boxed = extract_boxed(blocks[-1])
        if boxed is not None:
            return boxed.strip()
    boxed = extract_boxed(response or "")
    if boxed is not None:
        return boxed.strip()
    for block in reversed(blocks):
        if block.strip():
            return block.strip()
    return None


def normalize_number(text: str) -> str | None:
    """The number an answer states (``\\$1,234 dollars`` -> ``1234``), or None if it states none or several."""
    cleaned = TEXT_WRAPPER.sub(r" \1 ", text)
    cleaned = cleaned.replace("\\$", " ").replace("$", " ").replace("\\%", " ").replace("%", " ")
    cleaned = cleaned.replace("\\!", "").replace("{,}", ",").replace("\\,", "")
    numbers = NUMBER.findall(cleaned)
    if len(numbers) != 1:
        return None
    try:
        value = Decimal(numbers[0].replace(",", ""))
    except InvalidOperation:
        return None
    return format(value.normalize(), "f") if value != value.to_integral() else str(int(value))


def _math_equal(predicted: str, gold: str) -> bool:
    try:
        gold_parsed = parse(f"${gold}$", parsing_timeout=5)
        predicted_parsed = parse(f"${predicted}$", parsing_timeout=5)
        if not gold_parsed or not predicted_parsed:
            return False
        return bool(verify(gold_parsed, predicted_parsed, timeout_seconds=5))
    except Exception:  # math-verify raises on pathological input; such an answer is simply not correct
        return False


def _choice_correct(predicted: str, gold: str, choices: Sequence[str]) -> bool:
    stripped = TEXT_WRAPPER.sub(r"\1", predicted).strip()
    letter = LETTER.match(stripped)
    if letter:
        return letter.group(1) == gold.strip().upper()
    index = ord(gold.strip().upper()) - ord("A")
    if 0 <= index < len(choices):
        return " ".join(stripped.lower().split()) == " ".join(choices[index].lower().split())
    return False


def is_correct(predicted: str | None, gold: str, kind: str, choices: Sequence[str] | None = None) -> bool:
    if predicted is None or not predicted.strip():
        return False
    if kind == "multiple_choice":
        return _choice_correct(predicted, gold, [] if choices is None else list(choices))
    if kind == "numeric":
        predicted_number, gold_number = normalize_number(predicted), normalize_number(gold)
        if predicted_number is not None and gold_number is not None:
            return Decimal(predicted_number) == Decimal(gold_number)
    return _math_equal(predicted, gold)


def judge_answers(responses: Sequence[str], golds: Sequence[str], kinds: Sequence[str],
                  choices: Sequence[Sequence[str] | None]) -> tuple[list[str | None], list[bool]]:
    """Extracted answers and their correctness for parallel columns of responses and gold rows."""
    predicted = [extract_answer(r) for r in responses]
    correct = [is_correct(p, gold, kind, options) for p, gold, kind, options in zip(predicted, golds, kinds, choices)]
    return predicted, correct
