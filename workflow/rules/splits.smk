# Stage 3: patient-level cross-validation folds (a workflow output, never recomputed silently).
rule splits:
    input:
        preprocessed=EXP / "preprocessed",
        # a user-given splits file is validated against the cohort and adopted
        given=config["folds"]["file"] or [],
    output:
        EXP / "splits.json",
    log:
        LOGS / "splits.log",
    benchmark:
        BENCHMARKS / "splits.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        cfg=settings("folds"),
    shell:
        "python -m adseg splits {input.preprocessed} -o {output} --set {params.cfg} > {log} 2>&1"
