#!/usr/bin/env python3
"""Execute an Apptainer definition in a chroot, as ``apptainer build`` would, then run pipeline stages in it.

Needs root, ``debootstrap`` and network access to the definition's Debian mirror and PyPI. Steps, in the order
Apptainer's build takes them for a ``Bootstrap: debootstrap`` definition:

1. ``debootstrap --variant=minbase`` of ``OSVersion`` from ``MirrorURL`` into ``<out>/rootfs``;
2. ``%files`` copied in (sources relative to the repository root); ``{{ NAME }}`` build arguments substituted
   from ``%arguments`` and ``--build-arg``;
3. ``%post`` run with ``/bin/sh -e`` in the chroot (``/proc``, ``/sys``, ``/dev``, the host's resolv.conf);
4. ``%environment`` written to ``/.singularity.d/env/90-environment.sh``, where Apptainer puts it;
5. ``%test`` run on the root mounted read-only, as on a built image, with the environment sourced and a
   writable /tmp as home (Apptainer binds the user's home and /tmp).

Then (``--stages``) the same commands run on the host and in the read-only image on two copies of the workflow,
each bound at the same path, and every output under ``results/`` is compared: byte-equal, equal content, or
different (an error). Phase times, the root size and the comparison go to ``<out>/summary.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # Apptainer's default PATH
ENVIRONMENT_FILE = ".singularity.d/env/90-environment.sh"
SECTION = re.compile(r"^%(\w+)\s*$")
TEMPLATE = re.compile(r"{{\s*(\w+)\s*}}")
WORKFLOW_FILES = ("Snakefile", "workflow", "profiles", "advdistill", "kernels", ".test", "containers", "config",
                  "config.yaml", "tests/fixtures/datasets")
# the same commands run on the host and in the image: dataset adapters on the release-layout fixtures, then the
# tiny workflow configuration up to scoring (prepare, tokenizer and teacher bootstrap, sample, merge, score)
FIXTURE_PREPARES = (("gsm8k", "test"), ("gsm_plus", "test"), ("mmlu_pro", "train"), ("mmlu_pro", "test"),
                    ("open_s1", "train"), ("open_rs", "test"))
SCORE_TARGET = "results/test_basic/score/arith/scored.parquet"
# JSON keys that describe the run rather than the result: manifests' and trainers' clocks, host and image
RUN_KEYS = re.compile(r"started_unix|wall_seconds|host|container|container_sha256|git_commit|.*runtime|.*per_second")


class DefinitionError(ValueError):
    pass


@dataclass
class Definition:
    header: dict[str, str]
    sections: dict[str, str]

    def lines(self, section: str) -> list[str]:
        """Non-empty, non-comment lines of a section."""
        text = self.sections.get(section, "")
        return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]

    def labels(self) -> dict[str, str]:
        return dict(line.split(None, 1) for line in self.lines("labels"))

    def arguments(self) -> dict[str, str]:
        return dict(line.split("=", 1) for line in self.lines("arguments"))

    def files(self) -> list[tuple[str, str]]:
        """(source, destination) pairs; a missing destination is the source's own path."""
        pairs = []
        for line in self.lines("files"):
            parts = line.split()
            if len(parts) > 2:
                raise DefinitionError(f"%files line '{line}': expected 'source [destination]'")
            pairs.append((parts[0], parts[-1]))
        return pairs


def parse_definition(path: Path, build_args: dict[str, str] | None = None) -> Definition:
    """Header keys and raw section texts of an Apptainer definition, with ``{{ NAME }}`` build arguments
    substituted (defaults from ``%arguments``, overridden by ``build_args``, as ``apptainer build --build-arg``)."""
    text = path.read_text()
    raw = _split(text, path)
    values = {**Definition(*raw).arguments(), **(build_args or {})}
    unknown = sorted(set(TEMPLATE.findall(text)) - set(values))
    if unknown:
        raise DefinitionError(f"{path}: build argument(s) {', '.join(unknown)} used but not defined in %arguments")
    return Definition(*_split(TEMPLATE.sub(lambda m: values[m.group(1)], text), path))


def _split(text: str, path: Path) -> tuple[dict[str, str], dict[str, str]]:
    header: dict[str, str] = {}
    sections: dict[str, str] = {}
    current = None
    for number, line in enumerate(text.splitlines(), 1):
        match = SECTION.match(line)
        if match:
            current = match.group(1)
            if current in sections:
                raise DefinitionError(f"{path}:{number}: section %{current} given twice")
            sections[current] = ""
        elif current is not None:
            sections[current] += line + "\n"
        elif line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition(":")
            if not sep:
                raise DefinitionError(f"{path}:{number}: header line '{line}' is not 'Key: value'")
            header[key.strip()] = value.strip()
    return header, sections


