"""Apptainer definitions: parsed by the parser `make container-check` builds with, versions, every rule's image,
the GPU recipe's pip requirements, and the image digest in the provenance manifests."""

import copy
import hashlib
import importlib.util
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import advdistill
from advdistill.errors import ConfigError
from advdistill.planning import image_build_commands, image_location
from advdistill.schema import validate
from tests.helpers import REPO, assert_clean_stop, copy_workflow

DEFINITIONS = sorted((REPO / "containers").glob("*.def"))
CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "containers" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


chroot_build = load_script("chroot_build")
gpu_deps_check = load_script("gpu_deps_check")


@pytest.mark.parametrize("definition", DEFINITIONS, ids=lambda p: p.stem)
def test_definition_parses_and_installs_the_project(definition):
    recipe = chroot_build.parse_definition(definition)
    assert recipe.header["Bootstrap"] in {"debootstrap", "docker"}
    assert recipe.labels()["Name"] == definition.stem
    sources = [source for source, _ in recipe.files()]
    assert {"advdistill", "kernels", "pyproject.toml"} <= set(sources)
    assert all((REPO / source).exists() for source in sources)
    assert any("/opt/advdistill" in line and "pip install" in line for line in recipe.lines("post"))
    assert recipe.lines("test")


def test_image_names_carry_the_definition_and_package_version():
    assert {p.stem for p in DEFINITIONS} == {"advdistill-cpu", "advdistill-gpu"}
    for kind, image in CONFIG["containers"].items():
        name, version = re.fullmatch(r"containers/(.+)_(\d+\.\d+\.\d+)\.sif", image).groups()
        definition = REPO / "containers" / f"{name}.def"
        assert definition.exists(), f"containers.{kind}: no definition for {image}"
        assert chroot_build.parse_definition(definition).labels()["Version"] == version == advdistill.__version__


@pytest.mark.parametrize(("image", "valid"), [
    ("containers/advdistill-cpu_0.1.0.sif", True), ("/abs/path/img.sif", True), ("~/images/img.sif", True),
    ("docker://ghcr.io/org/advdistill:0.1.0@sha256:0a1b", True), ("library://user/collection/img:tag", True),
    ("x.sif;id", False), ("images/advdistill(cpu).sif", False), ("$(id).sif", False), ("a b.sif", False),
    ("-x.sif", False), ("`id`.sif", False), ("", False),
])
def test_an_image_is_a_word_the_unquoted_apptainer_command_keeps_whole(image, valid):
    config = {**copy.deepcopy(CONFIG), "containers": {**CONFIG["containers"], "cpu": image}}
    if valid:
        validate(config, set_defaults=True)
        return
    with pytest.raises(ConfigError, match=r"config containers\.cpu: "):
        validate(config, set_defaults=True)


