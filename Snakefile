# Replication pipeline for "Worker Disagreement Reveals Sharp Directions in Local SGD" (arXiv 2605.27739).
# raw data -> subset -> Local SGD runs (checkpoints + gaps) -> ... ; see README.md and docs/.


# --configfile replaces config.yaml instead of being deep-merged into it (a smoke config must not
# inherit the paper grid's experiments); --config key=value still overrides either.
if not workflow.overwrite_configfiles:
    # Snakemake's own message for a YAML error names neither the file nor the line.
    from sharpgaps.pipeline.config import ConfigError, read_yaml

    try:
        read_yaml("config.yaml")
    except ConfigError as exc:
        raise WorkflowError(str(exc))

    configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/geometry.smk"
include: "workflow/rules/restricted.smk"
include: "workflow/rules/theory.smk"
include: "workflow/rules/estimators.smk"
include: "workflow/rules/mechanism.smk"
include: "workflow/rules/figures.smk"


rule all:
    default_target: True
    input:
        all_run_outputs(),
        expand(
            f"{R}/tables/{{experiment}}_geometry.parquet",
            experiment=config["experiments"],
        ),
        restricted_table(),
        theory_table(),
        estimators_table(),
        mechanism_table(),
        FIGURE_TARGETS,
