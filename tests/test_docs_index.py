"""The repository's documents: the README links every guide, no relative link leaves the repository, the dataset
table covers every adapter, and the citation file states the package's version."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import yaml

import advdistill
from advdistill.datasets import ADAPTERS
from tests.helpers import REPO

GUIDES_OUTSIDE_DOCS = ("config/paper/README.md", "profiles/slurm/README.md", "containers/README.md",
                       "kernels/README.md")
RUN_OUTPUTS = {"results", "logs", "benchmarks", "build"}  # top-level folders a run or a build writes (.gitignore)
FENCED_CODE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
INLINE_LINK = re.compile(r"\]\(\s*(?:<([^>\n]+)>|([^)\s]+))")  # [text](target "title"), [text](<tar get>)
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?([^\s>]+)", re.MULTILINE)  # [label]: target
URL_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def markdown_files() -> list[Path]:
    """Every .md file of the repository, outside hidden folders (.git, .venv, ...) and run outputs."""
    found = []
    for folder, subfolders, files in os.walk(REPO):
        top = Path(folder) == REPO
        subfolders[:] = [name for name in subfolders
                         if not name.startswith(".") and not (top and name in RUN_OUTPUTS)]
        found += [Path(folder) / name for name in files if name.endswith(".md")]
    return sorted(found)


def relative_links(markdown: Path) -> Iterator[tuple[str, Path]]:
    """(target as written, the path it resolves to) for each link of ``markdown`` that is not a URL or an anchor;
    links inside code are not links. A target starting with / is taken from the repository root, as GitHub does."""
    text = INLINE_CODE.sub("", FENCED_CODE.sub("", markdown.read_text(encoding="utf-8")))
    targets = [bracketed or bare for bracketed, bare in INLINE_LINK.findall(text)] + REFERENCE_LINK.findall(text)
    for target in targets:
        path = unquote(target.split("#", 1)[0].split("?", 1)[0])
        if not path or URL_SCHEME.match(path):
            continue
        base = REPO if path.startswith("/") else markdown.parent
        yield target, (base / path.lstrip("/")).resolve()


def test_link_extraction_finds_relative_links_and_ignores_code_and_urls(tmp_path):
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "page.md"
    page.write_text('See [a](../README.md#top), [b](<other file.md> "title"), [c](https://example.org/x.md),\n'
                    "[d](#anchor), `[e](../../code.md)` and\n\n```\n[f](../../fenced.md)\n```\n\n"
                    "[g]: ../../outside.md\n")
    assert [(target, path.relative_to(tmp_path.parent)) for target, path in relative_links(page)] == [
        ("../README.md#top", Path(tmp_path.name, "README.md")),
        ("other file.md", Path(tmp_path.name, "docs", "other file.md")),
        ("../../outside.md", Path("outside.md"))]


def test_no_relative_link_leaves_the_repository():
    """A link to a file beside the clone (../shared/...) is broken for everyone else: name such material in
    words or by URL."""
    outside = [f"{markdown.relative_to(REPO)}: {target}" for markdown in markdown_files()
               for target, path in relative_links(markdown) if not path.is_relative_to(REPO)]
    assert not outside, f"links out of the repository: {outside}"


def test_every_relative_link_reaches_a_file_or_folder():
    broken = [f"{markdown.relative_to(REPO)}: {target}" for markdown in markdown_files()
              for target, path in relative_links(markdown) if path.is_relative_to(REPO) and not path.exists()]
    assert not broken, f"links to nothing: {broken}"


def test_the_readme_links_every_guide():
    linked = {path for _, path in relative_links(REPO / "README.md")}
    guides = sorted((REPO / "docs").glob("*.md")) + [REPO / name for name in GUIDES_OUTSIDE_DOCS]
    assert all(guide.is_file() for guide in guides)
    unlinked = [str(guide.relative_to(REPO)) for guide in guides if guide.resolve() not in linked]
    assert not unlinked, f"not linked from README.md (add them to its layout table): {unlinked}"


def test_the_dataset_table_has_a_row_for_every_adapter():
    table = (REPO / "docs" / "datasets.md").read_text(encoding="utf-8")
    missing = [name for name in sorted(ADAPTERS) if f"\n| `{name}` |" not in table]
    assert not missing, f"adapters without a row in docs/datasets.md: {missing}"


def test_citation_file_states_the_package_version_and_license():
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text(encoding="utf-8"))
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert citation["cff-version"] == "1.2.0"
    assert citation["version"] == project["version"] == advdistill.__version__
    assert citation["license"] == project["license"]["text"] == "Apache-2.0"
    assert (REPO / "LICENSE").read_text(encoding="utf-8").split()[:4] == ["Apache", "License", "Version", "2.0,"]
