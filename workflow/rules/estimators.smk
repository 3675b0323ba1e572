# Cheap estimators of the dominant Hessian subspace at equal vector count and by extra cost:
# one job per `main` run (every seed), after its geometry job, whose cached eigenvectors it reuses.


rule estimators:
    input:
        ckpt=f"{R}/runs/{{setting}}/{{run}}/ckpt",
        manifest=f"{R}/runs/{{setting}}/{{run}}/checkpoints.json",  # verified by the job
        geometry=f"{R}/runs/{{setting}}/{{run}}/geometry_{{gtag}}.parquet",  # after geometry: its eigenvector cache
        subset=lambda wc: subset_path(dataset_of(wc.setting)),
    output:
        f"{R}/runs/{{setting}}/{{run}}/estimators_{{gtag}}_{{etag}}.parquet",
    log:
        f"{R}/logs/estimators/{{setting}}/{{run}}_{{gtag}}_{{etag}}.log",
    benchmark:
        f"{R}/benchmarks/estimators/{{setting}}/{{run}}_{{gtag}}_{{etag}}.tsv"
    wildcard_constraints:
        etag="[0-9a-f]{12}",
    conda:
        ENV
    threads: config["threads"]
    resources:
        mem_mb=lambda wc: 2 * MEM_MB[model_of(wc.setting)],
        runtime=720,
        gpu=GPU,
    params:
        run=run_description,
        geometry=geometry_json,
        estimators=estimators_params,
        geometry_work=geometry_work,
        work=f"{R}/work/estimators/{{setting}}/{{run}}/{{gtag}}_{{etag}}",
        device=config["device"],
    shell:
        "python -m sharpgaps estimators --run {params.run:q} --geometry {params.geometry:q} "
        "--estimators {params.estimators:q} --geometry-work {params.geometry_work} --geometry-table {input.geometry} "
        "--subset {input.subset} "
        "--ckpt-dir {input.ckpt} --work-dir {params.work} --out {output} --threads {threads} "
        "--device {params.device} > {log} 2>&1"


rule collect_estimators:
    input:
        lambda wc: estimators_outputs(wc.experiment),
    output:
        f"{R}/tables/{{experiment}}_estimators.parquet",
    log:
        f"{R}/logs/collect/{{experiment}}_estimators.log",
    wildcard_constraints:
        experiment="|".join(specs.ESTIMATOR_EXPERIMENTS),
    conda:
        ENV
    shell:
        "python -m sharpgaps collect --out {output} {input} > {log} 2>&1"


rule heterogeneity_table:
    """The heterogeneity family's cells (Fig X5 and its RESULTS section)."""
    input:
        **heterogeneity_inputs(),
    output:
        f"{R}/tables/heterogeneity.parquet",
    log:
        f"{R}/logs/collect/heterogeneity_cells.log",
    conda:
        ENV
    params:
        tables=lambda wc, input: " ".join(
            f"--{name} {path}" for name, path in input.items()
        ),
    shell:
        "python -m sharpgaps heterogeneity {params.tables} --out {output} > {log} 2>&1"