def test_an_image_lies_in_the_repository_unless_its_path_is_absolute_or_the_users(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert image_location("containers/cpu.sif", REPO) == REPO / "containers" / "cpu.sif"
    assert image_location("/srv/images/cpu.sif", REPO) == Path("/srv/images/cpu.sif")
    assert image_location("~/images/cpu.sif", REPO) == tmp_path / "home" / "images" / "cpu.sif"


def test_every_rule_names_a_container():
    for rules in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        blocks = re.split(r"^rule ", rules.read_text(), flags=re.MULTILINE)[1:]
        for block in blocks:
            name = block.split(":")[0]
            has_container = "\n    container:\n        container_for(" in block
            assert has_container, f"rule {name} in {rules.name} has no container"


def test_the_build_commands_planning_names_are_the_documented_ones():
    for kind, image in CONFIG["containers"].items():
        for command in image_build_commands(kind, image):
            for doc in ("containers/README.md", "docs/paper-runs.md"):
                assert command.split("  #")[0] in (REPO / doc).read_text(), (doc, command)


@pytest.mark.failure_mode(
    "a run with --sdm apptainer (the SLURM profile) whose images are not built",
    sees="planning stops naming every missing image (containers.cpu, containers.gpu) with the commands that build "
         "it (--fakeroot; --notest and apptainer test --nv for the GPU image); a dry run says so and plans on",
    kept="everything; no job starts")
def test_a_run_without_its_images_stops_naming_each_with_its_build_commands(tmp_path):
    workdir = copy_workflow(tmp_path / "repo")
    images = {"cpu": "containers/absent-cpu_0.1.0.sif", "gpu": "containers/absent-gpu_0.1.0.sif"}
    (workdir / "images.yaml").write_text(yaml.safe_dump({"containers": images}))
    result = subprocess.run(["snakemake", "--cores", "1", "--sdm", "apptainer", "--configfile",
                             "config/paper/gsm8k.yaml", "images.yaml"], cwd=workdir, capture_output=True, text=True,
                            timeout=300)
    output = assert_clean_stop(result)
    assert not (workdir / "results").exists(), output[-3000:]
    assert ("config containers.cpu (containers/absent-cpu_0.1.0.sif) and containers.gpu "
            "(containers/absent-gpu_0.1.0.sif): image not found") in output
    for kind, image in images.items():
        for command in image_build_commands(kind, image):
            assert command in output


def test_build_arguments_are_substituted_as_apptainer_does(tmp_path):
    cpu = REPO / "containers" / "advdistill-cpu.def"
    default = chroot_build.parse_definition(cpu).sections["post"]
    assert '--extra-index-url "https://download.pytorch.org/whl/cpu" "torch==2.13.0+cpu"' in default
    local = chroot_build.parse_definition(cpu, {"TORCH_INDEX": "file:///mnt/wheel-index"}).sections["post"]
    assert '--extra-index-url "file:///mnt/wheel-index"' in local and "{{" not in local
    undefined = tmp_path / "undefined.def"
    undefined.write_text("Bootstrap: debootstrap\n%post\n    pip install {{ NOPE }}\n")
    with pytest.raises(chroot_build.DefinitionError, match="build argument.*NOPE.*not defined in %arguments"):
        chroot_build.parse_definition(undefined)


def test_gpu_requirements_are_read_from_the_recipe_with_copied_paths_mapped_back():
    recipe = chroot_build.parse_definition(REPO / "containers" / "advdistill-gpu.def")
    assert gpu_deps_check.install_arguments(recipe) == ["vllm==0.32.0", f"{REPO / 'kernels'}[triton]", str(REPO)]


def test_wheel_index_lists_each_project(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name in ("torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl", "Typing_Extensions-4.0-py3-none-any.whl"):
        (wheels / name).touch()
    chroot_build.wheel_index(wheels, tmp_path / "index")
    page = (tmp_path / "index" / "torch" / "index.html").read_text()
    assert 'href="file:///mnt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"' in page
    assert (tmp_path / "index" / "typing-extensions" / "index.html").exists()


@pytest.fixture
def image(tmp_path, monkeypatch):
    """A small stand-in image file, named by APPTAINER_CONTAINER as inside a container, and a private home and cache
    folder (the digest cache is the user's)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = tmp_path / "advdistill-cpu_0.1.0.sif"
    path.write_bytes(b"SIF image bytes")
    monkeypatch.setenv("APPTAINER_CONTAINER", str(path))
    return path


@pytest.fixture
def hashed(monkeypatch):
    """The files :func:`advdistill.provenance.image_digest` hashes (and does not take from its cache)."""
    from advdistill import provenance

    files = []
    real = provenance.file_sha256
    monkeypatch.setattr(provenance, "file_sha256", lambda path: files.append(path) or real(path))
    return files


def test_manifest_records_the_image_digest_and_the_report_shows_it(image, tmp_path):
    from advdistill.provenance import stage_manifest, write_manifest
    from advdistill.report.tables import provenance_table

    manifest = stage_manifest("score", {"a": 1}, 7, 0.0, [])
    digest = hashlib.sha256(b"SIF image bytes").hexdigest()
    assert manifest["container"] == str(image) and manifest["container_sha256"] == digest
    row = provenance_table([write_manifest(tmp_path / "scored.parquet", manifest)]).row(0, named=True)
    assert row["container"] == str(image) and row["container_sha256"] == digest[:12]


def test_image_digest_is_cached_in_a_private_folder_until_the_image_changes(image, hashed):
    from advdistill.provenance import image_digest

    digest = hashlib.sha256(b"SIF image bytes").hexdigest()
    assert image_digest(str(image)) == image_digest(str(image)) == digest
    assert hashed == [image]
    image.write_bytes(b"rebuilt image")
    assert image_digest(str(image)) == hashlib.sha256(b"rebuilt image").hexdigest()
    assert hashed == [image, image]
    cache = image.parent / "cache" / "advdistill" / "image-digests"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert sorted(f.read_text() for f in cache.iterdir()) == sorted(
        [digest + "\n", hashlib.sha256(b"rebuilt image").hexdigest() + "\n"])  # no partial file left


def test_image_digest_cache_defaults_to_the_home_folder(image, hashed, tmp_path, monkeypatch):
    from advdistill.provenance import image_digest

    monkeypatch.chdir(tmp_path)
    for xdg in (None, "", "relative/cache"):  # unset, empty or relative: ignored, as the XDG specification says
        if xdg is None:
            monkeypatch.delenv("XDG_CACHE_HOME")
        else:
            monkeypatch.setenv("XDG_CACHE_HOME", xdg)
        assert image_digest(str(image)) == hashlib.sha256(b"SIF image bytes").hexdigest()
    assert len(hashed) == 1
    assert len(list((tmp_path / "home" / ".cache" / "advdistill" / "image-digests").iterdir())) == 1
    assert not (tmp_path / "relative").exists()


def plant_digest(image):
    """Cache the image's digest, then replace it with a forged one; the cache folder."""
    from advdistill.provenance import image_digest

    image_digest(str(image))
    cache = image.parent / "cache" / "advdistill" / "image-digests"
    (entry,) = cache.iterdir()
    entry.write_text("0" * 64 + "\n")
    return cache


@pytest.mark.parametrize("mode", [0o720, 0o702, 0o777], ids=oct)
def test_a_cache_folder_others_can_write_is_not_trusted(image, hashed, mode):
    from advdistill.provenance import image_digest

    cache = plant_digest(image)
    assert image_digest(str(image)) == "0" * 64  # the test plants where a trusted cache is read
    cache.chmod(mode)
    assert image_digest(str(image)) == hashlib.sha256(b"SIF image bytes").hexdigest()
    assert next(cache.iterdir()).read_text() == "0" * 64 + "\n"  # nor written to
    assert len(hashed) == 2


def test_a_cache_folder_of_another_user_or_a_link_is_not_trusted(image, hashed, monkeypatch):
    from advdistill import provenance

    cache = plant_digest(image)
    uid = os.geteuid()
    monkeypatch.setattr(os, "geteuid", lambda: uid + 1)
    assert provenance.image_digest(str(image)) == hashlib.sha256(b"SIF image bytes").hexdigest()
    monkeypatch.setattr(os, "geteuid", lambda: uid)
    moved = cache.rename(cache.with_name("elsewhere"))
    cache.symlink_to(moved)
    assert provenance.image_digest(str(image)) == hashlib.sha256(b"SIF image bytes").hexdigest()
    assert len(hashed) == 3


def test_image_digest_never_writes_through_a_link_in_its_cache(image, tmp_path):
    from advdistill.provenance import image_digest

    digest = hashlib.sha256(b"SIF image bytes").hexdigest()
    image_digest(str(image))
    cache = image.parent / "cache" / "advdistill" / "image-digests"
    (entry,) = cache.iterdir()
    entry.unlink()
    victim = tmp_path / "victim.txt"
    victim.write_text("the victim's own file\n")
    for name in (entry.name, f"{entry.name}.{os.getpid()}"):  # the digest's name, the old partial file's
        (cache / name).symlink_to(victim)
    assert image_digest(str(image)) == digest
    assert victim.read_text() == "the victim's own file\n"
    assert not entry.is_symlink() and entry.read_text() == digest + "\n"  # the link replaced, not followed


def test_image_digest_without_a_usable_cache_is_still_right(image, hashed, tmp_path, monkeypatch):
    from advdistill.provenance import image_digest

    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "not-a-folder"))
    assert image_digest(str(image)) == image_digest(str(image)) == hashlib.sha256(b"SIF image bytes").hexdigest()
    assert len(hashed) == 2


