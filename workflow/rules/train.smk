# Stage 5: one training job per (scheme, fold, seed). Jobs are independent, so Snakemake runs
# them side by side: on the cores here, on the GPUs of a node, or as cluster jobs (gpu=1 each).
rule train:
    input:
        preprocessed=EXP / "preprocessed",
        splits=EXP / "splits.json",
    output:
        # written last by `adseg train`: its presence marks a finished fold
        model=EXP / "{scheme}" / "{run}" / "model.json",
        curves=report(
            EXP / "{scheme}" / "{run}" / "learning_curves.png",
            caption="../report/training.rst",
            category="Training curves",
            subcategory="{scheme}",
            labels={"scheme": "{scheme}", "run": "{run}"},
        ),
    log:
        LOGS / "train_{scheme}_{run}.log",
    benchmark:
        BENCHMARKS / "train_{scheme}_{run}.tsv"
    wildcard_constraints:
        scheme="|".join(SCHEMES),
        run=RUN,
    conda:
        CONDA_ENV
    threads: config["train"]["threads"]
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    params:
        cfg=train_settings,
        out=lambda w: EXP / w.scheme / w.run,
        fold=lambda w: run_fold(w.run),
    # --resume auto: a job killed (time limit, pre-emption) continues from its last
    # checkpoint when rerun; a changed config starts afresh
    shell:
        "python -m adseg train --scheme {wildcards.scheme} --fold {params.fold}"
        " --preprocessed {input.preprocessed} --splits {input.splits} -o {params.out}"
        " --threads {threads} --resume auto --set {params.cfg} > {log} 2>&1"
