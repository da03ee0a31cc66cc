"""Adapters for datasets read from an official release file or the hub (see :mod:`.sources`)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Any

from advdistill.datasets.base import DatasetAdapter
from advdistill.datasets.sources import load_records
from advdistill.errors import BadRow

NUMBER = re.compile(r"^-?\d+(?:\.\d+)?$")
FRACTION = re.compile(r"^-?\d+\s*/\s*\d+$")
# Thousands separators in a gold answer: commas before groups of exactly three digits, after a first group of
# one to three digits that does not start with 0 (``1,234``, ``-12,345,678.5``).
COMMA_GROUPED = re.compile(r"^-?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?$")
# A full stop that may be a thousands separator (European notation): several dots between three-digit groups
# (``1.234.567``), or one before three digits ending in 0 (``250.000``, ``2.500``), which a decimal would not
# carry but a thousands group would. ``58.625`` reads as a decimal.
DOT_GROUPED = re.compile(r"^-?[1-9]\d{0,2}(?:\.\d{3}){2,}$|^-?[1-9]\d{0,2}\.\d\d0$")


class ReleaseAdapter(DatasetAdapter):
    """A dataset with a hub id, per-split hub split names, and required fields.

    Options common to every release adapter: ``hub_config`` and ``hub_splits`` (our split -> the hub's
    split name) override the class defaults. Subclasses may derive a split from another one (see
    :class:`HeldOutSplit`). ``field_types`` holds the types of the official release (a field of another
    type is skipped as ``bad_type_<field>``).
    """

    hub_id: str
    hub_config: str | None = None
    hub_splits: dict[str, str] = {}
    required: tuple[str, ...] = ()
    option_types = {"hub_config": (str, None), "hub_splits": dict[str, str]}

    def __init__(self, source: str, options: dict[str, Any] | None = None, dataset: str | None = None):
        super().__init__(source, options, dataset)
        self.hub_splits = {**self.hub_splits, **self.options.get("hub_splits", {})}
        self.hub_config = self.options.get("hub_config", self.hub_config)

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.hub_splits)

    def records(self, split: str) -> Iterable[dict[str, Any]]:
        return load_records(self.name, self.source, self.hub_config, self.hub_splits[split], self.required)

    def field(self, record: dict[str, Any], name: str) -> Any:
        value = record.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise BadRow(f"missing_{name}")
        return value

    @staticmethod
    def record_id(record: dict[str, Any], name: str, fallback: str) -> str:
        """The record's own id (field ``name``), else ``fallback`` (its position): a null id is not ``"None"``."""
        value = record.get(name)
        return fallback if value is None or not str(value).strip() else str(value)


def final_answer_after_hashes(text: str) -> tuple[str, str]:
    """GSM8K-style solution: (reasoning without calculator annotations, answer after the last '####')."""
    if "####" not in text:
        raise BadRow("missing_final_answer")
    reasoning, _, answer = text.rpartition("####")
    return re.sub(r"<<[^>]*>>", "", reasoning).strip(), answer.strip()


def plain_gold_number(answer: str) -> str:
    """A GSM-style gold answer with its thousands separators removed (``2,125`` -> ``2125``). A comma anywhere
    but between three-digit groups (``2,5``, ``1,23,456``, ``1234,567``) or a full stop that may be a
    thousands separator (``250.000``) makes the gold ambiguous: the row is skipped as ``ambiguous_gold_answer``
    rather than guessed (deleting every comma made ``2,5`` 25)."""
    if "," in answer:
        if not COMMA_GROUPED.match(answer):
            raise BadRow("ambiguous_gold_answer")
        answer = answer.replace(",", "")
    if DOT_GROUPED.match(answer):
        raise BadRow("ambiguous_gold_answer")
    return answer


def numeric_kind(answer: str) -> str:
    """``numeric`` for integers and decimals, ``math`` for fractions; anything else is unanswerable."""
    if NUMBER.match(answer):
        return "numeric"
    if FRACTION.match(answer):
        return "math"
    raise BadRow("unanswerable")


