# Validation, paths and the experiment grid. Rules stay thin: all logic lives in the sharpgaps package.
from types import SimpleNamespace
import json
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

from sharpgaps.pipeline import config as sg_config
from sharpgaps.core import grid, specs

min_version("9.0")

# The repository root, whichever Snakefile was started: ./Snakefile, or workflow/Snakefile (the catalog's
# entry point), whose workflow.basedir is workflow/.
REPO = Path(workflow.current_basedir).parents[1]

# Jobs run `python -m sharpgaps`; putting src/ on PYTHONPATH makes that work in the project's
# venv, in the conda env of envs/ (which does not install the package) and on cluster nodes.
# (Braces doubled twice: once for the f-string, once for Snakemake's shell formatting.)
shell.prefix(
    f"set -euo pipefail; export PYTHONPATH={REPO / 'src'}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
)
ENV = "../../envs/sharpgaps.yaml"

# `--cores 0` (e.g. `make all CORES=0`) would wait at "Select jobs to execute" for ever.
if workflow.resource_settings.cores == 0 and not workflow.remote_exec:
    raise WorkflowError(
        "--cores 0: no job can ever start with 0 cores, Snakemake would wait for ever. "
        "Give at least 1 (e.g. --cores 2, or make all CORES=2)."
    )

try:
    config.update(
        sg_config.validate(
            config,
            REPO / "workflow/schemas/config.schema.yaml",
            # --config values: nested ones arrive as strings, read here as the schema's types
            overrides=workflow.config_settings.config,
        )
    )
except sg_config.ConfigError as exc:
    raise WorkflowError(str(exc))


wildcard_constraints:
    setting="[A-Za-z0-9_]+",
    dataset="mnist|cifar10|sst2",
    run=grid.RUN_ID_WILDCARD,


# Every path the workflow writes lives under R: one tree per scale (config `results_dir`), so that a smoke, quick and
# paper run alternate in one checkout without invalidating each other's files.
R = config["results_dir"].rstrip("/")

# Rules that benefit from a GPU ask for one when the config says device: cuda (profiles may add more).
GPU = 1 if config["device"] == "cuda" else 0

# Rough per-model footprints for the schedulers (profiles may override per rule).
MEM_MB = {"fc_tanh": 2000, "cnn_relu": 4000, "transformer": 12000}


def dataset_of(setting):
    return config["settings"][setting]["dataset"]


def model_of(setting):
    return config["settings"][setting]["model"]


def subset_tag(dataset):
    """Every subset parameter appears in the subset's path."""
    d = config["datasets"][dataset]
    cap = d["test_cap"] if d["test_cap"] is not None else "all"
    tag = f"n{config['subset']['n_train']}_s{config['subset']['seed']}_test{cap}"
    if dataset == "sst2":
        tag += f"_len{d['max_len']}_min{d['min_freq']}"
    return tag


def subset_path(dataset):
    return f"{R}/data/{dataset}/subset_{subset_tag(dataset)}.pt"


def subset_args(wildcards):
    if wildcards.tag != subset_tag(wildcards.dataset):
        raise WorkflowError(
            f"subset '{wildcards.tag}' does not match the config ({subset_tag(wildcards.dataset)})"
        )
    d = config["datasets"][wildcards.dataset]
    args = f"--n-train {config['subset']['n_train']} --seed {config['subset']['seed']}"
    args += f" --max-len {d['max_len']} --min-freq {d['min_freq']}"
    return args + (f" --test-cap {d['test_cap']}" if d["test_cap"] is not None else "")


def run_dir(run):
    return f"{R}/runs/{run['setting']}/{grid.run_id(run)}"


def run_description(wildcards):
    """The JSON the train CLI receives: run parameters parsed from the path + the setting's fixed parts."""
    s = config["settings"][wildcards.setting]
    run = grid.parse_run_id(wildcards.run)
    run.update(
        setting=wildcards.setting,
        model=s["model"],
        dataset=s["dataset"],
        arch=s.get("arch", {}),
    )
    run["checkpoints"] = grid.run_checkpoints(
        grid.setting_defaults(config, wildcards.setting)["checkpoints"], run
    )
    return json.dumps(run, sort_keys=True)


