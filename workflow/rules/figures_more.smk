# More figures, same pattern as figures.smk (included after it: PAPERMILL, FIG, FIG_NAMES, FIG_N come from
# there): Figs 5-8 (Dom/Bulk-restricted training), X1 (gap-restricted, beyond the paper), 10-12 (tau
# ablation), 13-18 (K and batch sweeps), X2 (quadratic-model theory check), and paper_figures/RESULTS.md.
# One rule per notebook. A notebook drawn several times takes the wildcard `fig` (the output's stem), whose
# constraint lists exactly the figures this config defines, so its parameters are a lookup (no helper
# functions) and editing one notebook reruns only its own jobs.
import re

MORE_NOTEBOOKS = {
    name: os.path.relpath(Path(workflow.basedir) / "notebooks" / f"{name}.ipynb")
    for name in (
        "fig05_08_restricted",
        "fig_gap_restricted",
        "fig10_12_tau",
        "fig13_18_sweep",
        "fig_theory",
    )
}
# The panel titles of every setting: FIG_COMMON["labels"] covers only figures.experiment's settings, and the
# sweeps may use others. Same titles as there, e.g. "FC-tanh / MNIST-5k".
MORE_LABELS = {
    s: f"{FIG_NAMES.get(model_of(s), model_of(s))} / {FIG_NAMES.get(dataset_of(s), dataset_of(s))}-"
    + (f"{FIG_N // 1000}k" if FIG_N % 1000 == 0 else str(FIG_N))
    for s in config["settings"]
}


# Figs 5-8: one notebook, four quantities; restricted runs branch from `main` (common.smk: restricted_outputs).
RESTRICTED_TABLE = "results/tables/restricted.parquet"
RESTRICTED_SETTINGS = config["experiments"].get("main", {}).get("settings", [])
RESTRICTED_FIGS = {
    f"fig{num:02d}_restricted_{quantity}": quantity
    for num, quantity in zip(
        range(5, 9), ("train_loss", "train_acc", "test_loss", "test_acc")
    )
}
RESTRICTED_COMMON = {
    "settings": RESTRICTED_SETTINGS,
    "labels": {s: MORE_LABELS[s] for s in RESTRICTED_SETTINGS},
    "dpi": FIG["dpi"],
}

# Figs 10-18: one figure per (sweep experiment, setting); figure number = the family's first number + the
# setting's position in figures.sweep_settings (the paper's order: MNIST, CIFAR-10, SST-2).
SWEEP_FAMILIES = {
    "tau_ablation": ("tau", 10),
    "k_sweep": ("K", 13),
    "batch_sweep": ("b", 16),
}
SWEEP_UNNUMBERED = [
    f"{s} ({exp})"
    for exp in SWEEP_FAMILIES
    for s in config["experiments"].get(exp, {}).get("settings", [])
    if s not in FIG["sweep_settings"]
]
if SWEEP_UNNUMBERED:
    raise WorkflowError(
        f"figures.sweep_settings: {', '.join(SWEEP_UNNUMBERED)} has no figure number "
        f"(listed: {FIG['sweep_settings']}); add the setting to the list"
    )
SWEEP_FIGS = {
    f"fig{first + FIG['sweep_settings'].index(s)}_{exp}_{s}": {
        "experiment": exp,
        "table": f"results/tables/{exp}_geometry.parquet",
        "parameters": json.dumps(
            {
                "settings": [s],
                "labels": {s: MORE_LABELS[s]},
                "dpi": FIG["dpi"],
                "setting": s,
                "figure": first + FIG["sweep_settings"].index(s),
                "axis": axis,
            },
            sort_keys=True,
        ),
    }
    for exp, (axis, first) in SWEEP_FAMILIES.items()
    if exp in config["experiments"]
    for s in config["experiments"][exp]["settings"]
}
# Wildcard constraints matching exactly these stems ("(?!)": a regex that never matches, for none).
FIG_RE = {
    family: "|".join(re.escape(f) for f in sorted(stems)) or "(?!)"
    for family, stems in (
        ("restricted", RESTRICTED_FIGS),
        (
            "tau",
            [f for f, v in SWEEP_FIGS.items() if v["experiment"] == "tau_ablation"],
        ),
        (
            "sweep",
            [f for f, v in SWEEP_FIGS.items() if v["experiment"] != "tau_ablation"],
        ),
    )
}