def test_no_digest_outside_a_container_or_for_a_sandbox_folder(tmp_path, monkeypatch):
    from advdistill.provenance import image_digest, stage_manifest

    monkeypatch.delenv("APPTAINER_CONTAINER", raising=False)
    monkeypatch.delenv("SINGULARITY_CONTAINER", raising=False)
    assert stage_manifest("score", {}, None, 0.0, [])["container_sha256"] is None
    assert image_digest(str(tmp_path)) is None
    assert image_digest(str(tmp_path / "not-bound.sif")) is None


def test_stage_outputs_compare_bytes_then_content_without_the_run_description(tmp_path):
    import polars as pl

    host, image = tmp_path / "host" / "results", tmp_path / "image" / "results"
    for root, seconds, answer in ((host, 12.1, "4"), (image, 71.7, "5")):
        root.mkdir(parents=True)
        pl.DataFrame({"id": ["a"]}).write_parquet(root / "rows.parquet")
        (root / "metrics.json").write_text(f'{{"loss": 0.5, "log": [{{"train_runtime": {seconds}}}]}}')
        (root / "answer.json").write_text(f'{{"answer": "{answer}", "host": "{root.parent.name}"}}')
    (host / "only-here.txt").write_text("x")
    verdicts = chroot_build.compare_outputs(host.parent, image.parent)
    assert verdicts == {"results/rows.parquet": "bytes", "results/metrics.json": "content",
                        "results/answer.json": "DIFFERENT", "results/only-here.txt": "MISSING in image"}