def in_held_out(key: str, seed: int, fraction: float) -> bool:
    """Deterministic held-out membership from a hash of the record key (no shuffling state)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


class GSM8K(ReleaseAdapter):
    """GSM8K (Cobbe et al. 2021). Gold: the number after ``####`` with thousands separators removed
    (``#### 2,125`` -> ``2125``, see :func:`plain_gold_number`); ``solution``: the reasoning with ``<<…>>``
    annotations removed. Skips: ``missing_question``, ``missing_answer``, ``missing_final_answer``,
    ``ambiguous_gold_answer`` (``#### 2,5``, ``#### 250.000``), ``unanswerable``."""

    name = "gsm8k"
    hub_id = "openai/gsm8k"
    hub_config = "main"
    hub_splits = {"train": "train", "test": "test"}
    required = ("question", "answer")
    field_types = {"question": str, "answer": str}

    def normalise(self, record, index, split):
        reasoning, answer = final_answer_after_hashes(self.field(record, "answer"))
        answer = plain_gold_number(answer)
        return {"id": f"{split}-{index:05d}", "question": self.field(record, "question"), "answer": answer,
                "kind": numeric_kind(answer), "choices": [], "solution": reasoning}


class GSMPlus(ReleaseAdapter):
    """GSM-PLUS (Li et al. 2024), the 2,400-row ``testmini`` split the paper uses. Gold: the ``answer``
    field (integers and decimals ``numeric``, fractions ``math``; thousands separators as for GSM8K, an
    ambiguous one skipped as ``ambiguous_gold_answer``). The 300 "critical thinking" rows
    have no answer (``"None"``) and are skipped as ``unanswerable``. Option ``perturbation_types``
    keeps only those types (skip reason ``other_perturbation_type``)."""

    name = "gsm_plus"
    hub_id = "qtli/GSM-Plus"
    hub_splits = {"test": "testmini"}
    required = ("question", "answer")
    option_types = {**ReleaseAdapter.option_types, "perturbation_types": (list[str], None)}
    field_types = {"question": str, "answer": (str, int, float), "solution": str, "perturbation_type": str}

    def normalise(self, record, index, split):
        wanted = self.options.get("perturbation_types")
        if wanted and record.get("perturbation_type") not in wanted:
            raise BadRow("other_perturbation_type")
        answer = plain_gold_number(str(self.field(record, "answer")).strip())
        solution = record.get("solution") or ""
        reasoning = final_answer_after_hashes(solution)[0] if "####" in solution else solution
        return {"id": f"{split}-{index:05d}", "question": self.field(record, "question"), "answer": answer,
                "kind": numeric_kind(answer), "choices": [], "solution": reasoning}


class HeldOutSplit(ReleaseAdapter):
    """A release with one split that the paper divides into train and test itself.

    The paper does not say how; we hold out ``test_fraction`` of the records by a hash of their key
    (option ``split_seed``), so the division is stable and needs no state.
    """

    default_test_fraction: float = 0.2
    option_types = {**ReleaseAdapter.option_types, "test_fraction": (int, float), "split_seed": int}

    def __init__(self, source, options=None, dataset=None):
        super().__init__(source, options, dataset)
        self.test_fraction = float(self.options.get("test_fraction", self.default_test_fraction))
        if not 0 <= self.test_fraction <= 1:
            raise self.option_error("test_fraction", f"expected a share between 0 and 1, got {self.test_fraction}")
        self.split_seed = self.options.get("split_seed", 0)

    def check_held_out(self, key: str, split: str) -> None:
        if split in ("train", "test") and in_held_out(key, self.split_seed, self.test_fraction) != (split == "test"):
            raise BadRow(f"in_{'train' if split == 'test' else 'test'}_split")


class MMLUPro(HeldOutSplit):
    """MMLU-Pro (Wang et al. 2024). Gold: the option letter (``answer``), which must lie within the
    row's options (A..J; 3-10 options) else ``answer_letter_out_of_range``. Where letter and
    ``answer_index`` disagree (question 3983) the letter is trusted. ``train``/``test`` are carved
    from the hub's test split (paper: 2,284 test questions, ~19 %); ``validation`` is the hub's 70-row
    split. Option ``categories`` keeps only those categories (skip reason ``other_category``). ``options``
    must be a list of strings as in the release; a string (e.g. a CSV export's JSON text) is not split or
    parsed but skipped as ``bad_type_options``."""

    name = "mmlu_pro"
    hub_id = "TIGER-AI-Lab/MMLU-Pro"
    hub_splits = {"train": "test", "test": "test", "validation": "validation"}
    required = ("question", "options", "answer")
    default_test_fraction = 0.19
    option_types = {**HeldOutSplit.option_types, "categories": (list[str], None)}
    field_types = {"question_id": (int, str), "question": str, "options": list[str], "answer": str,
                   "category": str, "cot_content": str}

    def normalise(self, record, index, split):
        key = self.record_id(record, "question_id", str(index))
        self.check_held_out(key, split)
        wanted = self.options.get("categories")
        if wanted and record.get("category") not in wanted:
            raise BadRow("other_category")
        options = self.field(record, "options")
        letter = self.field(record, "answer").strip().upper()
        if len(letter) != 1 or not "A" <= letter < chr(ord("A") + len(options)):
            raise BadRow("answer_letter_out_of_range")
        return {"id": key, "question": self.field(record, "question"), "answer": letter,
                "kind": "multiple_choice", "choices": options, "solution": record.get("cot_content") or ""}


class OpenS1(HeldOutSplit):
    """OPEN-S1 (Dang & Ngo 2025): ``problem``, ``solution``, LaTeX ``answer`` (kind ``math``, checked
    with math-verify). The hub has one split; ``train``/``test`` are held out by hash (default 18 %,
    close to the paper's 553 test vs 2,474 kept training groups)."""

    name = "open_s1"
    hub_id = "knoveleng/open-s1"
    hub_splits = {"train": "train", "test": "train"}
    required = ("problem", "answer")
    default_test_fraction = 0.18
    field_types = {"problem": str, "answer": str, "solution": str}

    def normalise(self, record, index, split):
        problem = self.field(record, "problem")
        self.check_held_out(problem, split)
        return {"id": f"{index:05d}", "question": problem, "answer": self.field(record, "answer").strip(),
                "kind": "math", "choices": [], "solution": record.get("solution") or ""}


class OpenRS(ReleaseAdapter):
    """OPEN-RS (Dang & Ngo 2025), the OOD set for OPEN-S1 students: LaTeX answers (kind ``math``).
    The paper evaluates its "hard" problems (850). We could not check the release's field for the
    difficulty here, so it is configurable: options ``level_field`` (default ``level``) and ``level``
    (default ``hard``; null keeps every row). Rows of other levels are skipped as ``other_level``."""

    name = "open_rs"
    hub_id = "knoveleng/open-rs"
    hub_splits = {"test": "train"}
    required = ("problem", "answer")
    option_types = {**ReleaseAdapter.option_types, "level": (str, None), "level_field": str}

    def __init__(self, source, options=None, dataset=None):
        super().__init__(source, options, dataset)
        self.level_field = self.options.get("level_field", "level")
        self.field_types = {"problem": str, "answer": str, "solution": str, self.level_field: (str, int)}

    def normalise(self, record, index, split):
        level = self.options.get("level", "hard")
        if level is not None:
            value = record.get(self.level_field)
            if value is None:
                raise BadRow("missing_level")
            if str(value).strip().lower() != level.lower():
                raise BadRow("other_level")
        return {"id": f"{index:05d}", "question": self.field(record, "problem"),
                "answer": self.field(record, "answer").strip(), "kind": "math", "choices": [],
                "solution": record.get("solution") or ""}


class MATH500(ReleaseAdapter):
    """MATH-500 (Lightman et al. 2023): LaTeX answers, kind ``math``; id = ``unique_id``."""

    name = "math500"
    hub_id = "HuggingFaceH4/MATH-500"
    hub_splits = {"test": "test"}
    required = ("problem", "answer")
    field_types = {"unique_id": str, "problem": str, "answer": str, "solution": str}

    def normalise(self, record, index, split):
        return {"id": self.record_id(record, "unique_id", f"{index:05d}"), "question": self.field(record, "problem"),
                "answer": self.field(record, "answer").strip(), "kind": "math", "choices": [],
                "solution": record.get("solution") or ""}


class CompetitionNumeric(ReleaseAdapter):
    """AIME/AMC rows with numeric answers (AIME: zero-padded strings such as ``"025"``; AMC: floats
    such as ``27.0``), compared as numbers."""

    hub_splits = {"test": "test"}
    required = ("problem", "answer")
    field_types = {"id": (int, str), "problem": str, "answer": (str, int, float), "solution": str}

    def normalise(self, record, index, split):
        answer = str(self.field(record, "answer")).strip()
        if not NUMBER.match(answer):
            raise BadRow("unanswerable")
        return {"id": self.record_id(record, "id", str(index)), "question": self.field(record, "problem"),
                "answer": answer, "kind": "numeric", "choices": [], "solution": record.get("solution") or ""}


class AIME24(CompetitionNumeric):
    name = "aime24"
    hub_id = "math-ai/aime24"


class AMC23(CompetitionNumeric):
    name = "amc23"
    hub_id = "math-ai/amc23"


RELEASE_ADAPTERS = (GSM8K, GSMPlus, MMLUPro, OpenS1, OpenRS, MATH500, AIME24, AMC23)