# RESULTS.md: every table this config has (`sharpgaps summary` skips the sections of absent ones).
SUMMARY_TABLES = {
    exp: f"results/tables/{exp}_geometry.parquet"
    for exp in ("main", *SWEEP_FAMILIES)
    if exp in config["experiments"]
}
if "main" in config["experiments"]:
    SUMMARY_TABLES["restricted"] = RESTRICTED_TABLE
SUMMARY_TABLES["theory"] = theory_table()

# `all` builds a figure only when the config has the experiment behind it (the theory check always exists).
MORE_FIGURE_TARGETS = (
    (
        [f"paper_figures/{f}.pdf" for f in RESTRICTED_FIGS]
        + ["paper_figures/figX1_gap_restricted.pdf"]
        if "main" in config["experiments"]
        else []
    )
    + [f"paper_figures/{f}.pdf" for f in SWEEP_FIGS]
    + ["paper_figures/figX2_theory.pdf"]
)


rule fig05_08_restricted:
    """Figs 5-8: train loss / train accuracy / test loss / test accuracy of Local SGD vs Dom vs Bulk."""
    input:
        notebook=MORE_NOTEBOOKS["fig05_08_restricted"],
        table=RESTRICTED_TABLE,
    output:
        pdf="paper_figures/{fig}.pdf",
        png=report(
            "paper_figures/{fig}.png",
            caption="../report/fig05_08_restricted.rst",
            category="Figures",
            labels={"figure": "{fig}", "shows": "Dom/Bulk-restricted training"},
        ),
        csv=report(
            "paper_figures/{fig}.csv",
            caption="../report/fig05_08_restricted.rst",
            category="Figure data",
            labels={"figure": "{fig}", "shows": "Dom/Bulk-restricted training"},
        ),
        notebook="results/notebooks/{fig}.ipynb",
    log:
        "results/logs/figures/{fig}.log",
    benchmark:
        "results/benchmarks/figures/{fig}.tsv"
    wildcard_constraints:
        fig=FIG_RE["restricted"],
    localrule: True
    conda:
        ENV
    params:
        parameters=lambda wc: json.dumps(
            {**RESTRICTED_COMMON, "quantity": RESTRICTED_FIGS[wc.fig]}, sort_keys=True
        ),
    shell:
        PAPERMILL


rule figX1_gap_restricted:
    """Fig X1 (beyond the paper): Hessian vs worker-gap restricted training, and what each refresh costs."""
    input:
        notebook=MORE_NOTEBOOKS["fig_gap_restricted"],
        table=RESTRICTED_TABLE,
    output:
        pdf="paper_figures/figX1_gap_restricted.pdf",
        png=report(
            "paper_figures/figX1_gap_restricted.png",
            caption="../report/figX1_gap_restricted.rst",
            category="Figures",
            labels={"figure": "Fig X1", "shows": "gap-restricted training"},
        ),
        csv=report(
            "paper_figures/figX1_gap_restricted.csv",
            caption="../report/figX1_gap_restricted.rst",
            category="Figure data",
            labels={"figure": "Fig X1", "shows": "gap-restricted training"},
        ),
        notebook="results/notebooks/figX1_gap_restricted.ipynb",
    log:
        "results/logs/figures/figX1_gap_restricted.log",
    benchmark:
        "results/benchmarks/figures/figX1_gap_restricted.tsv"
    localrule: True
    conda:
        ENV
    params:
        parameters=json.dumps(RESTRICTED_COMMON, sort_keys=True),
    shell:
        PAPERMILL