def run(command: list[str], **kwargs) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, **kwargs)


def mounted_under(root: Path) -> list[str]:
    prefix = str(root.resolve())
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    return [m for m in mounts if m == prefix or m.startswith(prefix + "/")]


def remove_root(root: Path) -> None:
    """Delete a previous root filesystem, never while anything (a bound /dev!) is still mounted inside it."""
    left = mounted_under(root)
    if left:
        raise RuntimeError(f"{root} still has mounts ({', '.join(left)}); unmount them before rebuilding")
    shutil.rmtree(root)


@contextlib.contextmanager
def mounts(root: Path, binds: list[tuple[Path, str]], read_only: bool):
    """The image's root with /proc, /sys, /dev and ``binds`` (host folder, path in the image) mounted, like an
    Apptainer build or run; yields the path to chroot into, a read-only bind of ``root`` when ``read_only`` (a
    built image is read-only). Binds are mounted parents first; a bind point that does not exist is made for the
    time of the mounts, in the image or in the bound folder it lies in (e.g. a work folder under a bound /tmp)."""
    binds = sorted(binds, key=lambda bind: len(Path(bind[1]).parts))
    created: list[tuple[Path, Path]] = []  # (folder made, the folder it was made in)
    for index, (_, point) in enumerate(binds):
        base, inside = root, Path(point.lstrip("/"))
        for source, outer in binds[:index]:
            if Path(point).is_relative_to(outer) and point != outer:
                base, inside = source, Path(point).relative_to(outer)
        if not (base / inside).exists():
            (base / inside).mkdir(parents=True)
            created.append((base / inside, base))
    done: list[Path] = []
    target = root
    try:
        if read_only:
            target = root.with_name(root.name + "-ro")
            target.mkdir(exist_ok=True)
            run(["mount", "--bind", str(root), str(target)])
            done.append(target)
            run(["mount", "-o", "remount,bind,ro", str(target)])
        for source, point, kind in (("proc", "/proc", "proc"), ("/sys", "/sys", "bind"), ("/dev", "/dev", "rbind"),
                                    *((str(s), d, "bind") for s, d in binds)):
            where = target / point.lstrip("/")
            if kind == "proc":
                run(["mount", "-t", "proc", "proc", str(where)])
            else:
                run(["mount", f"--{kind}", source, str(where)])
            done.append(where)
        yield target
    finally:
        for where in reversed(done):
            subprocess.run(["umount", "-R", str(where)], check=True)
        for folder, base in reversed(created):
            while folder != base:
                with contextlib.suppress(OSError):  # a folder that is not empty stays, with what is above it
                    folder.rmdir()
                folder = folder.parent


def chroot(root: Path, script: str, cwd: str = "/", home: str = "/root", env: dict[str, str] | None = None) -> None:
    """Run ``script`` with /bin/sh -e in the chroot with a clean environment (the image's own, when written)."""
    env = {"PATH": IMAGE_PATH, "HOME": home, "LANG": "C.UTF-8", "TMPDIR": "/tmp", **(env or {})}
    source = f". /{ENVIRONMENT_FILE}\n" if (root / ENVIRONMENT_FILE).exists() else ""
    command = ["chroot", str(root), "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items()),
               "/bin/sh", "-e", "-c", f"{source}cd {cwd}\n{script}"]
    print(f"+ chroot {root} sh -e -c {script.strip()[:200]!r}", flush=True)
    subprocess.run(command, check=True)


def build(definition: Definition, root: Path, binds: list[tuple[Path, str]], post_env: dict[str, str],
          timings: dict[str, float]) -> None:
    bootstrap = definition.header.get("Bootstrap")
    if bootstrap != "debootstrap":
        raise DefinitionError(f"Bootstrap: {bootstrap} cannot be built here; only debootstrap definitions can")
    start = time.time()
    include = definition.header.get("Include", "").replace(" ", ",")
    run(["debootstrap", "--variant=minbase", *([f"--include={include}"] if include else []),
         definition.header["OSVersion"], str(root), definition.header["MirrorURL"]])
    timings["debootstrap_s"] = time.time() - start

    start = time.time()
    for source, destination in definition.files():
        target = root / destination.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        run(["cp", "-a", str(REPO / source), str(target)])
    shutil.copy("/etc/resolv.conf", root / "etc" / "resolv.conf")
    with mounts(root, binds, read_only=False) as target:
        chroot(target, definition.sections.get("post", ""), env=post_env)
    environment = root / ENVIRONMENT_FILE
    environment.parent.mkdir(parents=True, exist_ok=True)
    environment.write_text(definition.sections.get("environment", ""))
    timings["files_and_post_s"] = time.time() - start

    start = time.time()
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp, mounts(root, [(Path(tmp), "/tmp")], True) as target:
        chroot(target, definition.sections.get("test", ""), home="/tmp")
    timings["test_s"] = time.time() - start


