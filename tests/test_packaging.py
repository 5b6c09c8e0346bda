"""Packaging: pyproject.toml and environment.yml install the same runtime dependencies."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
# conda-forge package names that differ from PyPI's
CONDA_TO_PIP = {
    "pytorch": "torch",
    "snakemake-minimal": "snakemake",
    "matplotlib-base": "matplotlib",
}


def split(requirement: str) -> tuple[str, str]:
    name, spec = re.match(r"^\s*([A-Za-z0-9_.-]+)\s*(.*)$", requirement).groups()
    return name.lower(), spec.replace(" ", "")


def test_environment_yml_matches_pyproject():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pip = dict(split(r) for r in pyproject["project"]["dependencies"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):  # the pip: subsection, PyPI names already
            conda.update(split(r) for r in dep.get("pip", []))
        elif isinstance(dep, str):
            name, spec = split(dep)
            if name not in ("python", "pip"):
                conda[CONDA_TO_PIP.get(name, name)] = spec
    assert conda == pip
    assert "conda-forge" in env["channels"]


def test_torch_range_admits_the_cpu_wheel():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    spec = dict(split(r) for r in pyproject["project"]["dependencies"])["torch"]
    lower = re.search(r">=([\d.]+)", spec).group(1)
    upper = re.search(r"<([\d.]+)", spec).group(1)
    version = (2, 13, 0)
    assert tuple(map(int, lower.split("."))) <= version < tuple(map(int, upper.split(".")))


def test_schema_shipped_with_package_is_the_workflow_schema():
    from adseg.config import schema

    assert schema() == yaml.safe_load(
        (ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text()
    )


def test_top_level_layout():
    for name in (
        "Snakefile",
        "README.md",
        "environment.yml",
        "pyproject.toml",
        "adseg",
        "config",
        "workflow",
        "tests",
        ".ci/run",
        "workflow/Snakefile",
        "config/config.yaml",
    ):
        assert (ROOT / name).exists(), name
    top = (ROOT / "Snakefile").read_text()
    # the top level only includes the workflow and names its default target
    assert 'include: "workflow/Snakefile"' in top
    rules = [line for line in top.splitlines() if line.startswith("rule ")]
    assert rules == ["rule default:"] and "rules.all.input" in top


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    test_command = next(b.strip() for b in blocks if "pytest" in b)
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines
    assert "snakemake --cores all" in blocks[0]


def test_default_config_shipped_with_package_is_the_workflows():
    from adseg.config import embedded_default

    assert embedded_default() == yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
