"""Every numeric config key, given hostile values: planning and the stage that reads the key agree.

For each ``number`` or ``integer`` key of every section a CLI stage parses, hypothesis draws values a user
could write (NaN, infinities, integral floats such as ``4.0``, booleans, huge, zero and negative numbers, and
ordinary ones), puts one into the test fixture's config, and runs both parsers: planning's (schema validation
with defaults, then every stage section as its CLI parses it) and the stage's own (the section as JSON on its
command line, what the rules pass). Either both reject it with a message naming the key, or both accept it.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from advdistill.config import SCHEMA_PARTS, STAGE_SECTIONS, section_from_json
from advdistill.errors import ConfigError
from advdistill.planning import check_stage_sections, without_dataset
from advdistill.schema import declared_properties, load_schema, validate
from tests.helpers import REPO

CONFIG = yaml.safe_load((REPO / ".test" / "config_basic.yaml").read_text())
SECTION_IN_CONFIG = {"bootstrap": ("teacher", "bootstrap")}
"""Where a stage's section stands in the config when not at its own name."""


def _resolve(schema: dict) -> dict:
    reference = schema.get("$ref", "")
    if reference.startswith("#/$defs/") and "properties" not in schema:
        return load_schema()["$defs"][reference.removeprefix("#/$defs/")]
    return schema


def numeric_keys() -> list[tuple[str, tuple[str, ...], str]]:
    """(stage section, key path inside it, 'number' or 'integer') of every numeric key."""
    found = []

    def walk(section: str, schema: dict, path: tuple[str, ...]) -> None:
        for key, subschema in declared_properties(_resolve(schema)).items():
            subschema = _resolve(subschema)
            types = subschema.get("type", [])
            types = [types] if isinstance(types, str) else types
            if "integer" in types or "number" in types:
                found.append((section, path + (key,), "integer" if "integer" in types else "number"))
            elif "object" in types and ("properties" in subschema or "$ref" in subschema):
                walk(section, subschema, path + (key,))

    for section, cls in STAGE_SECTIONS.items():
        node = load_schema()
        for part in SCHEMA_PARTS[cls].strip("/").split("/"):
            node = node[part]
        walk(section, node, ())
    return found


NUMERIC_KEYS = numeric_keys()


def test_the_walk_finds_the_keys_users_set():
    keys = {(section, ".".join(path)) for section, path, _ in NUMERIC_KEYS}
    assert {("training", "optim.learning_rate"), ("training", "optim.max_steps"), ("sampling", "top_p"),
            ("sampling", "n_samples"), ("score", "advantage_eps"), ("score", "cosine.max_length"),
            ("evaluation", "n_samples"), ("bootstrap", "optim.max_steps"), ("tokenizer", "vocab_size")} <= keys


def hostile(kind: str) -> st.SearchStrategy:
    integral = st.integers(-3, 10**6)
    values = st.one_of(st.sampled_from([math.nan, math.inf, -math.inf, 0, -1, 10**30, 10**400, True, False]),
                       integral, integral.map(float), st.floats(allow_nan=True, allow_infinity=True))
    return values if kind == "number" else st.one_of(values, st.floats(-1e6, 1e6).map(round))


def _set(config: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        config = config.setdefault(key, {})
    config[path[-1]] = value


def planning_verdict(config: dict) -> str | None:
    """None if planning accepts ``config``, else its message."""
    try:
        validate(config, set_defaults=True)
        check_stage_sections(config)
    except ConfigError as err:
        return str(err)
    return None


def stage_verdict(section: str, data: dict) -> str | None:
    """None if the stage's CLI parser accepts its section, else its message."""
    try:
        section_from_json(section, json.dumps(data))
    except ConfigError as err:
        return str(err)
    return None


@settings(max_examples=300, deadline=None, database=None)
@given(st.data())
def test_planning_and_the_stage_agree_on_hostile_numbers(data):
    section, path, kind = data.draw(st.sampled_from(NUMERIC_KEYS), label="key")
    value = data.draw(hostile(kind), label="value")
    config = copy.deepcopy(CONFIG)
    where = SECTION_IN_CONFIG.get(section, (section,))
    holder = config
    for key in where:
        holder = holder.setdefault(key, {})
    _set(holder, path, value)
    planned = planning_verdict(config)
    staged = stage_verdict(section, without_dataset(holder) if section in ("bootstrap", "tokenizer") else holder)
    key = ".".join(path)
    assert (planned is None) == (staged is None), f"{section}.{key} = {value!r}: planning {planned!r}, " \
                                                   f"stage {staged!r}"
    if planned is not None:
        assert key in planned and key in staged, (planned, staged)
    if isinstance(value, float) and not math.isfinite(value):
        assert planned is not None, f"{section}.{key} = {value!r} was accepted"
    if kind == "integer" and (isinstance(value, (bool, float))):
        assert planned is not None, f"{section}.{key} = {value!r} (not an int) was accepted"


@pytest.mark.parametrize("text", ["[]", "null", "3", '"x"'])
def test_settings_that_are_not_a_json_object_are_rejected(text):
    with pytest.raises(ConfigError, match=r"^config section 'training' must be a JSON object, got "):
        section_from_json("training", text)


def test_settings_nested_too_deeply_are_rejected_not_a_recursion_error():
    with pytest.raises(ConfigError, match=r"^config section 'score' is nested too deeply to be settings$"):
        section_from_json("score", '{"a": ' * 5000 + "1" + "}" * 5000)


def test_a_key_given_twice_in_settings_is_rejected():
    with pytest.raises(ConfigError, match=r"key\(s\) 'lam' given twice in one object"):
        section_from_json("training", '{"loss": {"lam": 0.5, "lam": 0.1}}')


@pytest.mark.parametrize(("steps", "message"), [
    (0, "0 is no step count: -1 trains for epochs, a positive number that many steps"),
    (-5, "-5 is less than the minimum of -1"),
    (4.0, "4.0 is not an integer (write 4)"),
])
def test_max_steps_is_minus_one_or_a_positive_count(steps, message):
    with pytest.raises(ConfigError, match=rf"^config training\.optim\.max_steps: {message}".replace("(", r"\(")
                       .replace(")", r"\)")):
        section_from_json("training", json.dumps({"optim": {"max_steps": steps}}))


def test_the_fixture_config_is_accepted_as_is():
    assert planning_verdict(copy.deepcopy(CONFIG)) is None


def test_an_integer_too_large_for_a_float_is_judged_by_the_schema_not_by_an_overflow():
    big = 10**400
    assert stage_verdict("score", {"advantage_eps": big}) is None  # a number with no maximum
    assert "is greater than the maximum of 1" in stage_verdict("sampling", {"top_p": big})
