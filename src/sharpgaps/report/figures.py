"""Which figures a config draws: the figure registry (workflow/figures.yaml) expanded into output stems, each
with the table its notebook reads, the notebook's parameters and the report's labels.

Plain config logic, no Snakemake: workflow/rules/figures.smk generates its rules from :func:`expand`, and the
config validation numbers the sweep figures with :data:`SWEEPS`.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from ..core.specs import geometry_params, restricted_params

# The paper's sweep figures: experiment -> (the run parameter it sweeps, its first figure's number). Figure
# first + i shows the i-th setting of config figures.sweep_settings (the paper's order: MNIST, CIFAR-10, SST-2).
SWEEPS = {"tau_ablation": ("tau", 10), "k_sweep": ("K", 13), "batch_sweep": ("b", 16)}

# Model and dataset names as the paper writes them, for panel titles.
NAMES = {"fc_tanh": "FC-tanh", "cnn_relu": "CNN-ReLU", "transformer": "Transformer",
         "mnist": "MNIST", "cifar10": "CIFAR-10", "sst2": "SST-2"}


class Parameters(dict):
    """A notebook's parameters. As a dict they are what the caption templates read
    (snakemake.params.parameters.<name>); as a string, the JSON that papermill's -y option reads."""

    def __str__(self) -> str:
        return json.dumps(self, sort_keys=True)


def load_registry(path: str | Path) -> dict:
    return yaml.safe_load(Path(path).read_text())


def panel_label(config: dict, setting: str) -> str:
    """A setting's panel title, e.g. 'FC-tanh / MNIST-5k' (model / dataset and training-subset size)."""
    s, n = config["settings"][setting], config["subset"]["n_train"]
    size = f"{n // 1000}k" if n % 1000 == 0 else str(n)
    return f"{NAMES.get(s['model'], s['model'])} / {NAMES.get(s['dataset'], s['dataset'])}-{size}"


def hessian_note(config: dict, setting: str, section: str) -> str:
    """Which examples V_k is computed on (a figure that uses V_k says so): the `geometry` or `restricted`
    section's hessian_examples of the setting."""
    params = (restricted_params if section == "restricted" else geometry_params)(config, setting)
    n, total = params.get("hessian_examples"), config["subset"]["n_train"]
    return f"Hessian on all {total:,} examples" if n is None or n >= total else f"Hessian on {n:,} of {total:,} examples"


def panels(config: dict, settings: list[str], hessian: str | None = None) -> dict:
    """The parameters that order and title a notebook's panels; ``hessian``: the config section whose Hessian
    sample the figure's V_k comes from (its panel titles then name it)."""
    labels = {s: panel_label(config, s) + (f"\n{hessian_note(config, s, hessian)}" if hessian else "")
              for s in settings}
    return {"settings": list(settings), "labels": labels}


def sweep_figures(config: dict) -> dict[str, tuple[str, dict]]:
    """stem -> (experiment, parameters) of every sweep figure the config has, e.g. fig11_tau_ablation_cifar_cnn."""
    order = config["figures"]["sweep_settings"]
    out = {}
    for exp, (axis, first) in SWEEPS.items():
        for s in config["experiments"].get(exp, {}).get("settings", []):
            number = first + order.index(s)
            out[f"fig{number}_{exp}_{s}"] = (exp, {**panels(config, [s], "geometry"), "setting": s, "figure": number, "axis": axis,
                                                   "match": config["experiments"][exp].get("match", "none")})
    return out


def _figures_of(row: dict, config: dict, tables: dict) -> dict[str, tuple[str, dict]]:
    """stem -> (table, the figure's own parameters) of one registry row; none when the config lacks its table."""
    experiments = config["experiments"]
    if row["table"] == "sweeps":
        return {stem: (tables["geometry"].format(experiment=exp), params)
                for stem, (exp, params) in sweep_figures(config).items()}
    # the experiment whose settings are the panels (restricted runs branch from `main`; theory has no panels)
    exp = {"geometry": config["figures"]["experiment"], "restricted": "main", "theory": None,
           "estimators": "main", "mechanism": "main", "heterogeneity": "heterogeneity"}[row["table"]]
    table = tables["geometry"].format(experiment=exp) if row["table"] == "geometry" else tables.get(row["table"])
    if table is None:
        return {}
    hessian = "restricted" if row["table"] == "restricted" else "geometry"  # where the figure's V_k comes from
    out = {}
    for stem, own in row["figures"].items():
        own = dict(own)
        shown_exp = own.pop("experiment", exp)  # a figure may show another experiment than its family's
        if shown_exp is None:
            out[stem] = (table, own)
        elif shown_exp in experiments:
            out[stem] = (table, {**panels(config, experiments[shown_exp]["settings"], hessian), **own})
    return out


def expand(registry: dict, config: dict, tables: dict) -> dict[str, dict[str, dict]]:
    """family -> {stem: {"table", "parameters", "labels"}} for every figure this config draws.

    ``tables``: where the workflow writes the tables: "geometry" (a pattern with {experiment}), "restricted"
    (None without restricted runs) and "theory".
    """
    out = {}
    for family, row in registry.items():
        fig = config["figures"]
        common = {"dpi": fig["dpi"], **{name: fig[key] for name, key in row["keys"].items()}}
        out[family] = {}
        for stem, (table, own) in _figures_of(row, config, tables).items():
            parameters = Parameters(sorted({**common, **own}.items()))
            labels = {name: text.format(stem=stem, **parameters) for name, text in row["labels"].items()}
            out[family][stem] = {"table": table, "parameters": parameters, "labels": labels}
    return out
