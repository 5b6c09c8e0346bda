# Stage 1: the cohort. The built-in synthetic phantom is generated; a real one is validated.
if SYNTHETIC:

    rule synth_cohort:
        output:
            directory(EXP / "raw"),
        log:
            LOGS / "synth_cohort.log",
        benchmark:
            BENCHMARKS / "synth_cohort.tsv"
        conda:
            CONDA_ENV
        threads: 2
        resources:
            mem_mb=4000,
            runtime=30,
        params:
            cfg=config["dataset"]["synthetic"],
        shell:
            "python -m adseg synth-cohort {output} --n-patients {params.cfg[n_patients]} "
            "--seed {params.cfg[seed]} --labels {params.cfg[labels]} "
            "--two-visit-fraction {params.cfg[two_visit_fraction]} "
            "--domain-b-fraction {params.cfg[domain_b_fraction]} "
            "--domain-shift {params.cfg[domain_shift]} --workers {threads} "
            "> {log} 2>&1"


rule validate_cohort:
    input:
        cohort_files(),
    output:
        EXP / "validation.json",
    log:
        LOGS / "validate_cohort.log",
    benchmark:
        BENCHMARKS / "validate_cohort.tsv"
    conda:
        CONDA_ENV
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        cfg=settings("dataset"),
        root=RAW,
    shell:
        "python -m adseg validate {params.root} --set {params.cfg} --report {output} "
        "--workers {threads} > {log} 2>&1"
