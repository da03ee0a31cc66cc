"""The source files each CLI stage runs, found by reading imports, so that a rule reruns exactly when code
that can change its output changes.

Snakemake's own code trigger sees only a rule's shell command, not the package it calls, so every rule
carries a digest of its stage's sources as a parameter. The sources are the CLI module, the modules the
stage's branch of :func:`advdistill.cli.run` imports, and everything those import from this package or
the loss kernels (with the C++ sources the kernels compile at run time), transitively. Nothing is
imported: the Snakemake process reads the files as text, which works in a checkout whose package is not
installed. Reading every import takes about half a second, so :class:`CachedStageVersions` keeps the digests
between Snakemake calls while no source file's size or modification time changes.
"""

from __future__ import annotations

import ast
import hashlib
from functools import cache
from pathlib import Path

from advdistill.digests import load_cache, save_cache

REPO = Path(__file__).resolve().parents[1]
RUNTIME_SOURCES = ("*.cpp",)  # compiled on first use, so part of what a kernel module runs


def module_file(module: str, roots: dict[str, Path]) -> Path | None:
    """The file of ``module`` (``a.b`` -> ``a/b.py`` or ``a/b/__init__.py``) if it belongs to ``roots``."""
    root = roots.get(module.split(".")[0])
    if root is None:
        return None
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path, roots: dict[str, Path]) -> str:
    for package, root in roots.items():
        if path.is_relative_to(root / package):
            parts = path.relative_to(root).with_suffix("").parts
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    raise ValueError(f"{path} is not in a known package")


def imported_modules(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Absolute names of every module ``tree`` imports (``from x import y`` may name module ``x.y``)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".") if is_package else module.split(".")[:-1]
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def with_parents(module: str) -> list[str]:
    """Importing ``a.b.c`` runs ``a`` and ``a.b`` first."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def imports_by_name(tree: ast.AST) -> bool:
    """Whether ``tree`` calls ``importlib.import_module``: it may load any module of its package by a name made at
    run time (the loss kernels load a backend so), which no import statement shows."""
    return any(isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
               for node in ast.walk(tree))


@cache
def _file_imports(path: Path, module: str, roots: tuple[tuple[str, Path], ...]) -> frozenset[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = imported_modules(tree, module, path.name == "__init__.py")
    if imports_by_name(tree):
        names |= {_module_name(sibling, dict(roots)) for sibling in path.parent.rglob("*.py")}
    return frozenset(names)


def package_roots(repo: Path) -> dict[str, Path]:
    """Where each package of a checkout lives: the folder that holds the package folder."""
    return {"advdistill": repo, "advdistill_kernels": repo / "kernels"}


def source_closure(modules: set[str], roots: dict[str, Path]) -> set[Path]:
    """Files of ``modules`` and of every module of ``roots`` they import, transitively."""
    files: set[Path] = set()
    pending = [m for module in modules for m in with_parents(module)]
    while pending:
        path = module_file(pending.pop(), roots)
        if path is None or path in files:
            continue
        files.add(path)
        imports = _file_imports(path, _module_name(path, roots), tuple(roots.items()))
        pending.extend(m for imported in imports for m in with_parents(imported))
        if path.name == "__init__.py":
            files.update(f for pattern in RUNTIME_SOURCES for f in path.parent.rglob(pattern))
    return files


def _stage_branches(cli: ast.Module) -> dict[str, set[str]]:
    """``stage -> modules`` imported in each ``if args.stage == "<stage>":`` branch of ``run``."""
    run = next(n for n in cli.body if isinstance(n, ast.FunctionDef) and n.name == "run")
    branches: dict[str, set[str]] = {}
    for node in ast.walk(run):
        if (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
                and isinstance(node.test.comparators[0], ast.Constant)):
            stage = node.test.comparators[0].value
            branches[stage] = {m for statement in node.body for m in imported_modules(statement, "advdistill.cli",
                                                                                      False)}
    return branches


@cache
def stage_sources(stage: str, repo: Path = REPO) -> tuple[Path, ...]:
    """Every source file stage ``stage`` of ``advdistill <stage>`` runs, sorted: the CLI module, what it imports
    at module level and what the stage's branch of ``run`` imports (not the other stages' lazy imports)."""
    cli_path = repo / "advdistill" / "cli.py"
    cli = ast.parse(cli_path.read_text(), filename=str(cli_path))
    branches = _stage_branches(cli)
    if stage not in branches:
        raise ValueError(f"advdistill has no stage '{stage}' (stages: {', '.join(sorted(branches))})")
    top_level = {m for statement in cli.body if isinstance(statement, (ast.Import, ast.ImportFrom))
                 for m in imported_modules(statement, "advdistill.cli", False)}
    return tuple(sorted({cli_path} | source_closure(top_level | branches[stage], package_roots(repo))))


def stage_code_version(stage: str, repo: Path = REPO) -> str:
    """A short digest of :func:`stage_sources` of the checkout at ``repo`` (paths and contents)."""
    digest = hashlib.sha256()
    for path in stage_sources(stage, repo):
        digest.update(path.relative_to(repo).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def source_tree_stamp(repo: Path = REPO) -> str:
    """A digest of the path, size and modification time of every file a stage could run (Python and runtime
    sources of the package roots): it changes whenever one of them is edited, added or removed."""
    digest = hashlib.sha256()
    for package, root in package_roots(repo).items():
        for pattern in ("*.py", *RUNTIME_SOURCES):
            for path in sorted((root / package).rglob(pattern)):
                stat = path.stat()
                digest.update(f"{path.relative_to(repo).as_posix()}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


class CachedStageVersions:
    """:func:`stage_code_version` of each stage, kept in the JSON file ``cache_path`` for as long as
    :func:`source_tree_stamp` stays the same."""

    def __init__(self, cache_path: Path, repo: Path = REPO):
        self.cache_path, self.repo, self.stamp = cache_path, repo, source_tree_stamp(repo)
        cached = load_cache(cache_path)
        fresh = cached.get("stamp") == self.stamp and isinstance(cached.get("stages"), dict)
        self.versions: dict[str, str] = cached["stages"] if fresh else {}

    def version(self, stage: str) -> str:
        if stage not in self.versions:
            self.versions[stage] = stage_code_version(stage, self.repo)
            save_cache(self.cache_path, {"stamp": self.stamp, "stages": self.versions})
        return self.versions[stage]
