import inspect
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
from filelock import FileLock

from tests.helpers import MINI_TARGETS, SMOKE_CONFIG, mini_config, run_dag, snakemake

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


def shared_run(tmp_path_factory, name: str, build) -> Path:
    """A Snakemake run made once per test session and shared by every pytest-xdist worker: the first worker to
    ask builds it (``build(workdir)``) under a file lock, the others wait for it and reuse it."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's directory, above every worker's own
    work, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            build(work)
            done.touch()
    return work


@pytest.fixture(scope="session")
def smoke(tmp_path_factory, data_dir):
    """The whole smoke DAG (`all`, .test/config.yaml) built once per session in a temp workdir with --cores 8
    (more jobs than cores). Shared by every test that reads it: read it, dry-run against it, never modify it."""
    if os.environ.get("SHARPGAPS_SMOKE_DIR"):  # local iteration: reuse a finished smoke run of this commit
        return Path(os.environ["SHARPGAPS_SMOKE_DIR"])
    return shared_run(tmp_path_factory, "smoke", lambda work: run_dag(work, SMOKE_CONFIG))


@pytest.fixture(scope="session")
def mini(tmp_path_factory, data_dir):
    """(workdir, config) of the minimal DAG (tests.helpers.MINI_TARGETS) built once per session with --cores 8:
    the fault-injection tests damage copies of it, and the --cores 1 test compares a serial run with it."""
    def build(base):
        base.mkdir(exist_ok=True)
        run_dag(base / "w", mini_config(base / "config.yaml"), MINI_TARGETS)

    base = shared_run(tmp_path_factory, "mini", build)
    return base / "w", base / "config.yaml"


@pytest.fixture(scope="session")
def smoke_report(smoke, tmp_path_factory) -> Path:
    """`snakemake all --report report.html` of the smoke run, made once per session in a hard-linked copy of
    it (the report writes Snakemake metadata; the smoke run stays untouched). Read it, never modify it."""
    def build(base):
        shutil.copytree(smoke, base / "w", symlinks=True, copy_function=os.link)
        (base / "report.log").write_text(snakemake(base / "w", "all", "--report", str(base / "report.html")))

    return shared_run(tmp_path_factory, "report", build) / "report.html"


# A test that starts Snakemake or another pipeline process (a job's CLI, torchrun), directly or through one of
# these fixtures, is a workflow test: `pytest -m "not workflow"` keeps the in-process library tests only (README,
# "Tests"). Marked here, so a new test cannot forget it.
WORKFLOW_FIXTURES = {"smoke", "smoke_report", "mini", "damaged", "sweeps", "distributed"}
STARTS_PROCESSES = re.compile(r"\bsnakemake\(|[\"']snakemake[\"']|\bSNAKEMAKE\b|\b_kill_when\(|\brun_dag\(|snakefmt"
                              r"|run_slurm_test|benchmarks/run\.py|[\"']-m[\"'], [\"']sharpgaps|_cli_train\(|_torchrun_cmd\(")


def pytest_collection_modifyitems(config, items):
    for item in items:
        function = getattr(item, "function", None)
        source = inspect.getsource(function) if function is not None else ""
        if WORKFLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or STARTS_PROCESSES.search(source):
            item.add_marker(pytest.mark.workflow)
