"""Final-answer extraction and checking, shared by scoring and evaluation.

Extraction order (:func:`extract_answer`): the last ``\\boxed{…}`` inside the last
``<answer>…</answer>`` block; else the last ``\\boxed{…}`` anywhere; else the text of the last
non-empty ``<answer>`` block; else nothing. There is deliberately no "last number in the text"
fallback: it would reward responses that ignore the requested format. Extraction is one linear scan
(blocks by ``str.find``, braces with a stack of open positions), so unclosed ``\\boxed{`` or ``<answer>``
repeated many times cost no more than any other text of that length.

Checking (:func:`is_correct`):

- ``numeric``: an answer is compared as a number (exact :class:`~decimal.Decimal` built from the digits,
  no rounding and no limit on digits) only when nothing but spacing, currency, ``%``/degree marks and
  unit words *after* the number surround it (``\\$1,234 dollars``, ``12 apples``, ``45\\%``,
  ``\\text{12 cm}``). Signs are normalised (U+2212 minus, an en dash where it is a sign, a leading ``+``);
  thousands separators (comma, space, thin space U+2009, narrow no-break space U+202F, no-break space
  U+00A0, LaTeX ``\\,`` and ``{,}``) count only between groups of exactly three digits; ``5e2`` is 500.
  Anything else around the number (operators, ``\\sqrt``, ``\\pi``, ``!``, ``^``, ``/``, a fraction, a
  letter glued to the number, a one-letter word, a word that changes the value such as ``thousand`` or
  ``squared``, a word before the number, a second number) sends the answer to math-verify, which decides.
- ``math``: two bare numbers (sign, digits, separators, decimal point) compare exactly as numbers too
  (math-verify rounds: to it 0.0000671 equals 0.0000672); anything else goes through math-verify.
- Before math-verify reads an answer (:func:`for_math_verify`), what it would silently drop after a number is
  made visible or refused: Unicode maths becomes LaTeX (``27²`` -> ``27^{2}``), a ``\\text{…}`` that is not
  plain unit words is shown bare (``27\\text{ squared}``), and a malformed answer (a dangling operator such as
  ``27-`` or ``27\\cdot``, a stray symbol such as ``27½``) is not correct.
- ``multiple_choice``: the gold letter in any common spelling (``B``, ``(B)``, ``B)``, ``B. text``,
  ``\\text{B}``), a lone lower-case letter within the row's options (``b``, ``(b)``, ``b)``; where an option's
  text is that very letter, the text is meant), or the gold option's text.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

from math_verify import parse, verify

BOXED_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
BRACE = re.compile(r"[{}]")
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|textit|textrm|textnormal|textup|textsf|texttt|textsc|textsl|emph|mathrm"
                          r"|mathbf|mathit|mathsf|mathtt|mathnormal|operatorname|mbox|hbox)\s*\{([^{}]*)\}")
LETTER = re.compile(r"^\(?([A-Z])\)?(?:[.:)]\s*.*)?$", re.DOTALL)
LONE_LOWER_LETTER = re.compile(r"^(?:\(([a-z])\)|([a-z])[).]?)$")

# Signs: the minus sign and its compatibility forms are a minus; an en dash is one where it is a sign (at the
# start, or after an opening bracket, comma, relation or currency sign), not in a range such as 3–5.
SIGN_TABLE = str.maketrans({"\u2212": "-", "\ufe63": "-", "\uff0d": "-", "\uff0b": "+"})
EN_DASH_SIGN = re.compile(r"(^|[(\[{,;:=<>$])(\s*)\u2013")

# Before math-verify reads an answer. It drops what it cannot read after a number (``27²``, ``27\cdot``,
# ``27\text{ squared}`` all equal 27 to it), reads only the last line and adds up numbers side by side
# (``20 7`` is 27 to it), so: whitespace runs become one space; thousands groups separated by spaces
# (``1 000``, ``1\,000``) are joined; Unicode maths is written as LaTeX; a text wrapper holds units (words of
# two or more letters that do not change the value) or its content is shown bare, where it is read as maths;
# and an answer is malformed, so not correct, where two numbers still stand side by side, it ends in an
# operator or relation, starts with a binary operator, has unbalanced braces, an odd number of ``|``, one of
# ``# @ ? ` ``, a negation (``\not``, ``\neg``), or a non-ASCII character other than a letter, space,
# currency sign or degree mark (``27½``, ``27‰``, a combining overline).
UNICODE_MATH = {"√": "\\sqrt ", "∛": "\\sqrt[3]", "π": "\\pi ", "×": "\\times ", "÷": "\\div ", "·": "\\cdot ",
                "⋅": "\\cdot ", "∙": "\\cdot ", "∞": "\\infty ", "≠": "\\neq ", "≤": "\\le ", "≥": "\\ge ",
                "±": "\\pm ", "∓": "\\mp "}
SUPERSCRIPTS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻⁽⁾", "0123456789+-()")
SUBSCRIPTS = str.maketrans("₀₁₂₃₄₅₆₇₈₉₊₋₍₎", "0123456789+-()")
SUPERSCRIPT_RUN = re.compile("[⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻⁽⁾]+")
SUBSCRIPT_RUN = re.compile("[₀₁₂₃₄₅₆₇₈₉₊₋₍₎]+")
UNICODE_SYMBOL = re.compile("[" + "".join(UNICODE_MATH) + "]")
LATEX_OPERATOR = r"\\(?:cdot|times|div|ast|pm|mp|le|leq|ge|geq|lt|gt|ne|neq|approx|equiv|sim|to|rightarrow)(?![A-Za-z])"
DANGLING_OPERATOR = re.compile(rf"(?:[-+*/^_=<>\u2013\\]|{LATEX_OPERATOR})\s*$")
SPACED_GROUPS = re.compile(r"(?<![0-9.])[1-9][0-9]{0,2}(?:(?: |\\,|\\ |~)[0-9]{3})+(?![0-9])")
JUXTAPOSED = re.compile(r"[0-9](?:\s|\\[,;: ]|~)+\.?[0-9]")
STRAY_ASCII = re.compile(r"[#@?`]|\\(?:not|neg|lnot)(?![A-Za-z])")
LEADING_OPERATOR = re.compile(r"^\s*(?:[*/^]|\\(?:cdot|times|div|ast)(?![A-Za-z]))")
UNIT_TEXT = re.compile(r"[\s.,;:()]*(?:[A-Za-z]{2,}(?![A-Za-z])(?:/[A-Za-z]+(?![A-Za-z]))?[\s.,;:()]*)*")

# LaTeX and symbols around a number, rewritten before it is read: spacing commands become spaces (so that
# ``1\,000`` is grouped like ``1 000``), ``{,}`` a comma, ``\!`` nothing, escaped currency and percent signs
# and degree marks their plain symbols.
LATEX_SPELLINGS = [
    (re.compile(r"\\!"), ""),
    (re.compile(r"\{,\}"), ","),
    (re.compile(r"\\(?:[,:;> ]|quad\b|qquad\b|enspace\b|thinspace\b)|~"), " "),
    (re.compile(r"\\\$|\\textdollar\b|\\dollar\b"), "$"),
    (re.compile(r"\\(?:pounds|textsterling)\b"), "£"),
    (re.compile(r"\\(?:euro|texteuro)\b"), "€"),
    (re.compile(r"\\%"), "%"),
    (re.compile(r"\^\s*(?:\\circ\b|\{\s*\\circ\s*\})|\\(?:degree|textdegree)\b"), "°"),
]
SEPARATORS = ", \u00a0\u2009\u202f"
# One token of an answer that states a number: the number itself (thousands groups of exactly three digits
# with one separator throughout; or plain digits, optional decimal part and exponent), a sign, a word,
# currency, percent or degree, spacing, a final full stop; anything else is "other".
TOKEN = re.compile(rf"""
    (?P<number>[1-9][0-9]{{0,2}}(?P<sep>[{SEPARATORS}])[0-9]{{3}}(?:(?P=sep)[0-9]{{3}})*(?![0-9])(?:\.[0-9]+)?
              |[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?
              |\.[0-9]+(?:[eE][-+]?[0-9]+)?)
   |(?P<sign>[-+])
   |(?P<word>[A-Za-z]+)
   |(?P<currency>[$£€¥₹¢])
   |(?P<mark>[%°])
   |(?P<space>\s+)
   |(?P<stop>\.)
   |(?P<other>.)
""", re.VERBOSE | re.DOTALL)
# Words after a number that change its value (or say it is part of an expression): such an answer is not
# "the number with a unit" and goes to math-verify. One-letter words (``x``, ``i``, ``e``, ``k``) never count
# as units either.
VALUE_WORDS = frozenset("""
    pi e i inf infinity sqrt root roots squared cubed square cube power powers factorial times plus minus over
    divided mod modulo choose inverse reciprocal negative not sin cos tan cot sec csc log ln exp arcsin arccos
    arctan sinh cosh tanh half halves third thirds quarter quarters fourth fourths fifth fifths sixth sixths
    seventh sevenths eighth eighths ninth ninths tenth tenths twelfth twelfths hundredth hundredths thousandth
    thousandths millionth millionths dozen dozens hundred hundreds thousand thousands million millions billion
    billions trillion trillions lakh lakhs crore crores bn mn grand mil thou
""".split())


def extract_boxed(text: str) -> str | None:
    """Content of the last brace-balanced ``\\boxed{…}`` (or ``\\fbox{…}``); unbalanced ones are ignored.

    One pass over the braces with a stack of open positions: a box's brace is matched by the first closing
    brace that balances it (braces before it do not matter), and of the closed boxes the one opened last wins.
    """
    box_braces = {match.end() - 1 for match in BOXED_OPEN.finditer(text)}
    if not box_braces:
        return None
    stack: list[int] = []
    best = None
    for match in BRACE.finditer(text):
        index = match.start()
        if text[index] == "{":
            stack.append(index)
        elif stack:
            opened = stack.pop()
            if opened in box_braces and (best is None or opened > best[0]):
                best = (opened, index)
    return None if best is None else text[best[0] + 1:best[1]]


def answer_blocks(text: str) -> list[str]:
    """Contents of the ``<answer>…</answer>`` blocks, left to right, each closed by the first ``</answer>``
    after its opening tag (as the non-greedy ``<answer>(.*?)</answer>``), found in one pass."""
    blocks = []
    position = 0
    while (start := text.find(ANSWER_OPEN, position)) >= 0:
        end = text.find(ANSWER_CLOSE, start + len(ANSWER_OPEN))
        if end < 0:  # no later opening tag can be closed either
            break
        blocks.append(text[start + len(ANSWER_OPEN):end])
        position = end + len(ANSWER_CLOSE)
    return blocks


def extract_answer(response: str) -> str | None:
    response = response or ""
    blocks = answer_blocks(response)
    if blocks:
        boxed = extract_boxed(blocks[-1])
        if boxed is not None:
            return boxed.strip()
    boxed = extract_boxed(response)
    if boxed is not None:
        return boxed.strip()
    for block in reversed(blocks):
        if block.strip():
            return block.strip()
    return None


def normalise_signs(text: str) -> str:
    """Minus-sign look-alikes as ``-`` (U+2212, U+FE63, U+FF0D; an en dash only where it is a sign)."""
    return EN_DASH_SIGN.sub(r"\1\2-", text.translate(SIGN_TABLE))


def parse_number(text: str, units: bool = True) -> Decimal | None:
    """The number an answer states, exactly, or None where it states none, several, or more than a number.

    With ``units``, spacing, currency, ``%``/degree marks and unit words after the number may surround it
    (see the module docstring); without, only a sign and spacing may.
    """
    cleaned = normalise_signs(TEXT_WRAPPER.sub(r" \1 ", text)) if units else normalise_signs(text)
    if units:
        for pattern, replacement in LATEX_SPELLINGS:
            cleaned = pattern.sub(replacement, cleaned)
    else:
        cleaned = cleaned.replace("\\!", "").replace("{,}", ",").replace("\\,", " ")
    tokens = [(m.lastgroup, m.start(), m.end(), m.group()) for m in TOKEN.finditer(cleaned)]
    number = None
    sign = ""
    for position, (kind, start, _, value) in enumerate(tokens):
        if kind == "space":
            continue
        if kind == "number":
            if number is not None:
                return None
            number = value
        elif kind == "sign":
            if number is not None or sign:
                return None
            sign = value
        elif not units or kind == "other":
            return None
        elif kind == "currency":
            continue
        elif number is None:  # words, marks and a full stop only after the number
            return None
        elif kind == "word":
            previous = tokens[position - 1]
            if len(value) < 2 or value.lower() in VALUE_WORDS or (previous[0] == "number" and previous[2] == start):
                return None
        elif kind == "stop" and any(t[0] != "space" for t in tokens[position + 1:]):
            return None
    if number is None:
        return None
    digits = number
    for separator in SEPARATORS:
        digits = digits.replace(separator, "")
    try:
        return Decimal(sign + digits)
    except InvalidOperation:  # an exponent beyond what a Decimal holds
        return None


def _plain(value: Decimal) -> str:
    """``value`` written without trailing zeros or exponent (exactly: no context rounding); an exponent that
    would need more than 64 zeros is kept in scientific form (``5E+1000``) rather than written out."""
    sign, digits, exponent = value.as_tuple()
    text = "".join(map(str, digits)).lstrip("0")
    if not text:
        return "0"
    stripped = text.rstrip("0")
    exponent += len(text) - len(stripped)
    text = stripped
    prefix = "-" if sign else ""
    if 0 <= exponent <= 64:
        return prefix + text + "0" * exponent
    if exponent < 0 and -exponent <= len(text) + 64:
        point = len(text) + exponent  # digits before the decimal point; below 0, zeros after it
        if point > 0:
            return f"{prefix}{text[:point]}.{text[point:]}"
        return f"{prefix}0.{'0' * -point}{text}"
    return f"{prefix}{text}E{exponent:+d}"


def normalize_number(text: str) -> str | None:
    """The number an answer states, written plainly (``\\$1,234 dollars`` -> ``1234``, ``5e2`` -> ``500``), or
    None where it states none, several, or more than a number (``\\sqrt{27}``, ``27!``, ``7i``)."""
    value = parse_number(text)
    return None if value is None else _plain(value)


def _unit_text(content: str) -> bool:
    return bool(UNIT_TEXT.fullmatch(content)) and not any(
        word.lower() in VALUE_WORDS for word in re.findall(r"[A-Za-z]+", content))


def _braces_balance(text: str) -> bool:
    depth = 0
    for match in BRACE.finditer(text.replace("\\{", "").replace("\\}", "")):
        depth += 1 if match.group() == "{" else -1
        if depth < 0:
            return False
    return depth == 0


def for_math_verify(text: str) -> str | None:
    """``text`` as math-verify should read it (see :data:`UNICODE_MATH`), or None where it is malformed."""
    text = " ".join(normalise_signs(text).split())  # on several lines math-verify reads the last one only
    text = SUPERSCRIPT_RUN.sub(lambda m: "^{" + m.group().translate(SUPERSCRIPTS) + "}", text)
    text = SUBSCRIPT_RUN.sub(lambda m: "_{" + m.group().translate(SUBSCRIPTS) + "}", text)
    text = UNICODE_SYMBOL.sub(lambda m: UNICODE_MATH[m.group()], text)
    text = TEXT_WRAPPER.sub(lambda m: m.group() if _unit_text(m.group(1)) else f" {m.group(1)} ", text)
    text = SPACED_GROUPS.sub(lambda m: re.sub(r"[^0-9]", "", m.group()), text)
    if JUXTAPOSED.search(text) or DANGLING_OPERATOR.search(text) or LEADING_OPERATOR.search(text) or STRAY_ASCII.search(text):
        return None
    if not _braces_balance(text) or text.count("|") % 2 or any(ord(c) > 127 and unicodedata.category(c)[0] not in "LZ"
                                  and unicodedata.category(c) != "Sc" and c != "°" for c in text):
        return None
    return text


def _math_equal(predicted: str, gold: str) -> bool:
    predicted, gold = for_math_verify(predicted), for_math_verify(gold)
    if predicted is None or gold is None:
        return False
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
    gold = gold.strip().upper()
    letter = LETTER.match(stripped)
    if letter:
        return letter.group(1) == gold
    texts = [" ".join(choice.lower().split()) for choice in choices]
    said = " ".join(stripped.lower().split())
    lower = LONE_LOWER_LETTER.match(stripped)
    if lower and said not in texts:
        index = ord(lower.group(1) or lower.group(2)) - ord("a")
        return index < len(choices) and chr(ord("A") + index) == gold
    index = ord(gold) - ord("A") if len(gold) == 1 else -1
    return 0 <= index < len(choices) and said == texts[index]


def is_correct(predicted: str | None, gold: str, kind: str, choices: Sequence[str] | None = None) -> bool:
    if predicted is None or not predicted.strip():
        return False
    if kind == "multiple_choice":
        return _choice_correct(predicted, gold, [] if choices is None else list(choices))
    if kind in ("numeric", "math"):
        units = kind == "numeric"
        predicted_number, gold_number = parse_number(predicted, units), parse_number(gold, units)
        if predicted_number is not None and gold_number is not None:
            return predicted_number == gold_number
    return _math_equal(predicted, gold)


def judge_answers(responses: Sequence[str], golds: Sequence[str], kinds: Sequence[str],
                  choices: Sequence[Sequence[str] | None]) -> tuple[list[str | None], list[bool]]:
    """Extracted answers and their correctness for parallel columns of responses and gold rows."""
    predicted = [extract_answer(r) for r in responses]
    correct = [is_correct(p, gold, kind, options) for p, gold, kind, options in zip(predicted, golds, kinds, choices)]
    return predicted, correct
