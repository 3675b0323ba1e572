"""envs/ (conda deployment) and pyproject.toml must pin the same versions."""

import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _pins(lines):
    return dict(line.split("==", 1) for line in lines)


def test_conda_env_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((REPO / "envs/sharpgaps.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert _pins(pip) == _pins(project["dependencies"])
    assert f"python={project['requires-python'].lstrip('>=')}" in env["dependencies"]


def test_torch_pinned_to_the_local_cpu_build():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "torch==2.13.0" in project["dependencies"]
    assert not any(d.startswith("torchvision") for d in project["dependencies"])
