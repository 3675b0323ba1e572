# Dom/Bulk-restricted Local SGD (Figs 5-8) and the Hessian-free gap-restricted variant.


rule restricted:
    input:
        ckpt=f"{R}/runs/{{setting}}/{{run}}/ckpt",
        manifest=f"{R}/runs/{{setting}}/{{run}}/checkpoints.json",  # verified by the job
        geometry=parent_geometry,
        subset=lambda wc: subset_path(dataset_of(wc.setting)),
    output:
        f"{R}/runs/{{setting}}/{{run}}/restricted_{{rtag}}/{{mode}}.parquet",
    log:
        f"{R}/logs/restricted/{{setting}}/{{run}}_{{rtag}}_{{mode}}.log",
    benchmark:
        f"{R}/benchmarks/restricted/{{setting}}/{{run}}_{{rtag}}_{{mode}}.tsv"
    wildcard_constraints:
        mode="none|dom|bulk|gapdom|gapbulk|randdom|randbulk|graddom|gradbulk",
    conda:
        ENV
    threads: config["threads"]
    resources:
        mem_mb=lambda wc: 2 * MEM_MB[model_of(wc.setting)],
        runtime=720,
        gpu=GPU,
    params:
        run=run_description,
        restricted=restricted_json,
        work=f"{R}/work/restricted/{{setting}}/{{run}}/{{rtag}}/{{mode}}",
        device=config["device"],
        resume_every=config["resume_every_s"],
    shell:
        "python -m sharpgaps restricted --run {params.run:q} --restricted {params.restricted:q} "
        "--mode {wildcards.mode} --subset {input.subset} --ckpt-dir {input.ckpt} --geometry {input.geometry} "
        "--work-dir {params.work} "
        "--out {output} --name {wildcards.setting} --threads {threads} --device {params.device} "
        "--resume-every-s {params.resume_every} > {log} 2>&1"


rule collect_restricted:
    input:
        restricted_outputs(),
    output:
        f"{R}/tables/restricted.parquet",
    log:
        f"{R}/logs/collect/restricted.log",
    conda:
        ENV
    shell:
        "python -m sharpgaps collect --out {output} {input} > {log} 2>&1"
