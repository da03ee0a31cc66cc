"""The model folders the stages load (a teacher, a student base, a trained student), checked before they are
loaded: a broken folder stops its stage with one line naming the folder and what is wrong, instead of a traceback
from inside transformers, safetensors or the chat template code.

A model the stages can use has ``config.json``, complete weights, a tokenizer with a chat template (prompts are
rendered with it) and an end-of-sequence token (sampling stops at it; the pad token falls back to it).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from advdistill.errors import InputError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
"""``owner/name``: a model the hub loaders fetch (or find in the cache) when no such local folder exists."""


def _json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _damaged_safetensors(folder: Path) -> str | None:
    from safetensors import SafetensorError, safe_open

    for path in sorted(folder.glob("*.safetensors")):
        try:  # reads the header alone; "numpy" spares planning, which runs this too, the import of torch
            with safe_open(str(path), "numpy"):
                pass
        except (SafetensorError, OSError) as err:
            return f"{path.name} is truncated or damaged ({str(err).splitlines()[0]})"
    return None


def _tokenizer_problem(folder: Path, config: dict[str, Any]) -> str | None:
    """A tokenizer.json that does not read, or whose token ids reach past the model's embeddings (generation would
    index out of them)."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        return None
    tokenizer = _json(path)
    if tokenizer is None:
        return "has a tokenizer.json that is not a JSON object (cut off?)"
    vocab = (tokenizer.get("model") or {}).get("vocab")
    ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab))) if isinstance(vocab, list) else []
    ids += [token.get("id") for token in tokenizer.get("added_tokens") or [] if isinstance(token, dict)]
    largest = max((i for i in ids if isinstance(i, int)), default=None)
    vocab_size = config.get("vocab_size")
    if largest is not None and isinstance(vocab_size, int) and largest >= vocab_size:
        return (f"has a tokenizer whose token ids reach {largest}, beyond config.json vocab_size {vocab_size}: the "
                "model has no embedding for them")
    return None


def _chat_template_problem(folder: Path, tokenizer_config: dict[str, Any]) -> str | None:
    """A chat template that does not parse as Jinja (every prompt is rendered with it). A tag Jinja does not know
    is left alone: transformers adds its own ({% generation %})."""
    from jinja2 import Environment, TemplateSyntaxError

    template = tokenizer_config.get("chat_template")
    if (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8", errors="replace")
    elif (folder / "chat_template.json").is_file():
        template = (_json(folder / "chat_template.json") or {}).get("chat_template")
    templates = [t.get("template") for t in template if isinstance(t, dict)] if isinstance(template, list) else [template]
    for text in templates:
        if not isinstance(text, str):
            continue
        try:
            Environment(extensions=["jinja2.ext.loopcontrols"]).parse(text)
        except TemplateSyntaxError as err:
            if not (err.message or "").startswith("Encountered unknown tag"):
                return f"has a chat template that does not parse (line {err.lineno}: {err.message})"
    return None


def model_folder_problem(folder: Path) -> str | None:
    """What makes ``folder`` unusable as a model ("not found" where nothing is there), or None."""
    if not os.path.lexists(folder):
        return "not found"
    if not folder.is_dir():
        return "is not a folder"
    if not any(folder.iterdir()):
        return "is empty"
    if not (folder / "config.json").is_file():
        return "has no config.json"
    config = _json(folder / "config.json")
    if config is None:
        return "has a config.json that is not a JSON object"
    if not isinstance(config.get("model_type"), str):
        return "has a config.json without a model_type (transformers cannot tell its architecture)"
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        return f"has no weights (none of {', '.join(WEIGHT_FILES)})"
    damaged = _damaged_safetensors(folder)
    if damaged:
        return damaged
    tokenizer_config = _json(folder / "tokenizer_config.json")
    if tokenizer_config is None or not any((folder / name).is_file() for name in TOKENIZER_FILES):
        return f"has no tokenizer (tokenizer_config.json and one of {', '.join(TOKENIZER_FILES)})"
    if not tokenizer_config.get("chat_template") and not any((folder / n).is_file() for n in CHAT_TEMPLATE_FILES):
        return "has no chat template (in tokenizer_config.json or chat_template.jinja); prompts are rendered with it"
    problem = _tokenizer_problem(folder, config) or _chat_template_problem(folder, tokenizer_config)
    if problem:
        return problem
    generation = _json(folder / "generation_config.json")
    if generation is None and (folder / "generation_config.json").exists():
        return ("has a generation_config.json that is not a JSON object (transformers would ignore it, and with it "
                "the model's own stop tokens)")
    generation = generation or {}
    if not (tokenizer_config.get("eos_token") or generation.get("eos_token_id") is not None
            or config.get("eos_token_id") is not None):
        return "names no end-of-sequence token (tokenizer_config.json eos_token): responses would never stop"
    return None


def check_model_source(source: str, option: str = "--model") -> None:
    """A local model folder must be usable (:func:`model_folder_problem`); a hub id (``owner/name`` with no such
    folder here) is left to the hub loaders."""
    path = Path(source)
    if not path.exists():
        if HUB_ID.match(source):
            return
        raise InputError(f"{option}: no such model folder: {source}")
    problem = model_folder_problem(path)
    if problem:
        raise InputError(f"{option}: model folder {source} {problem}")