def train_launcher(wildcards=None):
    """The command that runs `train`: the simulated engine, or torchrun processes (config `engine`)."""
    if config["engine"] == "distributed":
        # "--": without it torchrun's parser takes --run for an abbreviation of its --run-path
        nproc = config["nproc"]
        return f"python -m torch.distributed.run --standalone --nproc-per-node {nproc} -m sharpgaps.pipeline.distributed --"
    return "python -m sharpgaps"


def train_threads():
    """Cores of a train job: `threads` torch threads in each of the `nproc` distributed processes."""
    procs = config["nproc"] if config["engine"] == "distributed" else 1
    return config["threads"] * procs


def all_run_outputs():
    return [f"{run_dir(r)}/run.json" for r in grid.expand_runs(config)]


def geometry_tag(setting):
    params = specs.geometry_params(config, setting)
    k = sg_config.N_CLASSES[dataset_of(setting)]
    return specs.GeometrySpec.from_config(params, k).tag()


def geometry_json(wildcards):
    if wildcards.gtag != geometry_tag(wildcards.setting):
        raise WorkflowError(
            f"geometry '{wildcards.gtag}' does not match the config ({geometry_tag(wildcards.setting)})"
        )
    return json.dumps(specs.geometry_params(config, wildcards.setting), sort_keys=True)


def geometry_work(wildcards):
    """Per-checkpoint cache dir; keyed by every geometry parameter so a change never reuses stale rows."""
    digest = grid.digest(geometry_json(wildcards))
    return f"{R}/work/geometry/{wildcards.setting}/{wildcards.run}/{digest}"


def geometry_path(run):
    return f"{run_dir(run)}/geometry_{geometry_tag(run['setting'])}.parquet"


def experiment_geometry(wildcards):
    return [geometry_path(r) for r in grid.expand_runs(config, [wildcards.experiment])]


def theory_tag():
    return grid.digest(json.dumps(config["theory"], sort_keys=True))


def theory_json(tag):
    if tag != theory_tag():
        raise WorkflowError(
            f"theory table '{tag}' does not match the config ({theory_tag()})"
        )
    return json.dumps(config["theory"], sort_keys=True)


def theory_table():
    """The quadratic-model check needs no run; of a release's parts, the one with `main` makes it (one copy)."""
    if config["part"] and "main" not in config["experiments"]:
        return []
    return [f"{R}/tables/theory_{theory_tag()}.parquet"]


def restricted_params(setting):
    """The setting's `restricted` parameters (defaults: sharpgaps.core.specs)."""
    return specs.restricted_params(config, setting)


def restricted_tag(setting):
    p = dict(restricted_params(setting))
    del p["modes"]  # one output per mode: adding a mode must not rename the others
    branch = specs.BranchSpec.from_config(p).label()
    return f"br{branch}_{grid.digest(json.dumps(p, sort_keys=True))}"


def run_geometry(wildcards):
    """The run's own geometry table."""
    return f"{R}/runs/{wildcards.setting}/{wildcards.run}/geometry_{geometry_tag(wildcards.setting)}.parquet"


def parent_geometry(wildcards):
    """The geometry tables whose chi_k decides the branch point (specs.BranchSpec): the parent run's, or with
    branch_scope "setting" those of every seed of its configuration."""
    tag = geometry_tag(wildcards.setting)
    own = [run_geometry(wildcards)]
    if (
        specs.BranchSpec.from_config(restricted_params(wildcards.setting)).branch_scope
        == "seed"
    ):
        return own
    parent = grid.parse_run_id(wildcards.run)
    siblings = [
        r
        for r in grid.main_runs(config, wildcards.setting)
        if grid.run_id({**r, "seed": parent["seed"]}) == wildcards.run
    ]  # all but the seed
    return [
        f"{R}/runs/{wildcards.setting}/{grid.run_id(r)}/geometry_{tag}.parquet"
        for r in siblings
    ] or own


def restricted_json(wildcards):
    if wildcards.rtag != restricted_tag(wildcards.setting):
        raise WorkflowError(
            f"restricted '{wildcards.rtag}' does not match the config ({restricted_tag(wildcards.setting)})"
        )
    return json.dumps(restricted_params(wildcards.setting), sort_keys=True)


