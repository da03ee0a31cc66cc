"""Fast workflow checks: lint, and the DAG the default configuration plans on a fresh directory."""

import subprocess

from tests.conftest import REPO


def run_snakemake(*args, cwd):
    return subprocess.run(["snakemake", "-s", str(REPO / "Snakefile"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_lint_reports_nothing():
    result = subprocess.run(["snakemake", "--lint"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations" in result.stdout + result.stderr


def test_default_config_plans_the_whole_dag(tmp_path):
    result = run_snakemake("--dry-run", "--configfile", str(REPO / "config.yaml"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    stats = result.stdout.split("Job stats:")[1].split("total")[0]
    for rule, count in [("prepare", 3), ("bootstrap_tokenizer", 1), ("bootstrap_model", 2), ("sample", 1),
                        ("score", 1), ("train", 2), ("evaluate", 8), ("report", 1)]:
        assert f"{rule} " in stats and stats.split(f"\n{rule}")[1].split()[0] == str(count), (rule, stats)


def test_dangling_dataset_reference_names_the_key(tmp_path):
    config = (REPO / "config.yaml").read_text().replace("testsets: [arith, arith_ood]", "testsets: [arith, gsm9k]")
    (tmp_path / "bad.yaml").write_text(config)
    result = run_snakemake("--dry-run", "--configfile", str(tmp_path / "bad.yaml"), cwd=tmp_path)
    assert result.returncode != 0
    assert "experiments.arith.testsets: 'gsm9k'" in result.stdout + result.stderr
