import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sharpgaps import grid
from sharpgaps.config import ConfigError, validate

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow/schemas/config.schema.yaml"


def _paper():
    return yaml.safe_load((REPO / "config.yaml").read_text())


def _smoke():
    return yaml.safe_load((REPO / ".test/config.yaml").read_text())


def test_shipped_configs_are_valid():
    for cfg in (_paper(), _smoke()):
        out = validate(cfg, SCHEMA)
        assert out["subset"]["seed"] == cfg["subset"]["seed"]


def test_defaults_filled_in():
    cfg = _smoke()
    del cfg["device"], cfg["datasets"]["sst2"]["max_len"]
    out = validate(cfg, SCHEMA)
    assert out["device"] == "auto" and out["datasets"]["sst2"]["max_len"] == 50


def _set(cfg, path, value):
    *head, last = path.split(".")
    node = cfg
    for k in head:
        node = node[k]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value


DELETE = object()

BAD = [
    ("experiments.main.settings", ["mnist_fc", "imagenet_vit"], "experiments.main.settings"),
    ("train.K", 1, "train.K"),
    ("train.tau", 0, "train.tau"),
    ("train.lr", -0.1, "train.lr"),
    ("settings.mnist_fc.lr", 0, "settings.mnist_fc.lr"),
    ("train.loss", "hinge", "train.loss"),
    ("train.checkpoints", {"rounds": [5, 10_000]}, "train.checkpoints.rounds"),
    ("train.b", 0, "train.b"),
    ("train.window", 0, "train.window"),
    ("train.window", 500, "train.window"),
    ("train.seeds", [], "train.seeds"),
    ("device", "tpu", "device"),
    ("settings.mnist_fc.model", "resnet", "settings.mnist_fc.model"),
    ("settings.mnist_fc.model", "transformer", "settings.mnist_fc.model"),
    ("settings.cifar_cnn.dataset", "imagenet", "settings.cifar_cnn.dataset"),
    ("subset.n_train", "many", "subset.n_train"),
    ("train.b", 100_000, "train.b"),
    ("experiments.main.K", [8, 1], "experiments.main.K.1"),
    ("train.local_steps", DELETE, "train"),
    ("datasets.mnist.test_cap", 0, "datasets.mnist.test_cap"),
    ("train.typo_key", 3, "train"),
]


@pytest.mark.parametrize("path,value,key", BAD, ids=[f"{p}={v!r}" for p, v, _ in BAD])
def test_bad_config_rejected_naming_the_key(path, value, key):
    cfg = copy.deepcopy(_smoke())
    _set(cfg, path, value)
    with pytest.raises(ConfigError) as err:
        validate(cfg, SCHEMA)
    assert key in str(err.value)


def test_bad_config_stops_snakemake_before_any_job(tmp_path):
    cfg = _smoke()
    cfg["train"]["K"] = 1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
                           "--cores", "1", "all", "--configfile", str(path)], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "train.K" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()  # nothing ran


def test_run_ids_roundtrip_and_encode_every_parameter():
    runs = grid.expand_runs(validate(_paper(), SCHEMA))
    ids = {(r["setting"], grid.run_id(r)) for r in runs}
    assert len(ids) == len(runs)
    for r in runs:
        parsed = grid.parse_run_id(grid.run_id(r))
        assert all(parsed[k] == r[k] for k in ("K", "tau", "b", "lr", "loss", "local_steps", "window", "seed"))


def test_checkpoint_rounds_log_spaced_denser_early():
    rounds = grid.checkpoint_rounds(2500, 4, {"count": 20, "spacing": "log"})
    assert rounds[0] == 4 and rounds[-1] == 2500 and len(rounds) >= 18
    gaps = [b - a for a, b in zip(rounds, rounds[1:])]
    assert gaps[0] < gaps[-1]
    assert grid.checkpoint_rounds(100, 4, {"rounds": [50, 10, 50]}) == [10, 50]
