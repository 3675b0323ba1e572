# Per-run geometry: Hessian top-k eigenpairs and gap-subspace metrics at every checkpoint.


rule geometry:
    input:
        ckpt=f"{R}/runs/{{setting}}/{{run}}/ckpt",
        manifest=f"{R}/runs/{{setting}}/{{run}}/checkpoints.json",  # verified by the job
        subset=lambda wc: subset_path(dataset_of(wc.setting)),
    output:
        f"{R}/runs/{{setting}}/{{run}}/geometry_{{gtag}}.parquet",
    log:
        f"{R}/logs/geometry/{{setting}}/{{run}}_{{gtag}}.log",
    benchmark:
        f"{R}/benchmarks/geometry/{{setting}}/{{run}}_{{gtag}}.tsv"
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
        work=geometry_work,
        device=config["device"],
    shell:
        "python -m sharpgaps geometry --run {params.run:q} --geometry {params.geometry:q} "
        "--subset {input.subset} --ckpt-dir {input.ckpt} --work-dir {params.work} --out {output} "
        "--threads {threads} --device {params.device} > {log} 2>&1"


rule collect_geometry:
    """One table per experiment: every run's geometry rows (the figures' only input)."""
    input:
        experiment_geometry,
    output:
        f"{R}/tables/{{experiment}}_geometry.parquet",
    log:
        f"{R}/logs/collect/{{experiment}}.log",
    conda:
        ENV
    shell:
        "python -m sharpgaps collect --out {output} {input} > {log} 2>&1"
