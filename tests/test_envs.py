"""The full lock (envs/requirements-cpu.txt), pyproject.toml and envs/ (conda deployment) agree."""

import importlib.util
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "envs/requirements-cpu.txt"


def _lock_module():
    spec = importlib.util.spec_from_file_location("envlock", REPO / "envs/lock.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


lock = _lock_module()


def _pins(lines):
    return {lock.normalise(k): v for k, v in (line.split("==", 1) for line in lines)}


def _project():
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _conda_pip():
    env = yaml.safe_load((REPO / "envs/sharpgaps.yaml").read_text())
    return env, next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))


def test_lock_is_current_with_pyproject():
    assert lock.check() == [], "run `make lock` and commit envs/"


def test_lock_holds_every_top_level_pin_at_its_version():
    locked = lock.pins(LOCK)
    project = _project()
    top = _pins(project["dependencies"] + project["optional-dependencies"]["dev"])
    for name, version in top.items():
        assert name in locked, f"{name} is pinned in pyproject.toml but not in the lock"
        # torch's CPU build carries the local label +cpu (envs/overrides-cpu.txt); the public version agrees.
        assert locked[name].split("+")[0] == version, (name, locked[name], version)
    assert locked["torch"] == "2.13.0+cpu"
    assert len(locked) > 3 * len(top), "the lock should hold the whole transitive set"


def test_every_locked_package_has_a_hash():
    text = LOCK.read_text()
    entries = [block for block in text.split("\n") if block and not block.startswith((" ", "#"))]
    assert len(entries) == len(lock.pins(LOCK))
    for entry in entries:
        assert entry.endswith("\\"), f"no --hash after {entry!r}"


def test_conda_env_mirrors_the_whole_lock():
    env, pip = _conda_pip()
    locked = {k: v.split("+")[0] for k, v in lock.pins(LOCK).items()}
    assert _pins(pip) == locked
    project = _project()
    assert f"python={project['requires-python'].lstrip('>=')}" in env["dependencies"]


def test_changed_pin_without_relock_fails_the_check_with_how_to_relock(tmp_path):
    text = (REPO / "pyproject.toml").read_text()
    assert '"numpy==2.4.6"' in text
    changed = tmp_path / "pyproject.toml"
    changed.write_text(text.replace('"numpy==2.4.6"', '"numpy==2.4.5"'))
    proc = subprocess.run([sys.executable, str(REPO / "envs/lock.py"), "check", "--pyproject", str(changed)],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "envs/requirements-cpu.txt is out of date with pyproject.toml" in proc.stderr
    assert "make lock" in proc.stderr
    # the same file unchanged passes
    shutil.copy(REPO / "pyproject.toml", changed)
    ok = subprocess.run([sys.executable, str(REPO / "envs/lock.py"), "check", "--pyproject", str(changed)],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr


def test_ci_and_setup_run_the_lock_check():
    assert "envs/lock.py check" in (REPO / ".ci/run").read_text()
    make = subprocess.run(["make", "-n", "setup"], cwd=REPO, capture_output=True, text=True)
    assert "envs/lock.py check" in make.stdout


def test_torch_pinned_to_the_local_cpu_build():
    project = _project()
    assert "torch==2.13.0" in project["dependencies"]
    assert not any(d.startswith("torchvision") for d in project["dependencies"])
    assert not any(name.startswith("nvidia-") for name in lock.pins(LOCK)), "the CPU lock pulled a CUDA build"
