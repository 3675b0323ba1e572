import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _data_dir() -> Path:
    env = os.environ.get("SHARPGAPS_DATA_DIR")
    return Path(env).resolve() if env else (REPO.parent / "shared" / "data").resolve()


DATA_DIR = _data_dir()
# Workflow tests run Snakemake in temp dirs, where the config's relative data_dir would not resolve.
os.environ["SHARPGAPS_DATA_DIR"] = str(DATA_DIR)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "mnist").is_dir():
        pytest.fail(f"test data not found at {DATA_DIR}; set SHARPGAPS_DATA_DIR to shared/data")
    return DATA_DIR


@pytest.fixture(scope="session")
def mnist_small(data_dir):
    """A 600-example MNIST subset used by the engine tests (real data, small for speed)."""
    from sharpgaps.subsets import make_subset

    return make_subset("mnist", data_dir, n_train=600, seed=0, test_cap=200)
