"""Apptainer definitions: parse with spython, check versions, and that every rule names an image."""

import re

import pytest
import yaml
from spython.main.parse.parsers import SingularityParser

import advdistill
from tests.conftest import REPO

DEFINITIONS = sorted((REPO / "containers").glob("*.def"))
CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())


def parse(path):
    return next(iter(SingularityParser(str(path)).recipe.values()))


def labels(recipe):
    return dict(line.split(None, 1) for line in recipe.labels)


@pytest.mark.parametrize("definition", DEFINITIONS, ids=lambda p: p.stem)
def test_definition_parses_and_installs_the_project(definition):
    recipe = parse(definition)
    assert recipe.fromHeader
    assert labels(recipe)["Name"] == definition.stem
    sources = [line.split()[0] for line in recipe.files]
    assert {"advdistill", "kernels", "pyproject.toml"} <= set(sources)
    assert all((REPO / source).exists() for source in sources)
    assert any("/opt/advdistill" in line and "pip install" in line for line in recipe.install)
    assert recipe.test


def test_image_names_carry_the_definition_and_package_version():
    assert {p.stem for p in DEFINITIONS} == {"advdistill-cpu", "advdistill-gpu"}
    for kind, image in CONFIG["containers"].items():
        name, version = re.fullmatch(r"containers/(.+)_(\d+\.\d+\.\d+)\.sif", image).groups()
        definition = REPO / "containers" / f"{name}.def"
        assert definition.exists(), f"containers.{kind}: no definition for {image}"
        assert labels(parse(definition))["Version"] == version == advdistill.__version__


def test_every_rule_names_a_container():
    for rules in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        blocks = re.split(r"^rule ", rules.read_text(), flags=re.MULTILINE)[1:]
        for block in blocks:
            name = block.split(":")[0]
            has_container = "\n    container:\n        container_for(" in block
            assert has_container, f"rule {name} in {rules.name} has no container"
