# The small-data study (learning_curve.fractions; config/learning-curve.yaml): every scheme
# trained again on shares of each fold's training patients (the train and evaluate rules, run
# path frac_<percent>/fold_<k>), one summary per share (an MLflow parent per scheme and
# share), then the primary endpoint against the number of training patients.
rule summarize_share:
    input:
        lambda w: expand(
            EXP / "{scheme}" / "{run}" / "metrics.tsv",
            scheme=config["schemes"],
            run=SHARE_RUNS[w.share],
        ),
    output:
        md=EXP / "learning_curve" / "{share}" / "summary.md",
        tsv=EXP / "learning_curve" / "{share}" / "summary.tsv",
        tests=EXP / "learning_curve" / "{share}" / "tests.tsv",
        training=EXP / "learning_curve" / "{share}" / "training.tsv",
        reliability=EXP / "learning_curve" / "{share}" / "reliability.tsv",
        plots=directory(EXP / "learning_curve" / "{share}" / "plots"),
    log:
        LOGS / "summarize_{share}.log",
    benchmark:
        BENCHMARKS / "summarize_{share}.tsv"
    wildcard_constraints:
        share=r"frac_\d+",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        cfg=settings("experiment", "adversarial", "evaluate"),
        out=lambda w: EXP / "learning_curve" / w.share,
    shell:
        "python -m adseg summarize {input} -o {params.out} --set {params.cfg} > {log} 2>&1"


rule learning_curve:
    input:
        full=EXP / "summary.tsv",
        shares=expand(EXP / "learning_curve" / "{share}" / "summary.tsv", share=SHARES),
    output:
        md=EXP / "learning_curve" / "learning_curve.md",
        html=report(
            EXP / "learning_curve" / "learning_curve.html",
            caption="../report/learning_curve.rst",
            category="Learning curve",
            labels={"table": "learning curve"},
        ),
        tsv=EXP / "learning_curve" / "learning_curve.tsv",
        tests=EXP / "learning_curve" / "learning_curve_tests.tsv",
        png=report(
            EXP / "learning_curve" / "learning_curve.png",
            caption="../report/learning_curve.rst",
            category="Learning curve",
            labels={"figure": "learning curve"},
        ),
    log:
        LOGS / "learning_curve.log",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        cfg=settings("experiment", "evaluate", "learning_curve"),
        exp=EXP,
    shell:
        "python -m adseg learning-curve {params.exp} --set {params.cfg} > {log} 2>&1"
