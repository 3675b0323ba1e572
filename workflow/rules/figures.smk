# Paper figures: one papermill-run notebook per figure family (notebooks/), reading only the
# experiment's geometry table. One rule per figure, so editing one notebook (or one figure's
# config key) reruns exactly that figure's job.
import os

FIGURES = [
    "fig01_cosines",
    "fig02_removal",
    "fig03_spectrum",
    "fig04_alignment",
    "fig09_removal_raw",
]

# Papermill runs the notebook in the `python3` kernel of the environment papermill itself runs in
# (JUPYTER_PREFER_ENV_PATH: that env's kernelspec wins over one in the user's ~/.local). Paths go in
# raw (-r); the figure's config keys arrive as one JSON document (-y; JSON is YAML).
PAPERMILL = (
    "export MPLBACKEND=Agg JUPYTER_PREFER_ENV_PATH=1 PYDEVD_DISABLE_FILE_VALIDATION=1; "
    "python -m papermill {input.notebook:q} {output.notebook:q} --kernel python3 --no-progress-bar --log-output "
    "-r table {input.table:q} -r out_pdf {output.pdf:q} -r out_png {output.png:q} -r out_csv {output.csv:q} "
    "-y {params.parameters:q} > {log} 2>&1"
)

# Parse-time constants, no functions (helpers belong in common.smk; these are used here only).
# Notebooks are workflow sources: found next to the Snakefile, named relative to the workdir (the
# repository root in normal use, so the recorded input paths survive moving the checkout).
FIG_NOTEBOOKS = {
    name: os.path.relpath(Path(workflow.basedir) / "notebooks" / f"{name}.ipynb")
    for name in FIGURES
}
FIG = config["figures"]
FIG_SETTINGS = config["experiments"].get(FIG["experiment"], {}).get("settings", [])
FIG_TABLE = f"results/tables/{FIG['experiment']}_geometry.parquet"
# `all` builds the figures only when the config has their experiment (as restricted_outputs does).
FIGURE_TARGETS = (
    [f"paper_figures/{name}.pdf" for name in FIGURES]
    if FIG["experiment"] in config["experiments"]
    else []
)
if FIG_SETTINGS and FIG["fig1_setting"] not in FIG_SETTINGS:
    raise WorkflowError(
        f"figures.fig1_setting: '{FIG['fig1_setting']}' is not a setting of experiment "
        f"'{FIG['experiment']}' ({FIG_SETTINGS})"
    )

# Parameters every notebook gets: panel order and titles such as "FC-tanh / MNIST-5k".
FIG_NAMES = {
    "fc_tanh": "FC-tanh",
    "cnn_relu": "CNN-ReLU",
    "transformer": "Transformer",
    "mnist": "MNIST",
    "cifar10": "CIFAR-10",
    "sst2": "SST-2",
}
FIG_N = config["subset"]["n_train"]
FIG_COMMON = {
    "settings": FIG_SETTINGS,
    "labels": {
        s: f"{FIG_NAMES.get(model_of(s), model_of(s))} / {FIG_NAMES.get(dataset_of(s), dataset_of(s))}-"
        + (f"{FIG_N // 1000}k" if FIG_N % 1000 == 0 else str(FIG_N))
        for s in FIG_SETTINGS
    },
    "dpi": FIG["dpi"],
}


rule fig01_cosines:
    """Fig 1: squared cosines gap directions x Hessian eigenvectors, and removal vs m (one checkpoint)."""
    input:
        notebook=FIG_NOTEBOOKS["fig01_cosines"],
        table=FIG_TABLE,
    output:
        pdf="paper_figures/fig01_cosines.pdf",
        png=report(
            "paper_figures/fig01_cosines.png",
            caption="../report/fig01_cosines.rst",
            category="Figures",
            labels={"figure": "Fig 1", "shows": "gap vs Hessian directions"},
        ),
        csv=report(
            "paper_figures/fig01_cosines.csv",
            caption="../report/fig01_cosines.rst",
            category="Figure data",
            labels={"figure": "Fig 1", "shows": "gap vs Hessian directions"},
        ),
        notebook="results/notebooks/fig01_cosines.ipynb",
    log:
        "results/logs/figures/fig01_cosines.log",
    benchmark:
        "results/benchmarks/figures/fig01_cosines.tsv"
    localrule: True
    conda:
        ENV
    params:
        parameters=json.dumps(
            {
                **FIG_COMMON,
                "setting": FIG["fig1_setting"],
                "checkpoint": FIG["fig1_checkpoint"],
            },
            sort_keys=True,
        ),
    shell:
        PAPERMILL