def gpu_test_script() -> tuple[str, str]:
    """The GPU recipe's %test: its shell lines and the Python of its heredoc."""
    test = chroot_build.parse_definition(REPO / "containers" / "advdistill-gpu.def").sections["test"]
    shell, heredoc = test.split("python - <<'EOF'\n")
    script, rest = heredoc.split("\nEOF\n")
    assert not rest.strip(), "nothing may follow the heredoc"
    return shell, script


def run_gpu_test(tmp_path, driver_version: int | None) -> subprocess.CompletedProcess:
    """The %test Python here, with the CUDA 13.0 of the image's torch and a driver reporting ``driver_version``
    (None: no libcuda.so.1 bound, as without --nv); no GPU is visible on this machine."""
    prelude = ("import ctypes, torch\ntorch.version.cuda = '13.0'\n" + (
        "" if driver_version is None else
        "class Driver:\n    def cuDriverGetVersion(self, ref):\n"
        f"        ref._obj.value = {driver_version}\n        return 0\n"
        "ctypes.CDLL = lambda name: Driver()\n"))
    (tmp_path / "gpu_test.py").write_text(prelude + gpu_test_script()[1])
    return subprocess.run([sys.executable, str(tmp_path / "gpu_test.py")], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, env={**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'kernels'}"})


def test_gpu_image_test_checks_driver_device_and_a_triton_kernel():
    shell, script = gpu_test_script()
    assert "set -eu" in shell and "advdistill --help" in shell
    assert 'ctypes.CDLL("libcuda.so.1").cuDriverGetVersion' in script and "torch.version.cuda" in script
    assert "cuda_report()" in script and 'device="cuda"' in script
    assert re.search(r"advdistill_kernels\.advdistill_loss\(.*\n.*for backend in \(\"triton\", \"torch\"\)", script)
    compile(script, "advdistill-gpu.def %test", "exec")


@pytest.mark.parametrize(("driver", "message"), [
    (None, "GPU test: no NVIDIA driver in the container (no libcuda.so.1): run it with --nv on a GPU node"),
    (12040, "GPU test: the host driver supports CUDA 12.4, older than the image's CUDA 13.0: it needs a driver of "
            "R580 or newer"),
    (13000, "GPU test: torch sees no CUDA device (0 CUDA device(s) visible, CUDA_VISIBLE_DEVICES="),
])
def test_gpu_image_test_names_what_is_missing(tmp_path, driver, message):
    done = run_gpu_test(tmp_path, driver)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith(message), done.stderr


def test_the_chroot_build_deletes_only_what_an_earlier_build_made(tmp_path):
    """It runs as root, and --out may be any folder: a folder it did not make is refused untouched; in its own,
    a rebuild deletes its entries and nothing else."""
    user = tmp_path / "user"
    (user / "data").mkdir(parents=True)
    (user / "data" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="was not made by chroot_build"):
        chroot_build.claim_out(user)
    with pytest.raises(SystemExit, match="was not made by chroot_build"):
        chroot_build.check_own_out(user)
    assert (user / "data" / "notes.txt").read_text() == "mine" and sorted(p.name for p in user.iterdir()) == ["data"]
    out = tmp_path / "new" / "out"
    chroot_build.claim_out(out)
    for name in ("rootfs/etc", "work/stage", "wheel-index/torch"):
        (out / name).mkdir(parents=True)
    (out / "summary.json").write_text("{}")
    (out / "kept.txt").write_text("a file of the user's, put there later")
    chroot_build.claim_out(out)
    assert sorted(p.name for p in out.iterdir()) == [chroot_build.OUT_MARKER, "kept.txt"]
