# adseg: the workflow lives in workflow/Snakefile (see workflow/rules/ for the stages).
include: "workflow/Snakefile"


# Snakemake drops the default target of an included file (snakemake/snakemake#2773), so the
# top level names it: `snakemake --cores all` builds workflow/Snakefile's rule `all`.
rule default:
    default_target: True
    input:
        rules.all.input,
