# Stage 4: QC figures of the preprocessed cohort (overview and one PNG per case).
rule qc:
    input:
        EXP / "preprocessed",
    output:
        directory(EXP / "qc"),
    log:
        LOGS / "qc.log",
    benchmark:
        BENCHMARKS / "qc.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "python -m adseg qc {input} -o {output} > {log} 2>&1"
