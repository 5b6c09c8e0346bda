# Stage 6: every trained fold on its held-out patients, against the original label files;
# then the table of all schemes.
rule evaluate:
    input:
        model=EXP / "{scheme}" / "fold_{fold}" / "model.json",
        preprocessed=EXP / "preprocessed",
        cohort=cohort_files(),
    output:
        EXP / "{scheme}" / "fold_{fold}" / "metrics.tsv",
    log:
        LOGS / "evaluate_{scheme}_fold_{fold}.log",
    benchmark:
        BENCHMARKS / "evaluate_{scheme}_fold_{fold}.tsv"
    wildcard_constraints:
        scheme="|".join(SCHEMES),
        fold=r"\d+",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=60,
    params:
        cfg=settings("evaluate"),
        model=lambda w, input: Path(input.model).parent,
    shell:
        "python -m adseg evaluate {params.model} --preprocessed {input.preprocessed}"
        " -o {output} --set {params.cfg} > {log} 2>&1"


rule summarize:
    input:
        expand(
            EXP / "{scheme}" / "fold_{fold}" / "metrics.tsv",
            scheme=config["schemes"],
            fold=FOLDS,
        ),
    output:
        md=EXP / "summary.md",
        tsv=EXP / "summary.tsv",
        tests=EXP / "tests.tsv",
        plots=directory(EXP / "plots"),
    log:
        LOGS / "summarize.log",
    benchmark:
        BENCHMARKS / "summarize.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        cfg=settings("experiment", "adversarial"),
        exp=EXP,
    shell:
        "python -m adseg summarize {input} -o {params.exp} --set {params.cfg} > {log} 2>&1"