def stage_commands() -> list[str]:
    commands = [f"advdistill prepare --dataset {name} --source tests/fixtures/datasets/{name}.jsonl --split {split}"
                f" --out results/fixtures/{name}-{split}.parquet" for name, split in FIXTURE_PREPARES]
    commands.append(f"snakemake {SCORE_TARGET} --cores 2 --configfile .test/config_basic.yaml")
    return commands


def copy_workflow(destination: Path) -> None:
    for name in WORKFLOW_FILES:
        source, target = REPO / name, destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(source, target)


def compare_outputs(host: Path, image: Path) -> dict[str, str]:
    """Every file under results/: 'bytes' (byte-equal), 'content' (equal tables, or JSON equal but for the keys
    that describe the run: clocks, throughputs, host, image) or 'DIFFERENT'/'MISSING'."""
    import polars as pl

    verdicts = {}
    names = sorted({p.relative_to(root).as_posix() for root in (host, image)
                    for p in (root / "results").rglob("*") if p.is_file()})
    for name in names:
        a, b = host / name, image / name
        if not (a.exists() and b.exists()):
            verdicts[name] = "MISSING in " + ("image" if a.exists() else "host")
        elif a.read_bytes() == b.read_bytes():
            verdicts[name] = "bytes"
        elif name.endswith(".parquet"):
            verdicts[name] = "content" if pl.read_parquet(a).equals(pl.read_parquet(b)) else "DIFFERENT"
        elif name.endswith(".json"):
            first, second = (without_run_keys(json.loads(p.read_text())) for p in (a, b))
            verdicts[name] = "content" if first == second else "DIFFERENT"
        else:
            verdicts[name] = "DIFFERENT"
    return verdicts


def without_run_keys(value):
    if isinstance(value, dict):
        return {k: without_run_keys(v) for k, v in value.items() if not RUN_KEYS.fullmatch(k)}
    if isinstance(value, list):
        return [without_run_keys(v) for v in value]
    return value


def run_stages(root: Path, work: Path, timings: dict[str, float]) -> dict[str, str]:
    """The stage commands on the host and in the read-only image, on two copies of the workflow; the image's copy
    is bound at the host copy's path (Apptainer binds the working directory), so paths in the outputs agree."""
    host, image = work / "host", work / "image"
    for folder in (host, image):
        copy_workflow(folder)
    script = "\n".join(stage_commands())
    start = time.time()
    run(["/bin/sh", "-e", "-c", script], cwd=host)
    timings["stages_host_s"] = time.time() - start

    start = time.time()
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        with mounts(root, [(image, str(host)), (Path(tmp), "/tmp")], read_only=True) as target:
            chroot(target, script, cwd=str(host), home="/tmp")
    timings["stages_image_s"] = time.time() - start
    return compare_outputs(host, image)


def wheel_index(wheels: Path, index: Path) -> None:
    """A PEP 503 index of the wheels in ``wheels``, as it will be seen in the chroot (wheels at /mnt/wheels)."""
    projects: dict[str, list[str]] = {}
    for wheel in sorted(wheels.glob("*.whl")):
        project = re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()
        projects.setdefault(project, []).append(wheel.name)
    if not projects:
        raise SystemExit(f"--wheel-index: no wheels in {wheels}")
    for project, files in projects.items():
        (index / project).mkdir(parents=True, exist_ok=True)
        links = "".join(f'<a href="file:///mnt/wheels/{name}">{name}</a>\n' for name in files)
        (index / project / "index.html").write_text(f"<!DOCTYPE html>\n<html><body>\n{links}</body></html>\n")


OUT_MARKER = ".chroot-build"
OUT_ENTRIES = ("rootfs", "rootfs-ro", "work", "wheel-index", "summary.json")
"""What a build writes into --out (besides its marker); a rebuild deletes these and nothing else."""


def check_own_out(out: Path) -> None:
    """Refuse an existing --out this script did not make: it runs as root, and --out may be any folder."""
    if out.exists() and not (out / OUT_MARKER).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise SystemExit(f"--out {out} exists and was not made by chroot_build (no {OUT_MARKER} inside): refusing to "
                         "delete anything in it; choose a new or empty folder")


