# Quadratic-model check: the engine's measured gap covariance vs the closed form (docs/DEFINITIONS.md#quadratic-model).


rule theory:
    output:
        f"{R}/tables/theory_{{tag}}.parquet",
    log:
        f"{R}/logs/theory/{{tag}}.log",
    benchmark:
        f"{R}/benchmarks/theory/{{tag}}.tsv"
    conda:
        ENV
    threads: 1
    params:
        theory=lambda wc: theory_json(wc.tag),
    shell:
        "python -m sharpgaps theory --theory {params.theory:q} --out {output} > {log} 2>&1"
