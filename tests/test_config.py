import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from sharpgaps.core import grid
from sharpgaps.pipeline.config import ConfigError, validate

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
    if isinstance(path, tuple):  # several changes at once
        for p, v in zip(path, value):
            _set(cfg, p, v)
        return
    *head, last = path.split(".")
    node = cfg
    for k in head:
        node = node[k]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value


DELETE = object()


def _change(path, value) -> str:
    """A config change as docs/RELIABILITY.md's table shows it, e.g. `train.K: 1`."""
    if isinstance(path, tuple):
        return ", ".join(_change(p, v) for p, v in zip(path, value))
    return f"`{path}: {'(deleted)' if value is DELETE else json.dumps(value)}`"

# (key path, bad value, key the message must name, allowed values it must state); a tuple of paths with a
# tuple of values makes several changes at once. docs/RELIABILITY.md tabulates the messages: regenerate
# with `python tests/test_config.py`.
BAD = [
    ("experiments.main.settings", ["mnist_fc", "imagenet_vit"], "experiments.main.settings", "defined: ['cifar_cnn'"),
    ("experiments.main.K", [], "experiments.main.K", "at least 1 item"),
    ("experiments.main.K", [8, 1], "experiments.main.K.1", "minimum of 2"),
    ("experiments.main.tau", [4, 4], "experiments.main.tau", "each value at most once"),
    ("train.K", 1, "train.K", "minimum of 2"),
    ("train.tau", 0, "train.tau", "minimum of 1"),
    ("train.lr", -0.1, "train.lr", "minimum of 0"),
    ("train.lr", "fast", "train.lr", "of type 'number'"),
    ("settings.mnist_fc.lr", 0, "settings.mnist_fc.lr", "minimum of 0"),
    ("train.loss", "hinge", "train.loss", "['mse', 'ce']"),
    ("train.b", 0, "train.b", "minimum of 1"),
    ("train.b", 100_000, "train.b", "allowed: 1..1000"),
    ("train.local_steps", 2, "train.local_steps", "local_steps >= tau"),
    ("train.local_steps", DELETE, "train", "'local_steps' is a required property"),
    ("train.window", 0, "train.window", "minimum of 1"),
    ("train.window", 500, "train.window", "allowed: 1..24"),
    ("train.checkpoints", {"rounds": [5, 10_000]}, "train.checkpoints.rounds", "allowed: 1..24"),
    ("train.seeds", [], "train.seeds", "at least 1 item"),
    ("train.seeds", [0, 0], "train.seeds", "each value at most once"),
    ("train.typo_key", 3, "train", "allowed keys: K, alpha, b, checkpoints"),
    ("geometry.m_list", [1, 500], "geometry.m_list", "allowed: 1..14"),
    ("restricted.gap_m", 50, "restricted.gap_m", "gap_m <= (K-1)*gap_window"),
    ("restricted.tol", 0.9, "restricted.tol", "maximum of 0.5"),
    ("geometry.lanczos_dtype", "float16", "geometry.lanczos_dtype", "['float32', 'float64']"),
    ("restricted.modes", ["dom", "sideways"], "restricted.modes.1", "'gapdom', 'gapbulk'"),
    ("theory.taus", [], "theory.taus", "at least 1 item"),
    ("device", "tpu", "device", "['auto', 'cpu', 'cuda']"),
    ("device", "cuda", "device", "auto | cpu | cuda"),  # this test hides any GPU
    ("engine", "mpi", "engine", "['simulated', 'distributed']"),
    ("threads", 0, "threads", "minimum of 1"),
    ("settings.mnist_fc.model", "resnet", "settings.mnist_fc.model", "['fc_tanh', 'cnn_relu', 'transformer']"),
    ("settings.mnist_fc.model", "transformer", "settings.mnist_fc.model", "use 'fc_tanh'"),
    ("settings.cifar_cnn.dataset", "imagenet", "settings.cifar_cnn.dataset", "['mnist', 'cifar10', 'sst2']"),
    ("settings.sst2_transformer.arch", {"emb_mul": 100}, "settings.sst2_transformer.arch",
     "known: dim, heads, layers, ff, emb_mult"),
    ("settings.sst2_transformer.arch", {"emb_mult": -1}, "settings.sst2_transformer.arch", "a positive number"),
    ("results_dir", "/{scale}", "results_dir", "does not match"),
    ("subset.n_train", "many", "subset.n_train", "of type 'integer'"),
    ("datasets.mnist.test_cap", 0, "datasets.mnist.test_cap", "minimum of 1"),
    ("figures.xscale", "cubic", "figures.xscale", "['linear', 'log']"),
    ("figures.fig1_setting", "cifar", "figures.fig1_setting", "allowed: one of ['mnist_fc', 'cifar_cnn'"),
    ("experiments.batch_sweep", {"settings": ["mnist_fc"], "b": [7], "match": "epochs"},
     "experiments.batch_sweep.match", "choose b that divides it"),
    ("experiments.k_sweep", {"settings": ["mnist_fc"], "K": [2], "match": "workers"},
     "experiments.k_sweep.match", "['none', 'gap_vectors', 'epochs']"),
    (("experiments.k_sweep", "figures.sweep_settings"), ({"settings": ["cifar_cnn"], "K": [2, 4]}, ["mnist_fc"]),
     "figures.sweep_settings", "allowed: a list of every setting of tau_ablation, k_sweep, batch_sweep"),
    ("train.partition", "shuffled", "train.partition", "['iid', 'dirichlet']"),
    ("train.partition", "dirichlet", "train.alpha", "needs the concentration alpha > 0"),
    ("train.alpha", 0, "train.alpha", "minimum of 0"),
    ("train.alpha", 0.5, "train.alpha", "set train.partition: dirichlet or remove alpha"),
    ("settings.mnist_fc.train.partition", "dirichlet", "settings.mnist_fc.train.alpha", "alpha > 0"),
    (("train.partition", "train.alpha", "train.b"), ("dirichlet", 0.5, 200), "train.b",
     "lower train.b or K, or raise subset.n_train"),
    ("train.momentum", 1.0, "train.momentum", "maximum of 1"),
    ("train.momentum", -0.5, "train.momentum", "minimum of 0"),
    ("train.momentum_buffers", "sum", "train.momentum_buffers", "['average', 'keep', 'reset']"),
    ("experiments.main.alpha", [None, 0], "experiments.main.alpha.1", "minimum of 0"),
    ("experiments.main.momentum", [0, 0.9, 1.5], "experiments.main.momentum.2", "maximum of 1"),
]