rule fig02_removal:
    """Fig 2: smoothed removal fraction over training, per setting, with oracle and random baselines."""
    input:
        notebook=FIG_NOTEBOOKS["fig02_removal"],
        table=FIG_TABLE,
    output:
        pdf="paper_figures/fig02_removal.pdf",
        png=report(
            "paper_figures/fig02_removal.png",
            caption="../report/fig02_removal.rst",
            category="Figures",
            labels={"figure": "Fig 2", "shows": "removal fraction (smoothed)"},
        ),
        csv=report(
            "paper_figures/fig02_removal.csv",
            caption="../report/fig02_removal.rst",
            category="Figure data",
            labels={"figure": "Fig 2", "shows": "removal fraction (smoothed)"},
        ),
        notebook="results/notebooks/fig02_removal.ipynb",
    log:
        "results/logs/figures/fig02_removal.log",
    benchmark:
        "results/benchmarks/figures/fig02_removal.tsv"
    localrule: True
    conda:
        ENV
    params:
        parameters=json.dumps(
            {
                **FIG_COMMON,
                "smooth_window": FIG["smooth_window"],
                "m_show": FIG["m_show"],
                "xscale": FIG["xscale"],
            },
            sort_keys=True,
        ),
    shell:
        PAPERMILL


rule fig03_spectrum:
    """Fig 3: top Hessian eigenvalues over training, per setting, with 2/lr."""
    input:
        notebook=FIG_NOTEBOOKS["fig03_spectrum"],
        table=FIG_TABLE,
    output:
        pdf="paper_figures/fig03_spectrum.pdf",
        png=report(
            "paper_figures/fig03_spectrum.png",
            caption="../report/fig03_spectrum.rst",
            category="Figures",
            labels={"figure": "Fig 3", "shows": "Hessian spectrum"},
        ),
        csv=report(
            "paper_figures/fig03_spectrum.csv",
            caption="../report/fig03_spectrum.rst",
            category="Figure data",
            labels={"figure": "Fig 3", "shows": "Hessian spectrum"},
        ),
        notebook="results/notebooks/fig03_spectrum.ipynb",
    log:
        "results/logs/figures/fig03_spectrum.log",
    benchmark:
        "results/benchmarks/figures/fig03_spectrum.tsv"
    localrule: True
    conda:
        ENV
    params:
        parameters=json.dumps({**FIG_COMMON, "xscale": FIG["xscale"]}, sort_keys=True),
    shell:
        PAPERMILL


rule fig04_alignment:
    """Fig 4: gradient alignment chi_k over training, per setting."""
    input:
        notebook=FIG_NOTEBOOKS["fig04_alignment"],
        table=FIG_TABLE,
    output:
        pdf="paper_figures/fig04_alignment.pdf",
        png=report(
            "paper_figures/fig04_alignment.png",
            caption="../report/fig04_alignment.rst",
            category="Figures",
            labels={"figure": "Fig 4", "shows": "gradient alignment"},
        ),
        csv=report(
            "paper_figures/fig04_alignment.csv",
            caption="../report/fig04_alignment.rst",
            category="Figure data",
            labels={"figure": "Fig 4", "shows": "gradient alignment"},
        ),
        notebook="results/notebooks/fig04_alignment.ipynb",
    log:
        "results/logs/figures/fig04_alignment.log",
    benchmark:
        "results/benchmarks/figures/fig04_alignment.tsv"
    localrule: True
    conda:
        ENV
    params:
        parameters=json.dumps({**FIG_COMMON, "xscale": FIG["xscale"]}, sort_keys=True),
    shell:
        PAPERMILL


rule fig09_removal_raw:
    """Fig 9: raw (per-checkpoint) removal fraction over training and versus m at chosen checkpoints."""
    input:
        notebook=FIG_NOTEBOOKS["fig09_removal_raw"],
        table=FIG_TABLE,
    output:
        pdf="paper_figures/fig09_removal_raw.pdf",
        png=report(
            "paper_figures/fig09_removal_raw.png",
            caption="../report/fig09_removal_raw.rst",
            category="Figures",
            labels={"figure": "Fig 9", "shows": "removal fraction (raw)"},
        ),
        csv=report(
            "paper_figures/fig09_removal_raw.csv",
            caption="../report/fig09_removal_raw.rst",
            category="Figure data",
            labels={"figure": "Fig 9", "shows": "removal fraction (raw)"},
        ),
        notebook="results/notebooks/fig09_removal_raw.ipynb",
    log:
        "results/logs/figures/fig09_removal_raw.log",
    benchmark:
        "results/benchmarks/figures/fig09_removal_raw.tsv"
    localrule: True
    conda:
        ENV
    params:
        parameters=json.dumps(
            {
                **FIG_COMMON,
                "m_show": FIG["m_show"],
                "checkpoints": FIG["fig9_checkpoints"],
                "metric": FIG["fig9_metric"],
                "xscale": FIG["xscale"],
            },
            sort_keys=True,
        ),
    shell:
        PAPERMILL
