# Stage 4: QC figures of the preprocessed cohort (overview and one PNG per case; for the
# synthetic cohort also the phantom's lesion and mimic intensities, from its contrast table).
rule qc:
    input:
        preprocessed=EXP / "preprocessed",
        cohort=[RAW] if SYNTHETIC else [],
    output:
        report(
            directory(EXP / "qc"),
            patterns=["{figure,[^/]+}.png", "cases/{case}.png"],
            caption="../report/qc.rst",
            category="Quality control",
        ),
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
        "python -m adseg qc {input.preprocessed} -o {output} > {log} 2>&1"
