# Stage 6: every trained fold on its held-out patients, against the original label files;
# then the table of all schemes (with the training logs beside each metrics.tsv).
rule evaluate:
    input:
        model=EXP / "{scheme}" / "{run}" / "model.json",
        preprocessed=EXP / "preprocessed",
        cohort=cohort_files(),
    output:
        metrics=EXP / "{scheme}" / "{run}" / "metrics.tsv",
        # each case's probability bins: the reliability diagram's
        reliability=EXP / "{scheme}" / "{run}" / "reliability.tsv",
        overlays=report(
            directory(EXP / "{scheme}" / "{run}" / "overlays"),
            patterns=["{case}.png"],
            caption="../report/overlays.rst",
            category="Overlays",
            subcategory="{scheme}",
            labels={"scheme": "{scheme}", "run": "{run}", "case": "{case}"},
        ),
    log:
        LOGS / "evaluate_{scheme}_{run}.log",
    benchmark:
        BENCHMARKS / "evaluate_{scheme}_{run}.tsv"
    wildcard_constraints:
        scheme="|".join(SCHEMES),
        run=RUN,
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
        " -o {output.metrics} --set {params.cfg} > {log} 2>&1"


rule summarize:
    input:
        expand(EXP / "{scheme}" / "{run}" / "metrics.tsv", scheme=config["schemes"], run=RUNS),
    output:
        md=EXP / "summary.md",
        html=report(
            EXP / "summary.html",
            caption="../report/summary.rst",
            category="Summary",
            labels={"table": "scheme comparison"},
        ),
        tsv=EXP / "summary.tsv",
        tests=EXP / "tests.tsv",
        training=EXP / "training.tsv",
        reliability=EXP / "reliability.tsv",
        plots=report(
            directory(EXP / "plots"),
            patterns=["{figure}.png"],
            caption="../report/figures.rst",
            category="Summary",
            subcategory="Figures",
            labels={"figure": "{figure}"},
        ),
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
        cfg=settings("experiment", "adversarial", "evaluate"),
        exp=EXP,
    shell:
        "python -m adseg summarize {input} -o {params.exp} --set {params.cfg} > {log} 2>&1"
