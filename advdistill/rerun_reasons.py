"""Rerun reasons a person can read: which config keys changed, with their old and new values.

Snakemake records the parameters of every output in ``.snakemake/metadata`` (the ``repr`` of each value, without
its name) and reruns a job whose parameters differ, giving as the reason both sets of differing values whole. Our
rules pass each stage's config section as one JSON parameter (:func:`advdistill.planning.params_json`), so a
one-key edit printed two JSON blobs of about a kilobyte each. :func:`describe_change` compares the recorded values
with the new ones key by key instead, one line per changed key (``training.optim.learning_rate: 0.001 ->
0.002``), and :func:`install` makes Snakemake print those lines as the reason.
"""

from __future__ import annotations

import ast
import functools
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

UNSET = object()
"""A key that one side does not have."""

LONGEST_VALUE = 100
"""Characters of a value shown in a line (a system prompt is cut, ending in '...')."""


def decode(recorded: str) -> Any:
    """A recorded parameter (its ``repr``) as the value the stage reads: a JSON parameter parsed (an ``@<file>``
    one read from its file, where it still is), anything else as Python wrote it."""
    try:
        value = ast.literal_eval(recorded)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return recorded
    if not isinstance(value, str):
        return value
    text = value
    if value.startswith("@") and Path(value[1:]).is_file():
        text = Path(value[1:]).read_text(encoding="utf-8")
    if not text.startswith(("{", "[")):
        return value
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return value


def changed_keys(old: Any, new: Any, path: str) -> list[tuple[str, Any, Any]]:
    """``(key path, old, new)`` of every value that differs, mappings compared key by key (a list is one value)."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return [] if old == new else [(path, old, new)]
    changes = []
    for key in sorted(set(old) | set(new), key=str):
        changes += changed_keys(old.get(key, UNSET), new.get(key, UNSET), f"{path}.{key}")
    return changes


def shown(value: Any) -> str:
    if value is UNSET:
        return "(unset)"
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list, str, bool, type(None))) else \
        str(value)
    return text if len(text) <= LONGEST_VALUE else text[:LONGEST_VALUE - 3] + "..."


def describe_change(old_values: Iterable[str], new_values: Iterable[str], labels: Mapping[str, str]) -> list[str]:
    """One line per changed key, ``<key>: <old> -> <new>``, from the recorded parameters only the old run had and
    those only the new one has (``repr`` texts, as Snakemake records them); ``labels`` names each new value (the
    config key it holds, else the parameter's name). Values carry no names in the record, so each new value is
    compared with the old one of the same kind (a mapping, or not) that differs from it least."""
    old = [decode(value) for value in sorted(old_values)]
    lines = []
    for text in sorted(new_values, key=lambda value: labels.get(value, "")):
        new, label = decode(text), labels.get(text, "a parameter")
        candidates = [value for value in old if isinstance(value, dict) == isinstance(new, dict)]
        if not candidates:
            lines.append(f"{label}: {shown(new)} (new)")
            continue
        match = min(candidates, key=lambda value: (type(value) is not type(new), len(changed_keys(value, new, ""))))
        old.remove(match)
        changes = changed_keys(match, new, label)
        lines += [f"{key}: {shown(before)} -> {shown(after)}" for key, before, after in changes]
        if not changes:  # the same value written otherwise (a JSON parameter moved to or from its @<file>)
            lines.append(f"{label}: written differently, same value")
    lines += [f"a parameter no longer given: {shown(value)}" for value in old]
    return lines


def install(key_of: Callable[[str, str, dict[str, str]], str | None]) -> None:
    """Make Snakemake's "Params have changed" reason name the changed keys (:func:`describe_change`) instead of
    printing both sets of values. ``key_of(rule, parameter, wildcards)`` is the config key a parameter holds, or
    None for the parameter's own name. Wraps Snakemake 9's ``PersistenceBase.params_changed`` (once: a second call
    replaces the first). A Snakemake without that internal keeps its own reason."""
    try:
        from snakemake.persistence import ParamsChange, PersistenceBase
    except ImportError:
        return
    if not hasattr(PersistenceBase, "params_changed"):
        return

    @dataclass
    class ReadableParamsChange(ParamsChange):
        lines: list[str] = field(default_factory=list)

        def __str__(self) -> str:
            return "".join(f"\n        {line}" for line in self.lines)

    recorded_change = getattr(PersistenceBase.params_changed, "__wrapped__", PersistenceBase.params_changed)

    @functools.wraps(recorded_change)
    def params_changed(self, job, file=None):
        change = recorded_change(self, job, file)
        if not change:
            return change
        labels = {repr(value): key_of(job.rule.name, name, job.wildcards_dict) or name
                  for name, value in job.params.items()}
        lines = describe_change(change.only_old, change.only_new, labels)
        return ReadableParamsChange(change.only_old, change.only_new, change.files, lines)

    PersistenceBase.params_changed = params_changed
