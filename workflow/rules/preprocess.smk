# Stage 2: every case onto one canonical grid, with the fingerprint, plan and QC table.
rule preprocess:
    input:
        cohort_files(),
        validation=EXP / "validation.json",
    output:
        directory(EXP / "preprocessed"),
    log:
        LOGS / "preprocess.log",
    benchmark:
        BENCHMARKS / "preprocess.tsv"
    conda:
        CONDA_ENV
    threads: config["preprocess"]["workers"]
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        cfg=settings("dataset", "preprocess"),
        root=RAW,
        # what the folder holds: 2 adds the arrays training reads (adseg.preprocessing.store);
        # raising it makes Snakemake's params trigger redo folders written before
        layout=2,
    shell:
        "python -m adseg preprocess {params.root} -o {output} --set {params.cfg} "
        "--validation {input.validation} --workers {threads} > {log} 2>&1"
