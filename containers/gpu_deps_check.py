#!/usr/bin/env python3
"""Resolve the packages a definition's ``%post`` installs with pip, against PyPI, without installing anything.

The ``pip install`` lines of ``%post`` are read from the definition (paths the ``%files`` section copies into
the image are mapped back to the repository) and resolved together, as one set, with ``pip install --dry-run
--ignore-installed --report`` in a throwaway virtual environment of the image's Python version, with the
machine's pip configuration switched off (only PyPI answers). The GPU recipe installs its set with one pip
command, so this is exactly the resolution its build runs. A conflict ends with pip's own explanation and
exit status 1; PyPI out of reach is exit status 2. Prints the resolved versions of the packages that matter.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chroot_build import REPO, Definition, parse_definition  # noqa: E402

PYPI = "https://pypi.org/simple"
SHOWN = ("vllm", "torch", "triton", "transformers", "tokenizers", "numpy", "xformers", "flashinfer-python",
         "mistral-common", "snakemake", "snakemake-executor-plugin-slurm", "advdistill", "advdistill-kernels")
PIP_INSTALL = re.compile(r"(?:^|\s)(?:\S*/)?pip3?\s+install\s+(.*)$")
# pip settings from the environment that add package sources or constraints (PIP_CERT, a proxy's CA, stays)
SOURCE_SETTINGS = {"PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX", "PIP_CONSTRAINT",
                   "PIP_REQUIREMENT", "PIP_PRE"}
# pip options of %post lines that take a value (the rest are flags)
VALUED_OPTIONS = {"--index-url", "-i", "--extra-index-url", "--find-links", "-f", "--constraint", "-c"}


class PyPIUnreachable(RuntimeError):
    pass


def install_arguments(definition: Definition) -> list[str]:
    """The requirement arguments of the ``pip install`` lines of %post, paths %files fills mapped back to the
    repository (``/opt/advdistill/kernels[triton]`` -> ``<repo>/kernels[triton]``, ``/opt/advdistill`` -> ``<repo>``);
    options other than index options are dropped."""
    copied = {}
    for source, destination in definition.files():
        source_path, destination_path = Path(source), Path(destination)
        copied[str(destination_path)] = REPO / source_path
        # the folders above a copied file are the matching folders of the repository
        for folder, above in zip(destination_path.parents, source_path.parents):
            copied.setdefault(str(folder), REPO / above)
    arguments: list[str] = []
    for line in definition.sections.get("post", "").splitlines():
        match = PIP_INSTALL.search(line.split(" #")[0])
        if not match:
            continue
        words = shlex.split(match.group(1))
        while words:
            word = words.pop(0)
            if word in VALUED_OPTIONS:
                arguments += [word, words.pop(0)]
            elif not word.startswith("-"):
                path, extras = re.fullmatch(r"([^\[]+)(\[.*\])?", word).groups()
                arguments.append(f"{copied[path]}{extras or ''}" if path in copied else word)
    if not arguments:
        raise SystemExit("no 'pip install' line in %post")
    return arguments


def check_pypi(timeout: float = 10) -> None:
    try:
        urllib.request.urlopen(f"{PYPI}/pip/", timeout=timeout).close()
    except (urllib.error.URLError, OSError) as exc:
        raise PyPIUnreachable(f"PyPI ({PYPI}) is unreachable: {exc}") from exc


def find_python(version: str) -> str | None:
    """A Python ``version`` interpreter: ``python<version>`` on the PATH, else one of pyenv's."""
    candidates = [f"python{version}"]
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates += [str(p) for p in sorted(pyenv_root.glob(f"versions/{version}.*/bin/python{version}"))]
    for candidate in candidates:
        if shutil.which(candidate) and subprocess.run([candidate, "-c", ""], capture_output=True).returncode == 0:
            return candidate
    return None


def resolve(python: str, arguments: list[str], workdir: Path) -> dict[str, str]:
    """name -> version of everything ``pip install arguments`` would install in a fresh ``python`` venv."""
    venv = workdir / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    report = workdir / "report.json"
    env = {k: v for k, v in os.environ.items() if k not in SOURCE_SETTINGS}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    index = [] if {"--index-url", "-i"} & set(arguments) else ["--index-url", PYPI]
    command = [str(venv / "bin" / "python"), "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--report", str(report), *index, *arguments]
    print("+", shlex.join(command), flush=True)
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit("the packages of %post do not resolve together (above: pip's reason)")
    return {re.sub(r"[-_.]+", "-", item["metadata"]["name"]).lower(): item["metadata"]["version"]
            for item in json.loads(report.read_text())["install"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("definition", type=Path)
    parser.add_argument("--python-version", default="3.12",
                        help="the image's Python (default: %(default)s, Ubuntu 24.04's)")
    parser.add_argument("--python", help="interpreter of that version (default: found on the PATH or in pyenv)")
    parser.add_argument("--json", type=Path, help="write the resolved versions here")
    args = parser.parse_args(argv)

    python = args.python or find_python(args.python_version)
    if python is None:
        raise SystemExit(f"no Python {args.python_version} interpreter found (the image's); pass --python PATH")
    try:
        check_pypi()
    except PyPIUnreachable as exc:
        print(exc, file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        resolved = resolve(python, install_arguments(parse_definition(args.definition)), Path(tmp))
    print(f"resolved {len(resolved)} packages for Python {args.python_version}: "
          + ", ".join(f"{name}=={resolved[name]}" for name in SHOWN if name in resolved))
    if args.json:
        args.json.write_text(json.dumps(resolved, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
