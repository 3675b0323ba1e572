# Raw data: verify checksums (or download) -> seeded stratified subsets.


rule acquire:
    output:
        "results/data/{dataset}/acquired.json",
    log:
        "results/logs/acquire/{dataset}.log",
    conda:
        ENV
    params:
        data_dir=config["data_dir"],
        download="" if config["download"] else "--no-download",
    shell:
        "python -m sharpgaps acquire --dataset {wildcards.dataset} --data-dir {params.data_dir:q} "
        "{params.download} --out {output} > {log} 2>&1"


rule subset:
    input:
        "results/data/{dataset}/acquired.json",
    output:
        "results/data/{dataset}/subset_{tag}.pt",
    log:
        "results/logs/subset/{dataset}_{tag}.log",
    benchmark:
        "results/benchmarks/subset/{dataset}_{tag}.tsv"
    conda:
        ENV
    resources:
        mem_mb=4000,
    params:
        data_dir=config["data_dir"],
        args=subset_args,
    shell:
        "python -m sharpgaps subset --dataset {wildcards.dataset} --data-dir {params.data_dir:q} "
        "{params.args} --out {output} > {log} 2>&1"