def claim_out(out: Path) -> None:
    """A clean --out for a build: a new or empty folder, or one an earlier build made, whose own entries go."""
    check_own_out(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / OUT_MARKER).write_text("made by containers/chroot_build.py; a rebuild deletes " + ", ".join(OUT_ENTRIES)
                                  + "\n")
    for name in OUT_ENTRIES:
        entry = out / name
        if name.startswith("rootfs") and entry.exists():
            remove_root(entry)
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        elif entry.exists() or entry.is_symlink():
            entry.unlink()


def root_size(root: Path) -> int:
    return int(subprocess.run(["du", "-sb", "--one-file-system", str(root)], capture_output=True, text=True,
                              check=True).stdout.split()[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("definition", type=Path)
    parser.add_argument("--out", type=Path, default=REPO / "build" / "container-check",
                        help="working folder: rootfs/, work/ and summary.json (default: %(default)s)")
    parser.add_argument("--build-arg", action="append", default=[], metavar="NAME=VALUE",
                        help="a build argument, as apptainer build --build-arg")
    parser.add_argument("--wheel-index", metavar="NAME=DIR",
                        help="serve the wheels in DIR to the build as a local index and pass its URL as build "
                             "argument NAME (e.g. TORCH_INDEX=/opt/wheels where the real index is unreachable)")
    parser.add_argument("--ca-bundle", type=Path,
                        help="CA certificates for pip in %%post (PIP_CERT), where a proxy re-signs TLS (the image's "
                             "own ca-certificates do not know its CA); bound in for the build only")
    parser.add_argument("--stages", action="store_true",
                        help="also run the pipeline stages on the host and in the image and compare their outputs")
    parser.add_argument("--stages-only", action="store_true",
                        help="run the stages in the root filesystem a previous run left in --out; no build")
    args = parser.parse_args(argv)

    if os.geteuid() != 0 or shutil.which("debootstrap") is None:
        raise SystemExit("chroot_build needs root and debootstrap (apt-get install debootstrap)")
    build_args = dict(arg.split("=", 1) for arg in args.build_arg)
    binds: list[tuple[Path, str]] = []
    out = args.out.resolve()
    root = out / "rootfs"
    if args.stages_only:
        if not (root / ENVIRONMENT_FILE).exists():
            raise SystemExit(f"--stages-only: no built root filesystem in {root}")
        check_own_out(out)
        if (out / "work").exists():
            shutil.rmtree(out / "work")
        summary = json.loads((out / "summary.json").read_text())
        return stages(summary, root, out)
    claim_out(out)
    if args.wheel_index:
        name, wheels = args.wheel_index.split("=", 1)
        wheel_index(Path(wheels), out / "wheel-index")
        binds += [(Path(wheels).resolve(), "/mnt/wheels"), (out / "wheel-index", "/mnt/wheel-index")]
        build_args[name] = "file:///mnt/wheel-index"
    post_env = {}
    if args.ca_bundle:
        binds.append((args.ca_bundle.resolve().parent, "/mnt/host-ca"))
        post_env["PIP_CERT"] = f"/mnt/host-ca/{args.ca_bundle.name}"
    definition = parse_definition(args.definition, build_args)

    timings: dict[str, float] = {}
    start = time.time()
    build(definition, root, binds, post_env, timings)
    timings["build_total_s"] = time.time() - start
    summary: dict = {"definition": str(args.definition), "build_args": build_args,
                     "timings": {k: round(v, 1) for k, v in timings.items()},
                     "rootfs_bytes": root_size(root), "venv_bytes": root_size(root / "opt" / "venv")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return stages(summary, root, out) if args.stages else 0


def stages(summary: dict, root: Path, out: Path) -> int:
    """Run and compare the stages; add their times and verdicts to ``summary.json``; 1 if any output differs."""
    timings: dict[str, float] = {}
    verdicts = run_stages(root, out / "work", timings)
    summary["timings"].update({k: round(v, 1) for k, v in timings.items()})
    summary["outputs"] = verdicts
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    counts = {v: list(verdicts.values()).count(v) for v in sorted(set(verdicts.values()))}
    print(f"stages: host {timings['stages_host_s']:.0f} s, image {timings['stages_image_s']:.0f} s; "
          f"outputs, host vs image: {counts}")
    bad = {k: v for k, v in verdicts.items() if v not in ("bytes", "content")}
    for name, verdict in bad.items():
        print(f"  {verdict}: {name}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
