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
        estimators_outputs(),
    output:
        f"{R}/tables/main_estimators.parquet",
    log:
        f"{R}/logs/collect/main_estimators.log",
    conda:
        ENV
    shell:
        "python -m sharpgaps collect --out {output} {input} > {log} 2>&1"
