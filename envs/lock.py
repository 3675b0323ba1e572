#!/usr/bin/env python3
"""The full lock: every package the project installs, pinned and hashed, per accelerator.

    python3 envs/lock.py check              # is every committed lock current with pyproject.toml? (CI, make setup)
    python3 envs/lock.py compile [--accel cpu] [--upgrade] --uv PATH   # what `make lock` runs

pyproject.toml pins the top-level packages; `compile` resolves their whole transitive set (with the
dev extra) with `uv pip compile --generate-hashes` into envs/requirements-<accel>.txt and writes the
same versions into the conda environment envs/sharpgaps.yaml. Each lock's first line records a
digest of what it was compiled from (pyproject's requires-python, dependencies and
optional-dependencies, plus the accelerator's settings below); `check` recomputes it, offline, in
well under a second, and names the command that relocks when it differs.

Standard library only: it runs before the venv exists.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = REPO / "pyproject.toml"
CONDA_ENV = REPO / "envs" / "sharpgaps.yaml"
# The interpreter the locks are resolved for (the CI machine's; some pins need >= 3.11.5).
PYTHON_VERSION = "3.11.7"
PLATFORM = "x86_64-manylinux_2_28"
DIGEST_PREFIX = "# pyproject-digest: "
RELOCK = "make lock"

# Per accelerator: pins that replace pyproject's (uv --override) and where the torch build comes from.
#  cpu:  torch's CPU-only build, the local version 2.13.0+cpu. It is not on PyPI: it is found through
#        pip's configured find-links / extra index (here /opt/wheels; elsewhere PyTorch's CPU wheel index,
#        set TORCH_FIND_LINKS or PIP_EXTRA_INDEX_URL).
#  cuda: PyPI's torch 2.13.0 for Linux x86_64, which is the CUDA build (it pulls the nvidia-* wheels).
ACCELERATORS = {
    "cpu": {"overrides": "envs/overrides-cpu.txt", "torch_source": True},
    "cuda": {"overrides": None, "torch_source": False},
}


def lock_path(accel: str) -> Path:
    return REPO / "envs" / f"requirements-{accel}.txt"


def digest(accel: str, pyproject: Path = PYPROJECT) -> str:
    project = tomllib.loads(pyproject.read_text())["project"]
    basis = {
        "requires-python": project.get("requires-python"),
        "dependencies": project.get("dependencies", []),
        "optional-dependencies": project.get("optional-dependencies", {}),
        "accelerator": {accel: _overrides(accel)},
        "python": PYTHON_VERSION,
        "platform": PLATFORM,
    }
    return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:16]


def _overrides(accel: str) -> list[str]:
    path = ACCELERATORS[accel]["overrides"]
    if not path:
        return []
    return [ln.strip() for ln in (REPO / path).read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def recorded_digest(lock: Path) -> str | None:
    first = lock.read_text().splitlines()[:1]
    return first[0][len(DIGEST_PREFIX):].strip() if first and first[0].startswith(DIGEST_PREFIX) else None


def pins(lock: Path) -> dict[str, str]:
    """name -> version of every package in a lock (names normalised as in PEP 503)."""
    out = {}
    for line in lock.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line)
        if m:
            out[normalise(m.group(1))] = m.group(2)
    return out


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def committed_locks() -> list[str]:
    return [a for a in ACCELERATORS if lock_path(a).exists()]


def check(pyproject: Path = PYPROJECT, accels: list[str] | None = None) -> list[str]:
    """Problems (empty when every lock is current). The cpu lock must exist."""
    problems = []
    accels = accels if accels is not None else sorted(set(committed_locks()) | {"cpu"})
    for accel in accels:
        lock = lock_path(accel)
        if not lock.exists():
            problems.append(f"{lock.relative_to(REPO)} is missing. Create it with `{RELOCK} ACCEL={accel}`.")
            continue
        want, have = digest(accel, pyproject), recorded_digest(lock)
        if want != have:
            problems.append(
                f"{lock.relative_to(REPO)} is out of date with {pyproject.name} (its dependency pins changed: "
                f"digest {have} recorded, {want} now). Relock with `{RELOCK}"
                f"{'' if accel == 'cpu' else ' ACCEL=' + accel}` and commit envs/requirements-{accel}.txt "
                f"and envs/sharpgaps.yaml."
            )
    return problems


def _pip_find_links() -> list[str]:
    """uv arguments for where the CPU torch wheel is: TORCH_FIND_LINKS (a directory or a page of wheel
    links, e.g. PyTorch's CPU wheel page) if set, else pip's configured find-links (here /opt/wheels).
    pip's extra index URLs are not passed on: uv takes a package only from the first index that has it."""
    if os.environ.get("TORCH_FIND_LINKS"):
        values = os.environ["TORCH_FIND_LINKS"].split()
    else:
        try:
            out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                                 text=True).stdout
        except OSError:
            out = ""
        values = []
        for line in out.splitlines():
            key, _, value = line.partition("=")
            if key.endswith(".find-links"):
                values += value.strip().strip("'\"").split()
    args = []
    for v in dict.fromkeys(values):
        args += ["--find-links", v]
    return args


