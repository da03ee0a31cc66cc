"""The Makefile's environments: the project's .venv unless one is active, its bin/ on the recipes' PATH, and the
vLLM venv seeing the project's environment behind its own packages."""

import os
import subprocess
import sys
import sysconfig

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.skipif(not os.access("/usr/bin/make", os.X_OK), reason="needs make")


def make(*args, env_update=None, drop=("VIRTUAL_ENV", "CONDA_PREFIX")):
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("MAKE")}
    env.update(env_update or {})
    result = subprocess.run(["make", "-C", str(REPO), *args], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_without_an_active_environment_make_installs_into_the_project_venv():
    commands = make("-n", "-B", "install")
    assert "python3 -m venv .venv ||" in commands
    assert ".venv/bin/python -m pip install --quiet -e kernels" in commands
    path = make("-s", "--eval", "show-path: ; @echo $$PATH", "show-path")
    assert path.split(":")[0] == str(REPO / ".venv" / "bin")


@pytest.mark.parametrize("variable", ["VIRTUAL_ENV", "CONDA_PREFIX"])
def test_an_active_environment_is_used_as_it_is(variable, tmp_path):
    commands = make("-n", "-B", "install", "test", env_update={variable: str(tmp_path)})
    assert "-m venv .venv ||" not in commands and ".venv/bin" not in commands
    assert "python3 -m pip install --quiet -e kernels" in commands and "python3 -m pytest -q" in commands
    path = make("-s", "--eval", "show-path: ; @echo $$PATH", "show-path", env_update={variable: str(tmp_path)})
    assert path.strip() == os.environ["PATH"]


def site_packages(venv):
    return venv / sysconfig.get_path("purelib", vars={"base": "", "platbase": ""}).lstrip("/")


def test_vllm_venv_sees_the_project_environment_behind_its_own_packages(tmp_path):
    project = tmp_path / "project-env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(project)], check=True)
    packages = site_packages(project)
    (packages / "project_module.py").write_text("WHERE = 'project'\n")
    (packages / "shadowed.py").write_text("WHERE = 'project'\n")
    editable = tmp_path / "editable-source"
    editable.mkdir()
    (editable / "editable_module.py").write_text("WHERE = 'editable'\n")
    (packages / "__editable__.example.pth").write_text(f"{editable}\n")  # an editable install's .pth

    vllm = tmp_path / "vllm-env"
    make("vllm-venv", f"VLLM_VENV={vllm}", f"PYTHON={project / 'bin' / 'python'}",
         env_update={"VIRTUAL_ENV": str(project), "PATH": f"{project / 'bin'}:{os.environ['PATH']}"})
    (site_packages(vllm) / "shadowed.py").write_text("WHERE = 'vllm'\n")
    check = ("import project_module, editable_module, shadowed; "
             "print(project_module.WHERE, editable_module.WHERE, shadowed.WHERE)")
    result = subprocess.run([str(vllm / "bin" / "python"), "-c", check], capture_output=True, text=True)
    assert result.stdout.split() == ["project", "editable", "vllm"], result.stderr
