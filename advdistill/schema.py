"""The config schema and strict config files.

``advdistill/config.schema.yaml`` (linked from ``workflow/schemas/``) describes every config key. Snakemake
planning validates the whole config against it and fills in its defaults; every CLI stage validates the section
it receives against that section's part of it (:func:`advdistill.config.from_dict`), so that a stage called by
hand rejects what planning rejects, with the same message naming the key. The schema ships inside the package,
so that an installed package (a container image) finds it without the repository.

Numbers are strict too: a ``number`` must be finite (JSON Schema's ranges are false for NaN, so ``.nan`` and
``.inf`` would pass every ``minimum`` and ``maximum``) and an ``integer`` must be an int (JSON Schema takes ``4.0``,
which then fails in the job).

Config files are read with a strict loader: a key given twice in one mapping is an error (YAML and JSON loaders,
Snakemake's included, silently keep the last one), and a syntax error names the file, line and column; JSON given
on the command line is read the same way (:func:`json_object`).
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from advdistill.errors import ConfigError

SCHEMA_URI = "urn:advdistill:config-schema"


def _is_finite_number(checker, instance: Any) -> bool:
    """An int (any size: converting one of 400 digits to float would overflow) or a finite float, not a bool."""
    if isinstance(instance, bool):
        return False
    return isinstance(instance, int) or (isinstance(instance, float) and math.isfinite(instance))


def _is_integer(checker, instance: Any) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)


def _ecma_pattern(validator, pattern: str, instance: Any, schema: dict[str, Any]):
    """``pattern`` as JSON Schema (ECMA-262) reads it: a final ``$`` is the end of the string. Python's ``$`` also
    matches before a trailing newline, so ``"student\\n"`` passed ``^[A-Za-z0-9_.-]*$`` and became a path part."""
    from jsonschema import ValidationError

    if not isinstance(instance, str):
        return
    anchored = pattern[:-1] + r"\Z" if pattern.endswith("$") and not pattern.endswith(r"\$") else pattern
    if not re.search(anchored, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


@functools.cache
def load_schema() -> dict[str, Any]:
    return yaml.safe_load(resources.files("advdistill").joinpath("config.schema.yaml").read_text())


def validate(instance: Any, pointer: str = "", section: str = "", set_defaults: bool = False) -> None:
    """Validate ``instance`` against the schema part at JSON pointer ``pointer`` (``""``: the whole config).

    ``section`` is the key path of ``instance`` in the config, for the messages. With ``set_defaults``, absent
    keys get their schema default (as Snakemake's ``validate`` does), so the rules see every key. Raises a
    :class:`ConfigError` with one line per error, each naming the key.
    """
    from jsonschema import Draft202012Validator, validators
    from referencing import Registry
    from referencing.jsonschema import DRAFT202012

    # without "$schema", so that following a "$ref" into it keeps the validator class (and its default filling)
    schema = {key: value for key, value in load_schema().items() if key != "$schema"}
    registry = Registry().with_resource(SCHEMA_URI, DRAFT202012.create_resource(schema))
    validator_class = validators.extend(
        Draft202012Validator, {"pattern": _ecma_pattern},
        type_checker=Draft202012Validator.TYPE_CHECKER.redefine_many({"number": _is_finite_number,
                                                                       "integer": _is_integer}))
    if set_defaults:
        check_properties = validator_class.VALIDATORS["properties"]

        def fill_defaults(validator, properties, instance, schema):
            for key, subschema in properties.items():
                if "default" in subschema and isinstance(instance, dict):
                    instance.setdefault(key, subschema["default"])
            yield from check_properties(validator, properties, instance, schema)

        validator_class = validators.extend(validator_class, {"properties": fill_defaults})
    validator = validator_class({"$ref": f"{SCHEMA_URI}#{pointer}"}, registry=registry)
    lines = []
    for error in sorted(validator.iter_errors(instance), key=lambda e: [str(p) for p in e.absolute_path]):
        lines.extend(line for line in _messages(error, section) if line not in lines)
    lines += [f"config {_key_path(section, path) or '(top level)'}: text that UTF-8 cannot encode (a lone "
              f"surrogate, such as a \\ud800 escape)" for path in _unencodable_text(instance)]
    if lines:
        raise ConfigError("\n".join(lines))


# Text that reads as one value of a JSON Schema type, as a YAML or JSON config file would read it.
_BOOLEANS = {"true": True, "True": True, "false": False, "False": False}
_INTEGER = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_TYPE_NAMES = {"boolean": "true or false", "integer": "an integer", "number": "a number", "null": "null"}
_EXAMPLES = {"boolean": ["true", "false"], "integer": ["4"], "number": ["0.002", "2e-3"], "null": ["null"]}


def type_command_line_values(config: dict[str, Any], given: Any) -> None:
    """Give the text values of ``--config`` (``given``, as Snakemake parsed it) the type the schema asks for, in
    ``config``, before validation.

    Snakemake reads a value nested in a ``--config`` mapping (``training={"optim": {"learning_rate": 0.002}}``) with
    YAML's BaseLoader, which keeps every scalar as text, so ``0.002`` arrives as ``'0.002'``. A text value where the
    schema takes no string (a number, an integer, a boolean or null) becomes that value when it is written as one
    (``0.002``, ``1e-3``, ``4``, ``true``, ``null``); otherwise planning stops naming the key and the config file
    way to set it. A key the schema leaves untyped (``datasets.<name>.options``) keeps its text.
    """
    problems = []
    for path, text in _text_leaves(given):
        types = _schema_types(path)
        if not types or "string" in types or _value_at(config, path) != text:
            continue
        try:
            _set_value(config, path, _typed(text, types))
        except ValueError:
            kinds = sorted(types, key=list(_TYPE_NAMES).index)
            expected = " or ".join(_TYPE_NAMES[kind] for kind in kinds)
            examples = ", ".join(example for kind in kinds for example in _EXAMPLES[kind])
            problem = f"config {_key_path('', path)}: {text!r} from --config is not {expected}"
            if len(path) > 1:
                problem += (f"; Snakemake passes values nested in a --config mapping on as text, which planning reads "
                            f"as {expected} only when written as one ({examples}). Or set the key in a small config "
                            f"file given after yours: --configfile config.yaml override.yaml, override.yaml holding "
                            f"{_yaml_snippet(path)}")
            problems.append(problem)
    if problems:
        raise ConfigError("\n".join(problems))


def _text_leaves(node: Any, path: tuple = ()) -> Iterable[tuple[tuple, str]]:
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, Mapping):
        for key, value in node.items():
            yield from _text_leaves(value, path + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _text_leaves(value, path + (index,))


def _value_at(node: Any, path: tuple) -> Any:
    for part in path:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return None
    return node


def _set_value(node: Any, path: tuple, value: Any) -> None:
    _value_at(node, path[:-1])[path[-1]] = value


def _typed(text: str, types: set[str]) -> Any:
    """``text`` as a value of one of ``types`` (no ``string`` among them); a ValueError when it reads as none."""
    if "boolean" in types and text in _BOOLEANS:
        return _BOOLEANS[text]
    if "null" in types and text == "null":
        return None
    if types & {"integer", "number"} and _INTEGER.fullmatch(text):
        return int(text)
    if "number" in types and _DECIMAL.fullmatch(text) and math.isfinite(float(text)):
        return float(text)
    raise ValueError(text)


def _schema_types(path: tuple) -> set[str]:
    """The JSON types the schema allows at ``path``, those of every alternative; empty where it names none, or an
    enum (then text stays text). A variant's ``training`` overrides keys of the training section."""
    if path[:1] == ("variants",) and path[2:3] == ("training",):
        schemas, path = _alternatives(load_schema()["properties"]["training"]), path[3:]
    else:
        schemas = _alternatives(load_schema())
    for part in path:
        schemas = [alternative for schema in schemas for alternative in _alternatives(_child(schema, part))]
    types = set()
    for schema in schemas:
        if "enum" in schema or "const" in schema:
            return set()
        declared = schema.get("type", [])
        types.update([declared] if isinstance(declared, str) else declared)
    return types


def _alternatives(schema: dict[str, Any] | None) -> list[dict[str, Any]]:
    """``schema`` and the schemas its ``$ref``, ``allOf``, ``anyOf`` and ``oneOf`` lead to."""
    if schema is None:
        return []
    found = [schema]
    if "$ref" in schema:
        target: Any = load_schema()
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        found += _alternatives(target)
    for keyword in ("allOf", "anyOf", "oneOf"):
        for branch in schema.get(keyword, []):
            found += _alternatives(branch)
    return found


def _child(schema: dict[str, Any], part: Any) -> dict[str, Any] | None:
    """The subschema of a key (a list index: an item) in ``schema``."""
    if isinstance(part, int):
        items = schema.get("items")
        return items if isinstance(items, dict) else None
    if part in schema.get("properties", {}):
        return schema["properties"][part]
    extra = schema.get("additionalProperties")
    return extra if isinstance(extra, dict) else None


def _yaml_snippet(path: tuple) -> str:
    """``training: {optim: {learning_rate: ...}}`` for a key path (a list is given whole: ``seeds: [...]``)."""
    text = "..."
    keys = list(path)
    if any(isinstance(part, int) for part in keys):
        keys, text = keys[:next(i for i, part in enumerate(keys) if isinstance(part, int))], "[...]"
    for key in reversed(keys):
        text = f"{{{key}: {text}}}"
    return text[1:-1]


def is_encodable(text: str) -> bool:
    """UTF-8 can write it (JSON's ``\\ud800`` escapes decode to lone surrogates, which it cannot)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _unencodable_text(instance: Any, path: tuple = ()) -> Iterable[tuple]:
    """Key paths of the strings (keys included) that UTF-8 cannot encode: they plan fine, then crash a stage."""
    if isinstance(instance, str):
        if not is_encodable(instance):
            yield path
    elif isinstance(instance, dict):
        for key, value in instance.items():
            yield from _unencodable_text(key, path) if isinstance(key, str) else ()
            yield from _unencodable_text(value, path + (key,))
    elif isinstance(instance, list):
        for index, value in enumerate(instance):
            yield from _unencodable_text(value, path + (index,))


def declared_properties(schema: dict[str, Any]) -> dict[str, Any]:
    """Key -> subschema of every key a schema object declares: its own ``properties`` and those of the ``$defs``
    entry its ``$ref`` names (``sampling`` and ``evaluation`` take the engine keys that way)."""
    reference = schema.get("$ref", "")
    inherited = (declared_properties(load_schema()["$defs"][reference.removeprefix("#/$defs/")])
                 if reference.startswith("#/$defs/") else {})
    return {**inherited, **schema.get("properties", {})}


def _key_path(section: str, path: Iterable[Any]) -> str:
    text = section
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


def _messages(error, section: str) -> list[str]:
    """One line per problem: ``config <key path>: <what is wrong>``."""
    where = _key_path(section, error.absolute_path)
    if error.validator in ("additionalProperties", "unevaluatedProperties") and error.validator_value is False:
        known = sorted(declared_properties(error.schema))
        unknown = sorted(set(error.instance) - set(known))
        return [f"config {_key_path(where, [key])}: unknown key (known: {', '.join(known)})" for key in unknown]
    message = error.message
    if error.validator == "type" and isinstance(error.instance, float) and not math.isfinite(error.instance):
        message = f"{error.instance!r} is not a finite number"
    elif error.validator == "type" and isinstance(error.instance, float) and "integer" in str(error.validator_value):
        message = f"{error.instance!r} is not an integer (write {int(error.instance)})" if \
            error.instance.is_integer() else f"{error.instance!r} is not an integer"
    if error.validator == "pattern" and "description" in error.schema:
        message = f"{error.instance!r} is not {error.schema['description']}"
    if error.validator == "not" and "description" in error.validator_value:
        message = f"{error.instance!r} {error.validator_value['description']}"
    if "propertyNames" in error.relative_schema_path:
        message = f"key {message}"
    return [f"config {where or '(top level)'}: {message}"]


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping (merge keys ``<<`` may still override)."""

    def construct_mapping(self, node, deep=False):
        first_lines = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            mark = key_node.start_mark
            if isinstance(key, (str, int, float, bool)) and key in first_lines:
                raise ConfigError(f"config file {mark.name}, line {mark.line + 1}, column {mark.column + 1}: key "
                                  f"'{key}' is given twice in this mapping (first on line {first_lines[key]}); "
                                  f"YAML keeps only the last value, so remove one")
            first_lines[key] = mark.line + 1
        return super().construct_mapping(node, deep)


def _unique_json_pairs(where: str, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise ConfigError(f"{where}: key(s) {', '.join(map(repr, repeated))} given twice in one object; "
                          f"JSON loaders keep only the last value, so remove one")
    return dict(pairs)


def json_object(text: str, where: str) -> dict[str, Any]:
    """A JSON object given on the command line (``where`` names it in messages): empty text is ``{}``; anything
    but an object (``[]``, ``null``) and a key given twice are errors, as in a config file."""
    if not text:
        return {}
    try:
        value = json.loads(text, object_pairs_hook=functools.partial(_unique_json_pairs, where))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{where} is not valid JSON: {err}") from err
    except RecursionError:
        raise ConfigError(f"{where} is nested too deeply to be settings") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a JSON object, got {json.dumps(value)}")
    return value


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A config file as Snakemake reads it (JSON, else YAML), but strict: a repeated key or a syntax error is a
    :class:`ConfigError` naming the file, line and column."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text, object_pairs_hook=functools.partial(_unique_json_pairs, f"config file {path}"))
    except json.JSONDecodeError:
        pass
    try:
        with path.open(encoding="utf-8") as stream:  # the marks of errors carry the stream's name
            data = yaml.load(stream, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        context = f"{err.context}; " if err.context else ""
        raise ConfigError(f"config file {path}, line {mark.line + 1}, column {mark.column + 1}: YAML syntax error: "
                          f"{context}{err.problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of config keys, got {type(data).__name__}")
    size = expanded_size(data)
    if size > MAX_CONFIG_VALUES:
        raise ConfigError(f"config file {path}: its YAML aliases expand to {size:,} values, over the limit of "
                          f"{MAX_CONFIG_VALUES:,} (an alias bomb?); write the values out or use fewer nested aliases")
    return data


# Far above any real configuration (the paper's have a few hundred values), far below what exhausts memory.
MAX_CONFIG_VALUES = 100_000


def expanded_size(node: Any) -> int:
    """How many values ``node`` holds once every YAML alias is written out, counted without writing them out: an
    aliased node is one object that PyYAML shares, so its size is computed once (time linear in the file). A node
    that holds itself (``&a [*a]``) never ends: its size is counted as over the limit."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(value: Any) -> int:
        if not isinstance(value, (dict, list)):
            return 1
        if id(value) in open_nodes:
            return MAX_CONFIG_VALUES + 1
        if id(value) not in sizes:
            open_nodes.add(id(value))
            children = value.values() if isinstance(value, dict) else value
            sizes[id(value)] = 1 + sum(size(child) for child in children)
            open_nodes.discard(id(value))
        return sizes[id(value)]

    return size(node)
