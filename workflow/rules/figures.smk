# Paper figures: one rule per family of the figure registry (workflow/figures.yaml), each running its notebook
# with papermill once per figure (wildcard `fig`, the output stem), and RESULTS.md. Everything lands in
# figures.dir, one directory per scale. Which figures a config draws, from which table and with which
# parameters, is sharpgaps.report.figures' business; this file only wires it to Snakemake.
import os
import re

from sharpgaps.report import figures as sg_figures

FIGURE_DIR = config["figures"]["dir"]
REGISTRY = sg_figures.load_registry(REPO / "workflow/figures.yaml")
# family -> {stem: {"table", "parameters", "labels"}}; FIGURE: the same by stem alone (stems are unique).
FIGURES = sg_figures.expand(
    REGISTRY,
    config,
    tables={
        "geometry": f"{R}/tables/{{experiment}}_geometry.parquet",
        "restricted": next(iter(restricted_table()), None),
        "theory": next(iter(theory_table()), None),
        "estimators": next(iter(estimators_table()), None),
        "mechanism": next(iter(mechanism_table()), None),
        "heterogeneity": next(iter(heterogeneity_table()), None),
    },
)
FIGURE = {stem: fig for figs in FIGURES.values() for stem, fig in figs.items()}
# Notebooks and captions are workflow sources: found next to the Snakefile, named relative to the workdir
# (the repository root in normal use, so recorded input paths survive moving the checkout).
NOTEBOOKS = os.path.relpath(REPO / "notebooks")
CAPTIONS = os.path.relpath(REPO / "workflow/report")

# RESULTS.md: every table this config has (`sharpgaps summary` skips the sections of absent ones).
SUMMARY_TABLES = {
    **{
        exp: f"{R}/tables/{exp}_geometry.parquet"
        for exp in ("main", *sg_figures.SWEEPS)
        if exp in config["experiments"]
    },
    **{"restricted": table for table in restricted_table()},
    **{"theory": table for table in theory_table()},
    **{"estimators": table for table in estimators_table()},
    **{"mechanism": table for table in mechanism_table()},
    **{"heterogeneity": table for table in heterogeneity_table()},
}
# What `all` builds: every file of every figure of this config (Snakemake reruns a job for a missing file
# only if it is asked for), and RESULTS.md.
# A release part's RESULTS.md covers its tables only: it stays in its own tree (make fidelity combines the parts).
RESULTS_MD = f"{R}/RESULTS.md" if config["part"] else f"{FIGURE_DIR}/RESULTS.md"
FIGURE_TARGETS = [
    f"{FIGURE_DIR}/{stem}.{ext}" for stem in FIGURE for ext in ("pdf", "png", "csv")
] + [RESULTS_MD]

# Papermill runs the notebook in the `python3` kernel of the environment papermill itself runs in
# (JUPYTER_PREFER_ENV_PATH: that env's kernelspec wins over one in the user's ~/.local). Paths go in
# raw (-r); the figure's other parameters arrive as one JSON document (-y; JSON is YAML).
PAPERMILL = (
    "export MPLBACKEND=Agg JUPYTER_PREFER_ENV_PATH=1 PYDEVD_DISABLE_FILE_VALIDATION=1; "
    "python -m papermill {input.notebook:q} {output.notebook:q} --kernel python3 --no-progress-bar --log-output "
    "-r table {input.table:q} -r caption {input.caption:q} "
    "-r out_pdf {output.pdf:q} -r out_png {output.png:q} -r out_csv {output.csv:q} "
    "-y {params.parameters:q} > {log} 2>&1"
)


for family, row in REGISTRY.items():
    # the PNG and the CSV behind it go into the report, with the family's caption and each figure's labels
    captioned = {
        ext: report(
            f"{FIGURE_DIR}/{{fig}}.{ext}",
            caption=f"../report/{row['caption']}",
            category=category,
            labels=lambda wildcards: FIGURE[wildcards.fig]["labels"],
        )
        for ext, category in (("png", "Figures"), ("csv", "Figure data"))
    }

    rule:
        name:
            family
        input:
            notebook=f"{NOTEBOOKS}/{row['notebook']}",
            caption=f"{CAPTIONS}/{row['caption']}",
            table=lambda wildcards: FIGURE[wildcards.fig]["table"],
        output:
            pdf=f"{FIGURE_DIR}/{{fig}}.pdf",
            png=captioned["png"],
            csv=captioned["csv"],
            notebook=f"{R}/notebooks/{{fig}}.ipynb",
        log:
            f"{R}/logs/figures/{{fig}}.log",
        benchmark:
            f"{R}/benchmarks/figures/{{fig}}.tsv"
        wildcard_constraints:
            # exactly this family's figures in this config ("(?!)" never matches: none)
            fig="|".join(re.escape(stem) for stem in FIGURES[family]) or "(?!)",
        localrule: True
        conda:
            ENV
        params:
            # a dict for the caption templates, JSON when formatted (sharpgaps.report.figures.Parameters)
            parameters=lambda wildcards: FIGURE[wildcards.fig]["parameters"],
        shell:
            PAPERMILL


rule results_summary:
    """RESULTS.md: headline numbers and each figure family's claim next to the measurement."""
    input:
        **SUMMARY_TABLES,
    output:
        report(
            RESULTS_MD,
            caption="../report/results_summary.rst",
            category="Results",
            labels={"figure": "RESULTS.md", "shows": "headline numbers"},
        ),
    log:
        f"{R}/logs/figures/results_summary.log",
    localrule: True
    conda:
        ENV
    params:
        title=config["figures"]["title"],
        tables=lambda wc, input: " ".join(
            f"--table {name}={path}" for name, path in input.items()
        ),
    shell:
        "python -m sharpgaps summary --title {params.title:q} {params.tables} --out {output:q} > {log} 2>&1"