def compile_lock(accel: str, uv: str, upgrade: bool = False) -> Path:
    lock = lock_path(accel)
    spec = ACCELERATORS[accel]
    rel = lock.relative_to(REPO)
    cmd = [uv, "pip", "compile", "pyproject.toml", "--extra", "dev", "--generate-hashes",
           "--python-version", PYTHON_VERSION, "--python-platform", PLATFORM,
           "--custom-compile-command", f"{RELOCK}{'' if accel == 'cpu' else ' ACCEL=' + accel}",
           "--annotation-style=line", "--quiet", "-o", str(rel)]
    if spec["overrides"]:
        cmd += ["--override", spec["overrides"]]
    if spec["torch_source"]:
        cmd += _pip_find_links()
    if upgrade:
        cmd.append("--upgrade")
    if lock.exists():  # uv keeps the pins of an existing output file unless --upgrade: drop our header lines
        lock.write_text("\n".join(ln for ln in lock.read_text().splitlines() if not _ours(ln)) + "\n")
    subprocess.run(cmd, check=True, cwd=REPO)
    body = lock.read_text()
    lock.write_text(f"{DIGEST_PREFIX}{digest(accel)}\n"
                    f"# The full lock for accelerator '{accel}' (CPython {PYTHON_VERSION}, {PLATFORM}); "
                    f"see envs/lock.py. Do not edit: change pyproject.toml and run `{RELOCK}`.\n" + body)
    if accel == "cpu":
        write_conda_env(pins(lock))
    return lock


def _ours(line: str) -> bool:
    return line.startswith(DIGEST_PREFIX) or line.startswith("# The full lock for accelerator")


def write_conda_env(locked: dict[str, str]) -> None:
    """envs/sharpgaps.yaml's pip section: every locked version. torch drops its local label (+cpu), which
    only PyTorch's own index carries; pip there takes whatever build its configuration finds."""
    text = CONDA_ENV.read_text()
    head, marker, _ = text.partition("      # locked: generated by envs/lock.py from envs/requirements-cpu.txt\n")
    if not marker:
        raise SystemExit(f"{CONDA_ENV}: no '# locked:' marker line to write the pins after")
    lines = [f"      - {name}=={version.split('+')[0]}" for name, version in sorted(locked.items())]
    CONDA_ENV.write_text(head + marker + "\n".join(lines) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="fail, saying how to relock, when a lock is out of date with pyproject.toml")
    c.add_argument("--pyproject", type=Path, default=PYPROJECT)
    c.add_argument("--accel", action="append", choices=sorted(ACCELERATORS))
    k = sub.add_parser("compile", help="(re)write a lock and the conda env (what `make lock` runs)")
    k.add_argument("--accel", default="cpu", choices=sorted(ACCELERATORS))
    k.add_argument("--uv", default="uv", help="the uv executable")
    k.add_argument("--upgrade", action="store_true", help="move every transitive pin to its newest allowed version")
    args = p.parse_args(argv)
    if args.cmd == "check":
        problems = check(args.pyproject, args.accel)
        for line in problems:
            print(f"ERROR: {line}", file=sys.stderr)
        return 1 if problems else 0
    print(compile_lock(args.accel, args.uv, args.upgrade).relative_to(REPO))
    return 0


if __name__ == "__main__":
    sys.exit(main())
