# Local SGD runs with K simulated workers: checkpoints (average + gap window) and metrics.


rule train:
    input:
        subset=lambda wc: subset_path(dataset_of(wc.setting)),
    output:
        ckpt=directory(f"{R}/runs/{{setting}}/{{run}}/ckpt"),
        manifest=f"{R}/runs/{{setting}}/{{run}}/checkpoints.json",  # rounds and sha256; readers check it
        metrics=f"{R}/runs/{{setting}}/{{run}}/metrics.csv",
        rounds=f"{R}/runs/{{setting}}/{{run}}/rounds.csv",
        info=f"{R}/runs/{{setting}}/{{run}}/run.json",
    log:
        f"{R}/logs/train/{{setting}}/{{run}}.log",
    benchmark:
        f"{R}/benchmarks/train/{{setting}}/{{run}}.tsv"
    conda:
        ENV
    threads: train_threads()
    resources:
        mem_mb=lambda wc: MEM_MB[model_of(wc.setting)],
        runtime=720,
        gpu=GPU,
    params:
        run=run_description,
        out=f"{R}/runs/{{setting}}/{{run}}",
        work=f"{R}/work/{{setting}}/{{run}}",
        device=config["device"],
        resume_every=config["resume_every_s"],
        launcher=train_launcher(),
        threads=config["threads"],
    shell:
        "{params.launcher} train --run {params.run:q} --subset {input.subset} --out-dir {params.out} "
        "--work-dir {params.work} --name {wildcards.setting}/{wildcards.run} --threads {params.threads} "
        "--device {params.device} --resume-every-s {params.resume_every} > {log} 2>&1"
