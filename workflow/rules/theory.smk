# Quadratic-model check: the engine's measured gap covariance vs the closed form (DESIGN §1).


rule theory:
    output:
        "results/tables/theory_{tag}.parquet",
    params:
        theory=lambda wc: theory_json(wc.tag),
    threads: 1
    log:
        "results/logs/theory/{tag}.log",
    benchmark:
        "results/benchmarks/theory/{tag}.tsv"
    conda:
        ENV
    shell:
        "python -m sharpgaps.cli theory --theory {params.theory:q} --out {output} > {log} 2>&1"
