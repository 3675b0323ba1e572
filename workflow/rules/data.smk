# Raw data: verify checksums (or download) -> seeded stratified subsets.


rule acquire:
    output:
        f"{R}/data/{{dataset}}/acquired.json",
    log:
        f"{R}/logs/acquire/{{dataset}}.log",
    conda:
        ENV
    params:
        data_dir=config["data_dir"],
        download="" if config["download"] else "--no-download",
    shell:
        # the environment variable wins over the config key (sharpgaps.data.sources.resolve_data_dir); the command
        # shows it, and the config value alone is the param, so moving the data triggers no rerun
        'python -m sharpgaps acquire --dataset {wildcards.dataset} --data-dir "${{SHARPGAPS_DATA_DIR:-{params.data_dir}}}" '
        "{params.download} --out {output} > {log} 2>&1"


rule subset:
    input:
        f"{R}/data/{{dataset}}/acquired.json",
    output:
        f"{R}/data/{{dataset}}/subset_{{tag}}.pt",
    log:
        f"{R}/logs/subset/{{dataset}}_{{tag}}.log",
    benchmark:
        f"{R}/benchmarks/subset/{{dataset}}_{{tag}}.tsv"
    conda:
        ENV
    resources:
        mem_mb=4000,
    params:
        data_dir=config["data_dir"],
        args=subset_args,
    shell:
        'python -m sharpgaps subset --dataset {wildcards.dataset} --data-dir "${{SHARPGAPS_DATA_DIR:-{params.data_dir}}}" '
        "{params.args} --out {output} > {log} 2>&1"
