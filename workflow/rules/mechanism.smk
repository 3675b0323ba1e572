# The noise x curvature mechanism direction by direction (docs/DEFINITIONS.md#per-direction-gap-variance):
# per checkpoint of every run of the `mechanism.experiments`, after its geometry job.


rule mechanism:
    input:
        ckpt=f"{R}/runs/{{setting}}/{{run}}/ckpt",
        manifest=f"{R}/runs/{{setting}}/{{run}}/checkpoints.json",  # verified by the job
        subset=lambda wc: subset_path(dataset_of(wc.setting)),
        geometry=run_geometry,
    output:
        f"{R}/runs/{{setting}}/{{run}}/mechanism_{{mtag}}.parquet",
    log:
        f"{R}/logs/mechanism/{{setting}}/{{run}}_{{mtag}}.log",
    benchmark:
        f"{R}/benchmarks/mechanism/{{setting}}/{{run}}_{{mtag}}.tsv"
    conda:
        ENV
    threads: config["threads"]
    resources:
        mem_mb=lambda wc: 2 * MEM_MB[model_of(wc.setting)],
        runtime=720,
        gpu=GPU,
    params:
        run=run_description,
        geometry=lambda wc: json.dumps(
            specs.geometry_params(config, wc.setting), sort_keys=True
        ),
        mechanism=mechanism_check,
        geometry_work=mechanism_geometry_work,
        work=f"{R}/work/mechanism/{{setting}}/{{run}}/{{mtag}}",
        device=config["device"],
    shell:
        "python -m sharpgaps mechanism --run {params.run:q} --geometry {params.geometry:q} "
        "--mechanism {params.mechanism:q} --geometry-table {input.geometry} --geometry-work {params.geometry_work} "
        "--subset {input.subset} --ckpt-dir {input.ckpt} --work-dir {params.work} --out {output} "
        "--threads {threads} --device {params.device} > {log} 2>&1"


rule collect_mechanism:
    """One table for every measured experiment, labelled by experiment (the figures' and RESULTS.md's input)."""
    input:
        lambda wc: [p for paths in mechanism_tables().values() for p in paths],
    output:
        f"{R}/tables/mechanism.parquet",
    log:
        f"{R}/logs/collect/mechanism.log",
    conda:
        ENV
    params:
        tables=lambda wc: " ".join(
            f"{exp}={p}" for exp, paths in mechanism_tables().items() for p in paths
        ),
    shell:
        "python -m sharpgaps collect-labelled --column experiment --out {output} {params.tables} > {log} 2>&1"