def _reject(path, value) -> str:
    cfg = copy.deepcopy(_smoke())
    _set(cfg, path, value)
    with pytest.raises(ConfigError) as err:
        validate(cfg, SCHEMA)
    return str(err.value)


@pytest.mark.parametrize("path,value,key,allowed", BAD, ids=[_change(p, v) for p, v, _, _ in BAD])
def test_bad_config_rejected_naming_key_and_allowed_values(path, value, key, allowed, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    msg = _reject(path, value)
    assert f"- {key}: " in msg and allowed in msg, msg


def test_cuda_check_can_be_waived_for_gpu_nodes(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = _smoke()
    cfg.update(device="cuda", device_check=False)
    assert validate(cfg, SCHEMA)["device"] == "cuda"


def test_bad_config_table_in_docs_is_current():
    doc = (REPO / "docs/RELIABILITY.md").read_text()
    for path, value, _, _ in BAD:
        assert f"| {_change(path, value)} |" in doc, f"docs/RELIABILITY.md lacks {path}={value!r}: run python tests/test_config.py"


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


def test_run_id_keeps_every_digit_of_the_lr():
    """%g (6 significant digits) would write lr=0.0123456789 as 0.0123457 and train another lr without a word."""
    lr = 0.0123456789
    run = {**grid.expand_runs(validate(_paper(), SCHEMA))[0], "lr": lr}
    rid = grid.run_id(run)
    assert "_lr0.0123456789_" in rid and grid.parse_run_id(rid)["lr"] == lr
    assert all(float(grid.exact_float(x)) == x for x in (lr, 1 / 3, 2.5e-7, 1.0, 123456789.0))
    assert [grid.exact_float(x) for x in (0.05, 1e-3, 1e-5)] == ["0.05", "0.001", "1e-05"]  # existing paths
    assert grid.parse_run_id(grid.run_id({**run, "K": 8.0}))["K"] == 8  # an integral float as YAML may give it


def test_checkpoint_rounds_log_spaced_denser_early():
    rounds = grid.checkpoint_rounds(2500, 4, {"count": 20, "spacing": "log"})
    assert rounds[0] == 4 and rounds[-1] == 2500 and len(rounds) >= 18
    gaps = [b - a for a, b in zip(rounds, rounds[1:])]
    assert gaps[0] < gaps[-1]
    assert grid.checkpoint_rounds(100, 4, {"rounds": [50, 10, 50]}) == [10, 50]


if __name__ == "__main__":  # the table in docs/RELIABILITY.md
    torch.cuda.is_available = lambda: False
    print("| config change (on .test/config.yaml) | error before any job |\n|---|---|")
    for path, value, key, _ in BAD:
        cfg = copy.deepcopy(_smoke())
        _set(cfg, path, value)
        try:
            validate(cfg, SCHEMA)
        except ConfigError as exc:
            first = next(line for line in str(exc).splitlines() if line.startswith(f"  - {key}:"))
            print(f"| {_change(path, value)} | {first.strip()[2:].replace('|', '&#124;')} |")


def test_validation_does_not_load_the_iri_grammars():
    """jsonschema's optional rfc3987_syntax (only for the iri/uri formats the schema never uses) compiles grammars
    for ~2 s at import; sharpgaps.pipeline.config keeps it out, which halves a Snakemake dry run."""
    import subprocess
    import sys

    code = "import sys, sharpgaps.pipeline.config; print(sys.modules.get('rfc3987_syntax') is None)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"


def test_sweeps_can_hold_the_gap_vectors_or_the_epochs_fixed():
    """K sweep: (K-1)W stays the setting's (W rounded up); b sweep: local_steps x b stays the setting's."""
    cfg = _paper()
    base = grid.setting_defaults(cfg, "mnist_fc")
    cfg["experiments"]["k_sweep"]["match"] = "gap_vectors"
    cfg["experiments"]["batch_sweep"]["match"] = "epochs"
    validate(cfg, SCHEMA)
    ks = {r["K"]: r for r in grid.expand_runs(cfg, ["k_sweep"]) if r["setting"] == "mnist_fc"}
    n = (base["K"] - 1) * base["window"]
    assert {K: ((K - 1) * r["window"], r["local_steps"]) for K, r in ks.items()} == \
        {2: (n, base["local_steps"]), 4: (30, base["local_steps"]), 8: (n, base["local_steps"]),
         16: (30, base["local_steps"])}
    bs = {r["b"]: r for r in grid.expand_runs(cfg, ["batch_sweep"]) if r["setting"] == "mnist_fc"}
    assert {b: (r["local_steps"] * b, r["window"]) for b, r in bs.items()} == \
        {b: (base["local_steps"] * base["b"], base["window"]) for b in (25, 50, 100, 200)}
    # unmatched (the default): the setting's own window and local steps for every swept value
    plain = _paper()
    del plain["experiments"]["k_sweep"]["match"]
    assert {r["window"] for r in grid.expand_runs(plain, ["k_sweep"])} == {base["window"]}



def test_an_experiment_can_run_shorter_than_its_setting():
    """local_steps as an axis (per setting too): its runs have their own ids, and match: epochs scales from it."""
    cfg = _paper()
    base = grid.setting_defaults(cfg, "cifar_cnn")
    cfg["experiments"]["batch_sweep"].update(match="epochs", per_setting={"cifar_cnn": {"local_steps": [1000]}})
    validate(cfg, SCHEMA)
    runs = grid.expand_runs(cfg, ["batch_sweep"])
    steps = {(r["setting"], r["b"]): r["local_steps"] for r in runs}
    assert steps[("cifar_cnn", 25)] == 2000 and steps[("cifar_cnn", base["b"])] == 1000
    assert steps[("mnist_fc", base["b"])] == grid.setting_defaults(cfg, "mnist_fc")["local_steps"]
    main = {grid.run_id(r) for r in grid.expand_runs(cfg, ["main"]) if r["setting"] == "cifar_cnn"}
    assert not main & {grid.run_id(r) for r in runs if r["setting"] == "cifar_cnn"}
    cfg["experiments"]["batch_sweep"]["local_steps"] = [0]
    with pytest.raises(ConfigError, match="experiments.batch_sweep.local_steps"):
        validate(cfg, SCHEMA)



def test_an_experiment_can_thin_its_checkpoints():
    """checkpoint_count: fewer checkpoints (spaced as the setting's) under ids of their own; the setting's own
    count changes nothing."""
    cfg = _paper()
    base = grid.setting_defaults(cfg, "mnist_fc")["checkpoints"]
    cfg["experiments"]["heterogeneity"]["checkpoint_count"] = 4
    validate(cfg, SCHEMA)
    runs = [r for r in grid.expand_runs(cfg, ["heterogeneity"]) if r["setting"] == "mnist_fc"]
    assert all(r["checkpoints"] == {"count": 4, "spacing": base["spacing"]} for r in runs)
    rid = grid.run_id(runs[0])
    assert rid.endswith("_ck4") and grid.parse_run_id(rid)["checkpoint_count"] == 4
    assert grid.run_id(grid.parse_run_id(rid)) == rid
    rounds = grid.checkpoint_rounds(runs[0]["local_steps"] // runs[0]["tau"], runs[0]["window"], runs[0]["checkpoints"])
    assert len(rounds) == 4
    cfg["experiments"]["heterogeneity"]["checkpoint_count"] = base["count"]
    same = {grid.run_id(r) for r in grid.expand_runs(cfg, ["heterogeneity"])}
    assert not any("_ck" in r for r in same) and same & {grid.run_id(r) for r in grid.expand_runs(cfg, ["main"])}


RUN = {"K": 8, "tau": 8, "b": 50, "lr": 0.05, "loss": "mse", "local_steps": 20000, "window": 4, "seed": 0}


@pytest.mark.parametrize("extra,suffix", [
    ({}, ""),
    ({"partition": "dirichlet", "alpha": 0.1}, "_dir0.1"),
    ({"momentum": 0.9}, "_mom0.9avg"),  # the default buffer policy, named
    ({"momentum": 0.9, "momentum_buffers": "keep"}, "_mom0.9keep"),
    ({"partition": "dirichlet", "alpha": 1, "momentum": 0.99, "momentum_buffers": "reset"}, "_dir1_mom0.99reset"),
    ({"partition": "dirichlet", "alpha": 0.0123456789, "momentum": 0.5, "momentum_buffers": "average"},
     "_dir0.0123456789_mom0.5avg"),
])
def test_run_ids_name_partition_and_momentum_only_off_the_defaults(extra, suffix):
    import re

    rid = grid.run_id({**RUN, **extra})
    assert rid == "K8_tau8_b50_lr0.05_mse_T20000_W4_s0" + suffix  # existing ids unchanged
    parsed = grid.parse_run_id(rid)
    assert grid.run_id(parsed) == rid and re.fullmatch(grid.RUN_ID_WILDCARD, rid)
    assert parsed == {**RUN, **grid.optional_keys({**RUN, **extra})}  # the optional keys only with their suffix
    assert all(parsed[k] == v for k, v in extra.items())


def test_existing_run_ids_are_unchanged():
    paper = validate(_paper(), SCHEMA)
    ids = {grid.run_id(r) for r in grid.expand_runs(paper, [e for e in paper["experiments"] if e != "heterogeneity"])}
    assert "K8_tau8_b50_lr0.05_mse_T20000_W4_s0" in ids and "K8_tau1_b50_lr0.05_mse_T20000_W4_s0" in ids
    assert not any("_dir" in i or "_mom" in i for i in ids)
    assert all(grid.parse_run_id(i).keys() == RUN.keys() for i in ids)  # the train jobs' parameters as before


def test_heterogeneity_experiment_expands_alpha_and_momentum_axes():
    cfg = _paper()
    cfg["experiments"]["heterogeneity"] = {"settings": ["mnist_fc", "cifar_cnn"], "alpha": [None, 1.0, 0.1],
                                           "momentum": [0, 0.9], "seeds": [0, 1]}
    runs = grid.expand_runs(validate(cfg, SCHEMA), ["heterogeneity"])
    for setting in ("mnist_fc", "cifar_cnn"):
        ids = sorted(grid.run_id(r) for r in runs if r["setting"] == setting)
        assert len(ids) == len(set(ids)) == 12
        assert sum("_dir0.1" in i for i in ids) == sum("_dir1_" in i or i.endswith("_dir1") for i in ids) == 4
        assert sum("_mom0.9avg" in i for i in ids) == 6 and sum("_dir" not in i for i in ids) == 4
    plain = [r for r in runs if "_dir" not in grid.run_id(r) and "_mom" not in grid.run_id(r)]
    assert {grid.run_id(r) for r in plain} <= {grid.run_id(r) for r in grid.expand_runs(validate(_paper(), SCHEMA))}


def test_partition_and_momentum_from_train_and_per_setting():
    cfg = _smoke()
    del cfg["experiments"]["heterogeneity"]  # the smoke config's own partition and momentum axes
    cfg["train"].update(momentum=0.9, momentum_buffers="keep")
    cfg["settings"]["mnist_fc"]["train"].update(partition="dirichlet", alpha=0.3, momentum=0)
    runs = {r["setting"]: grid.run_id(r) for r in grid.expand_runs(validate(cfg, SCHEMA))}
    assert runs["mnist_fc"].endswith("_s1_dir0.3") and runs["cifar_cnn"].endswith("_s0_mom0.9keep")
    cfg["experiments"]["main"]["alpha"] = [None]  # an axis value null: IID, whatever the setting says
    assert not any("_dir" in grid.run_id(r) for r in grid.expand_runs(validate(cfg, SCHEMA)))


def test_restricted_parents_are_one_configuration_of_the_momentum_axis():
    cfg = _smoke()
    cfg["experiments"]["main"]["momentum"] = [0, 0.9]
    parents = grid.main_runs(validate(cfg, SCHEMA), "mnist_fc")
    assert [r["seed"] for r in parents] == [0, 1] and not any("momentum" in r for r in parents)


def test_a_release_part_runs_its_experiments_in_a_tree_of_its_own():
    cfg = yaml.safe_load((REPO / "config.quick.yaml").read_text())
    whole = validate(cfg, SCHEMA)
    assert whole["part"] is None and set(whole["experiments"]) == set(cfg["experiments"])
    # every experiment belongs to exactly one part
    parts = [e for exps in cfg["parts"].values() for e in exps]
    assert sorted(parts) == sorted(cfg["experiments"])
    for part, exps in cfg["parts"].items():
        one = validate({**cfg, "part": part}, SCHEMA)
        assert list(one["experiments"]) == exps and one["results_dir"] == f"{cfg['results_dir']}/{part}"
    with pytest.raises(ConfigError, match=r"part: 'nope' is not a key of `parts` \(defined: \['heterogeneity', 'main', 'sweeps'\]\)"):
        validate({**cfg, "part": "nope"}, SCHEMA)
    with pytest.raises(ConfigError, match="parts.extra: unknown experiment 'tau'"):
        validate({**cfg, "parts": {**cfg["parts"], "extra": ["tau"]}}, SCHEMA)


def test_a_release_part_can_keep_some_settings_of_its_experiments():
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["experiments"]["tau_ablation"]["per_setting"] = {"cifar_cnn": {"tau": [1, 8]}, "mnist_fc": {"tau": [1, 4]}}
    main = validate({**cfg, "part": "mnist_main"}, SCHEMA)
    assert main["experiments"] == {"main": {**cfg["experiments"]["main"], "settings": ["mnist_fc"]}}
    assert main["results_dir"] == f"{cfg['results_dir']}/mnist_main"
    sweeps = validate({**cfg, "part": "mnist_sweeps"}, SCHEMA)
    assert list(sweeps["experiments"]) == ["tau_ablation", "k_sweep", "batch_sweep"]
    assert {r["setting"] for r in grid.expand_runs(sweeps)} == {"mnist_fc"}
    assert sweeps["experiments"]["tau_ablation"]["per_setting"] == {"mnist_fc": {"tau": [1, 4]}}
    # an experiment left with none of the part's settings is dropped
    het = {"experiments": ["main", "heterogeneity"], "settings": ["sst2_transformer"]}
    figures = {**cfg["figures"], "fig1_setting": "sst2_transformer"}  # Fig 1's setting must be one the part runs
    assert list(validate({**cfg, "parts": {"p": het}, "part": "p", "figures": figures}, SCHEMA)["experiments"]) == ["main"]
    with pytest.raises(ConfigError, match=r"parts.p.settings: unknown setting 'mnist' \(defined: \['cifar_cnn'"):
        validate({**cfg, "parts": {"p": {"experiments": ["main"], "settings": ["mnist"]}}}, SCHEMA)
    with pytest.raises(ConfigError, match=r"parts.p.settings: none of \['sst2_transformer'\] is a setting of its"):
        validate({**cfg, "parts": {"p": {"experiments": ["heterogeneity"], "settings": ["sst2_transformer"]}}}, SCHEMA)
    with pytest.raises(ConfigError, match="parts.p"):
        validate({**cfg, "parts": {"p": {"settings": ["mnist_fc"]}}}, SCHEMA)  # no experiments