rule fig10_12_tau:
    """Figs 10-12: removal fraction and chi_k over training for each tau (one figure per setting)."""
    input:
        notebook=MORE_NOTEBOOKS["fig10_12_tau"],
        table="results/tables/tau_ablation_geometry.parquet",
    output:
        pdf="paper_figures/{fig}.pdf",
        png=report(
            "paper_figures/{fig}.png",
            caption="../report/fig10_12_tau.rst",
            category="Figures",
            labels={"figure": "{fig}", "shows": "tau ablation"},
        ),
        csv=report(
            "paper_figures/{fig}.csv",
            caption="../report/fig10_12_tau.rst",
            category="Figure data",
            labels={"figure": "{fig}", "shows": "tau ablation"},
        ),
        notebook="results/notebooks/{fig}.ipynb",
    log:
        "results/logs/figures/{fig}.log",
    benchmark:
        "results/benchmarks/figures/{fig}.tsv"
    wildcard_constraints:
        fig=FIG_RE["tau"],
    localrule: True
    conda:
        ENV
    params:
        parameters=lambda wc: SWEEP_FIGS[wc.fig]["parameters"],
    shell:
        PAPERMILL


rule fig13_18_sweep:
    """Figs 13-18: removal fraction over training per K (k_sweep) or per b (batch_sweep), and at the end vs the value."""
    input:
        notebook=MORE_NOTEBOOKS["fig13_18_sweep"],
        table=lambda wc: SWEEP_FIGS[wc.fig]["table"],
    output:
        pdf="paper_figures/{fig}.pdf",
        png=report(
            "paper_figures/{fig}.png",
            caption="../report/fig13_18_sweep.rst",
            category="Figures",
            labels={"figure": "{fig}", "shows": "K / batch-size sweep"},
        ),
        csv=report(
            "paper_figures/{fig}.csv",
            caption="../report/fig13_18_sweep.rst",
            category="Figure data",
            labels={"figure": "{fig}", "shows": "K / batch-size sweep"},
        ),
        notebook="results/notebooks/{fig}.ipynb",
    log:
        "results/logs/figures/{fig}.log",
    benchmark:
        "results/benchmarks/figures/{fig}.tsv"
    wildcard_constraints:
        fig=FIG_RE["sweep"],
    localrule: True
    conda:
        ENV
    params:
        parameters=lambda wc: SWEEP_FIGS[wc.fig]["parameters"],
    shell:
        PAPERMILL


rule figX2_theory:
    """Fig X2 (beyond the paper): quadratic-model gap variance, measured vs closed form, per eigendirection and tau."""
    input:
        notebook=MORE_NOTEBOOKS["fig_theory"],
        table=theory_table(),
    output:
        pdf="paper_figures/figX2_theory.pdf",
        png=report(
            "paper_figures/figX2_theory.png",
            caption="../report/figX2_theory.rst",
            category="Figures",
            labels={"figure": "Fig X2", "shows": "gap covariance theory check"},
        ),
        csv=report(
            "paper_figures/figX2_theory.csv",
            caption="../report/figX2_theory.rst",
            category="Figure data",
            labels={"figure": "Fig X2", "shows": "gap covariance theory check"},
        ),
        notebook="results/notebooks/figX2_theory.ipynb",
    log:
        "results/logs/figures/figX2_theory.log",
    benchmark:
        "results/benchmarks/figures/figX2_theory.tsv"
    localrule: True
    conda:
        ENV
    params:
        parameters=json.dumps({"dpi": FIG["dpi"]}, sort_keys=True),
    shell:
        PAPERMILL


rule results_summary:
    """paper_figures/RESULTS.md: headline numbers and each figure family's claim next to the measurement."""
    input:
        **SUMMARY_TABLES,
    output:
        report(
            "paper_figures/RESULTS.md",
            caption="../report/results_summary.rst",
            category="Results",
            labels={"figure": "RESULTS.md", "shows": "headline numbers"},
        ),
    log:
        "results/logs/figures/results_summary.log",
    localrule: True
    conda:
        ENV
    params:
        title=FIG["title"],
        tables=lambda wc, input: " ".join(
            f"--table {name}={path}" for name, path in input.items()
        ),
    shell:
        "python -m sharpgaps.cli summary --title {params.title:q} {params.tables} --out {output:q} > {log} 2>&1"
