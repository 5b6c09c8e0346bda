# Stage 5: one training job per (scheme, fold). Jobs are independent, so Snakemake runs them
# side by side: on the cores here, on the GPUs of a node, or as cluster jobs (gpu=1 each).
rule train:
    input:
        preprocessed=EXP / "preprocessed",
        splits=EXP / "splits.json",
    output:
        # written last by `adseg train`: its presence marks a finished fold
        EXP / "{scheme}" / "fold_{fold}" / "model.json",
    log:
        LOGS / "train_{scheme}_fold_{fold}.log",
    benchmark:
        BENCHMARKS / "train_{scheme}_fold_{fold}.tsv"
    wildcard_constraints:
        scheme="|".join(SCHEMES),
        fold=r"\d+",
    conda:
        CONDA_ENV
    threads: config["train"]["threads"]
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    params:
        cfg=train_settings,
        out=lambda w: EXP / w.scheme / f"fold_{w.fold}",
    # --resume auto: a job killed (time limit, pre-emption) continues from its last
    # checkpoint when rerun; a changed config starts afresh
    shell:
        "python -m adseg train --scheme {wildcards.scheme} --fold {wildcards.fold}"
        " --preprocessed {input.preprocessed} --splits {input.splits} -o {params.out}"
        " --threads {threads} --resume auto --set {params.cfg} > {log} 2>&1"