def restricted_outputs():
    """Every mode of every seed of each setting's first `main` configuration."""
    if "main" not in config["experiments"]:
        return []
    out = []
    for setting in config["experiments"]["main"]["settings"]:
        modes = restricted_params(setting)["modes"]
        for parent in grid.main_runs(config, setting):
            base = f"{run_dir(parent)}/restricted_{restricted_tag(setting)}"
            out += [f"{base}/{mode}.parquet" for mode in modes]
    return out


def restricted_table():
    """The restricted runs branch from `main`: without that experiment there is nothing to collect."""
    return [f"{R}/tables/restricted.parquet"] if restricted_outputs() else []


# Cheap estimators of the sharp subspace (workflow/rules/estimators.smk).
def estimators_json(setting):
    return json.dumps(specs.estimator_params(config, setting), sort_keys=True)


def estimators_tag(setting):
    """Every `estimators` key of the setting (as set; defaults: sharpgaps.core.specs.EstimatorSpec) in the table's path."""
    return grid.digest(estimators_json(setting))


def estimators_params(wildcards):
    if wildcards.etag != estimators_tag(wildcards.setting):
        raise WorkflowError(
            f"estimators '{wildcards.etag}' does not match the config ({estimators_tag(wildcards.setting)})"
        )
    return estimators_json(wildcards.setting)


def estimators_outputs(experiment="main"):
    if experiment not in config["experiments"]:
        return []
    runs = (
        grid.main_runs
        if experiment == "main"
        else lambda cfg, s: [
            r for r in grid.expand_runs(cfg, [experiment]) if r["setting"] == s
        ]
    )
    return [
        f"{run_dir(r)}/estimators_{geometry_tag(s)}_{estimators_tag(s)}.parquet"
        for s in config["experiments"][experiment]["settings"]
        for r in runs(config, s)
    ]


def estimators_table(experiment="main"):
    return (
        [f"{R}/tables/{experiment}_estimators.parquet"]
        if estimators_outputs(experiment)
        else []
    )


# The heterogeneity family (Fig X5, RESULTS): one tidy table of its cells from its geometry, mechanism and
# estimator tables (sharpgaps.report.heterogeneity).
def heterogeneity_inputs():
    if (
        "heterogeneity" not in config["experiments"]
        or "heterogeneity" not in mechanism_experiments()
    ):
        return {}
    return {
        "geometry": f"{R}/tables/heterogeneity_geometry.parquet",
        "mechanism": f"{R}/tables/mechanism.parquet",
        **{"estimators": t for t in estimators_table("heterogeneity")},
    }


def heterogeneity_table():
    return [f"{R}/tables/heterogeneity.parquet"] if heterogeneity_inputs() else []


def mechanism_params(setting):
    return specs.mechanism_params(config, setting)


def mechanism_experiments():
    """The experiments measured: `mechanism.experiments` (default: sharpgaps.core.specs) that the config has."""
    wanted = config["mechanism"].get(
        "experiments", specs.config_default("mechanism", "experiments")
    )
    return [exp for exp in wanted if exp in config["experiments"]]


def mechanism_tag(setting):
    """Every mechanism and geometry parameter of the setting in the path."""
    blob = json.dumps(
        {
            "mechanism": mechanism_params(setting),
            "geometry": specs.geometry_params(config, setting),
        },
        sort_keys=True,
    )
    return grid.digest(blob)


def mechanism_path(run):
    return f"{run_dir(run)}/mechanism_{mechanism_tag(run['setting'])}.parquet"


def mechanism_check(wildcards):
    if wildcards.mtag != mechanism_tag(wildcards.setting):
        raise WorkflowError(
            f"mechanism '{wildcards.mtag}' does not match the config ({mechanism_tag(wildcards.setting)})"
        )
    return json.dumps(mechanism_params(wildcards.setting), sort_keys=True)


def mechanism_geometry_work(wildcards):
    """The geometry job's cache dir (its eigenvectors), named as rule geometry names it."""
    gtag = geometry_tag(wildcards.setting)
    return geometry_work(
        SimpleNamespace(setting=wildcards.setting, run=wildcards.run, gtag=gtag)
    )


def mechanism_tables():
    """experiment -> its runs' mechanism tables (a run shared by two experiments is listed under both)."""
    return {
        exp: [mechanism_path(r) for r in grid.expand_runs(config, [exp])]
        for exp in mechanism_experiments()
    }


def mechanism_table():
    return [f"{R}/tables/mechanism.parquet"] if mechanism_experiments() else []
