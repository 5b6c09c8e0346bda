# Stage 7 (adda.enabled): ADDA from scanner domain adda.source to adda.target. Per fold: a
# source-only model and a target oracle (labelled training patients of one domain each), the
# source model adapted without target labels (one job per variant), every model evaluated on
# all the fold's held-out patients, then one table.

# ADDA step 1, and the oracle: the fold's labelled training patients of one domain
rule adda_train:
    input:
        preprocessed=EXP / "preprocessed",
        splits=EXP / "splits.json",
    output:
        ADDA / "{model}" / "fold_{fold}" / "model.json",
    log:
        LOGS / "adda_train_{model}_fold_{fold}.log",
    benchmark:
        BENCHMARKS / "adda_train_{model}_fold_{fold}.tsv"
    wildcard_constraints:
        model="source-only|oracle",
        fold=r"\d+",
    conda:
        CONDA_ENV
    threads: config["train"]["threads"]
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    params:
        cfg=adda_train_settings,
        out=lambda w: ADDA / w.model / f"fold_{w.fold}",
        domain=lambda w: ADDA_CFG["source" if w.model == "source-only" else "target"],
        scheme=ADDA_CFG["source_scheme"],
    shell:
        "python -m adseg train --scheme {params.scheme} --fold {wildcards.fold}"
        " --domains {params.domain} --name {wildcards.model}"
        " --preprocessed {input.preprocessed} --splits {input.splits} -o {params.out}"
        " --threads {threads} --resume auto --set {params.cfg} > {log} 2>&1"


# ADDA steps 2-3: target encoder against a domain discriminator, source encoder and decoder frozen
rule adda_adapt:
    input:
        source=ADDA / "source-only" / "fold_{fold}" / "model.json",
        preprocessed=EXP / "preprocessed",
        splits=EXP / "splits.json",
    output:
        ADDA / "adda-{variant}" / "fold_{fold}" / "model.json",
    log:
        LOGS / "adda_adapt_{variant}_fold_{fold}.log",
    benchmark:
        BENCHMARKS / "adda_adapt_{variant}_fold_{fold}.tsv"
    wildcard_constraints:
        variant="|".join(ADDA_VARIANTS),
        fold=r"\d+",
    conda:
        CONDA_ENV
    threads: config["train"]["threads"]
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    params:
        cfg=settings("train", "adda"),
        out=lambda w: ADDA / f"adda-{w.variant}" / f"fold_{w.fold}",
        source=lambda w, input: Path(input.source).parent,
    shell:
        "python -m adseg adda --variant {wildcards.variant} --fold {wildcards.fold}"
        " --preprocessed {input.preprocessed} --splits {input.splits}"
        " --source-model {params.source} -o {params.out} --threads {threads} --resume auto"
        " --set {params.cfg} > {log} 2>&1"


# ADDA step 4 (and the baselines): every held-out patient of the fold, both domains
rule adda_evaluate:
    input:
        model=ADDA / "{model}" / "fold_{fold}" / "model.json",
        preprocessed=EXP / "preprocessed",
        cohort=cohort_files(),
    output:
        ADDA / "{model}" / "fold_{fold}" / "metrics.tsv",
    log:
        LOGS / "adda_evaluate_{model}_fold_{fold}.log",
    benchmark:
        BENCHMARKS / "adda_evaluate_{model}_fold_{fold}.tsv"
    wildcard_constraints:
        model="|".join(ADDA_MODELS),
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


rule adda_summarize:
    input:
        expand(
            ADDA / "{model}" / "fold_{fold}" / "metrics.tsv",
            model=adda_models(),
            fold=FOLDS,
        ),
    output:
        md=ADDA / "summary.md",
        html=report(
            ADDA / "summary.html",
            caption="../report/adda.rst",
            category="ADDA",
            labels={"table": "ADDA study"},
        ),
        tsv=ADDA / "summary.tsv",
        tests=ADDA / "tests.tsv",
        auc=ADDA / "domain_auc.tsv",
        plots=report(
            directory(ADDA / "plots"),
            patterns=["{figure}.png"],
            caption="../report/adda.rst",
            category="ADDA",
            subcategory="Figures",
            labels={"figure": "{figure}"},
        ),
    log:
        LOGS / "adda_summarize.log",
    benchmark:
        BENCHMARKS / "adda_summarize.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        cfg=settings("experiment", "adda"),
        out=ADDA,
    shell:
        "python -m adseg adda-summary {input} -o {params.out} --set {params.cfg} > {log} 2>&1"

