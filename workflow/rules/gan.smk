# Stage 8 (gan.enabled): GAN modules for synthesis. Per task, model (a recipe of
# gan.<task>.models) and fold: one training job on the fold's training patients; translation
# models are then evaluated on the fold's held-out patients; then one table. The modes study
# (gan.tasks: modes) is a job per loss on the ring of 8 Gaussians, then its own table.


rule gan_train:
    input:
        preprocessed=EXP / "preprocessed",
        splits=EXP / "splits.json",
    output:
        # written last by `adseg gan train`: its presence marks a finished fold
        GAN / "{task}-{model}" / "fold_{fold}" / "model.json",
    log:
        LOGS / "gan_train_{task}-{model}_fold_{fold}.log",
    benchmark:
        BENCHMARKS / "gan_train_{task}-{model}_fold_{fold}.tsv"
    wildcard_constraints:
        task="synthesis|translation",
        model=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
        fold=r"\d+",
    conda:
        CONDA_ENV
    threads: GAN_CFG["threads"]
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    params:
        cfg=gan_train_settings,
        out=lambda w: GAN / f"{w.task}-{w.model}" / f"fold_{w.fold}",
    # --resume auto: a killed job continues from its last checkpoint when rerun
    shell:
        "python -m adseg gan train --task {wildcards.task} --model {wildcards.model}"
        " --fold {wildcards.fold} --preprocessed {input.preprocessed} --splits {input.splits}"
        " -o {params.out} --threads {threads} --resume auto --set {params.cfg} > {log} 2>&1"


# generated against real target channel on the fold's held-out patients
rule gan_evaluate:
    input:
        model=GAN / "translation-{model}" / "fold_{fold}" / "model.json",
        preprocessed=EXP / "preprocessed",
    output:
        GAN / "translation-{model}" / "fold_{fold}" / "metrics.tsv",
    log:
        LOGS / "gan_evaluate_translation-{model}_fold_{fold}.log",
    benchmark:
        BENCHMARKS / "gan_evaluate_translation-{model}_fold_{fold}.tsv"
    wildcard_constraints:
        model=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
        fold=r"\d+",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=60,
    params:
        model=lambda w, input: Path(input.model).parent,
        cfg=shlex.quote(json.dumps({"gan": {"device": GAN_CFG["device"]}})),
    shell:
        "python -m adseg gan evaluate {params.model} --preprocessed {input.preprocessed}"
        " -o {output} --set {params.cfg} > {log} 2>&1"


rule gan_summary:
    input:
        synthesis=gan_outputs("synthesis", "model.json"),
        translation=gan_outputs("translation", "metrics.tsv"),
    output:
        md=GAN / "summary.md",
        html=report(
            GAN / "summary.html",
            caption="../report/gan.rst",
            category="GAN",
            labels={"table": "synthesis and translation"},
        ),
        plots=report(
            directory(GAN / "plots"),
            patterns=["{figure}.png"],
            caption="../report/gan.rst",
            category="GAN",
            subcategory="Figures",
            labels={"figure": "{figure}"},
        ),
        tsv=GAN / "summary.tsv",
        tests=GAN / "tests.tsv",
        synthesis=GAN / "synthesis.tsv",
    log:
        LOGS / "gan_summary.log",
    benchmark:
        BENCHMARKS / "gan_summary.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        cfg=settings("experiment"),
        out=GAN,
    shell:
        "python -m adseg gan summary --synthesis {input.synthesis}"
        " --translation {input.translation} -o {params.out} --set {params.cfg} > {log} 2>&1"


# one loss of the mode-coverage study, all its seeds (small MLPs: CPU, no cohort)
rule gan_modes:
    output:
        GAN / "modes" / "{loss}" / "result.json",
    log:
        LOGS / "gan_modes_{loss}.log",
    benchmark:
        BENCHMARKS / "gan_modes_{loss}.tsv"
    wildcard_constraints:
        loss=r"[a-z-]+",
    conda:
        CONDA_ENV
    threads: GAN_CFG["modes"]["threads"]
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        cfg=gan_modes_settings,
        out=GAN / "modes",
    shell:
        "python -m adseg gan modes --losses {wildcards.loss} -o {params.out} --no-summary"
        " --threads {threads} --no-progress --set {params.cfg} > {log} 2>&1"


rule gan_modes_summary:
    input:
        expand(GAN / "modes" / "{loss}" / "result.json", loss=GAN_CFG["modes"]["losses"]),
    output:
        GAN / "modes" / "modes.md",
        report(
            GAN / "modes" / "modes.html",
            caption="../report/modes.rst",
            category="GAN",
            labels={"table": "mode coverage"},
        ),
        GAN / "modes" / "modes.tsv",
        GAN / "modes" / "modes.jsonl",
        report(
            GAN / "modes" / "modes.png",
            caption="../report/modes.rst",
            category="GAN",
            labels={"figure": "mode coverage"},
        ),
    log:
        LOGS / "gan_modes_summary.log",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        out=GAN / "modes",
        losses=" ".join(GAN_CFG["modes"]["losses"]),
    shell:
        "python -m adseg gan modes -o {params.out} --summary-only --losses {params.losses}"
        " > {log} 2>&1"
