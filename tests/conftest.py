import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _data_dir() -> Path:
    env = os.environ.get("SHARPGAPS_DATA_DIR")
    return Path(env).resolve() if env else (REPO.parent / "shared" / "data").resolve()


DATA_DIR = _data_dir()
# Workflow tests run Snakemake in temp dirs, where the config's relative data_dir would not resolve.
os.environ["SHARPGAPS_DATA_DIR"] = str(DATA_DIR)
# Jobs call `python -m sharpgaps`: the interpreter running the tests must be the one they find.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "mnist").is_dir():
        pytest.fail(f"test data not found at {DATA_DIR}; set SHARPGAPS_DATA_DIR to shared/data")
    return DATA_DIR


@pytest.fixture(scope="session")
def mnist_small(data_dir):
    """A 600-example MNIST subset used by the engine tests (real data, small for speed)."""
    from sharpgaps.data.subsets import make_subset

    return make_subset("mnist", data_dir, n_train=600, seed=0, test_cap=200)


@pytest.fixture(scope="session")
def smoke(tmp_path_factory, data_dir):
    """The whole smoke DAG (`all`, .test/config.yaml) built once per session in a temp workdir, with
    --cores 8 on purpose (more jobs than cores; tests/test_faults.py compares it with --cores 1).

    Shared by the workflow and figure tests: read it, dry-run against it, never modify it.
    """
    if os.environ.get("SHARPGAPS_SMOKE_DIR"):  # local iteration: reuse a finished smoke run of this commit
        return Path(os.environ["SHARPGAPS_SMOKE_DIR"])
    work = tmp_path_factory.mktemp("smoke")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(work),
           "--cores", "8", "all", "--configfile", str(REPO / ".test/config.yaml")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"smoke run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return work


@pytest.fixture(scope="session")
def smoke_report(smoke, tmp_path_factory) -> Path:
    """`snakemake all --report report.html` of the smoke run, made once per session in a hard-linked copy of
    it (the report writes Snakemake metadata; the smoke run stays untouched). Read it, never modify it."""
    from wf import snakemake

    base = tmp_path_factory.mktemp("report")
    work = base / "w"
    shutil.copytree(smoke, work, symlinks=True, copy_function=os.link)
    snakemake(work, "all", "--report", str(base / "report.html"))
    return base / "report.html"
