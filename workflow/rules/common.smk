# Shared by all rules: the validated config and the paths derived from it.
import json
import os
import re
import shlex
from pathlib import Path

from snakemake.exceptions import WorkflowError

from adseg.config import ENV_CONFIG as ADSEG_WORKFLOW_CONFIG
from adseg.config import experiment_dir, resolve_config, without_result_neutral
from adseg.data.shares import share_name
from adseg.io import read_json
from adseg.training.schemes import ADDA_MODELS, ADDA_VARIANTS, ADVERSARIAL_SCHEMES, SCHEMES
from adseg.gan.settings import job_settings as gan_job_settings
from adseg.gan.settings import model_names as gan_model_names
from adseg.gan.settings import modes_settings as gan_modes_job_settings

# One schema (workflow/schemas/config.schema.yaml) for Snakemake and the CLI: validate, fill
# defaults, reject unknown keys with the allowed ones listed.
config.update(resolve_config(config))

# With `--software-deployment-method conda` rules run in an environment built from the
# project's environment.yml (path relative to the rule files); otherwise in the current one.
CONDA_ENV = "../../environment.yml"
# Jobs import this checkout's adseg, so code and workflow match in any environment (a conda
# environment from environment.yml, a cluster node).
REPO = Path(workflow.basedir).parent
python_path = [str(REPO), os.environ.get("PYTHONPATH", "")]
os.environ.update(PYTHONPATH=os.pathsep.join(p for p in python_path if p))
# Jobs get only the config sections they use (so a change reruns exactly what it affects), but
# log to MLflow under the whole config: experiment name, tracking URI, params.
os.environ[ADSEG_WORKFLOW_CONFIG] = json.dumps(config)
EXP = experiment_dir(config)
LOGS = EXP / "logs"
# per job: wall time and peak memory (bench/workflow.py sums them and finds the critical path)
BENCHMARKS = EXP / "benchmarks"
SYNTHETIC = config["dataset"]["source"] == "synthetic"
RAW = EXP / "raw" if SYNTHETIC else Path(config["dataset"]["path"])


def cohort_files():
    """The cohort's files as inputs, so editing or adding a case reruns what depends on it.

    (A folder as input is judged by the folder's own modification time, which does not
    change when a file inside it is rewritten.)
    """
    if SYNTHETIC:
        return [RAW]
    files = [RAW / "dataset.json"]
    for folder in ("imagesTr", "labelsTr"):
        files += sorted(
            p for p in (RAW / folder).glob("*") if not p.name.startswith(".")
        )
    return files


def settings(*sections):
    """The config sections a rule depends on, as a shell-quoted JSON for `adseg --set`.

    Passing them as params (not a config file) makes Snakemake rerun a rule exactly when a
    section it uses changes.
    """
    # settings that change how a job runs, not what it makes (the schema marks them) rerun
    # nothing; the job reads them from the whole config (ADSEG_WORKFLOW_CONFIG)
    return shlex.quote(json.dumps(chosen_settings(*sections), sort_keys=True))


def chosen_settings(*sections):
    """:func:`settings` as a dict."""
    chosen = {s: without_result_neutral(config, s) for s in sections}
    # whether the workflow runs the ADDA study, and which seeds it trains, is the workflow's
    # business, not a job's (adding a seed reruns no job of another)
    chosen.get("adda", {}).pop("enabled", None)
    chosen.get("train", {}).pop("seeds", None)
    # the full share of training patients, as before the learning-curve study existed
    if chosen.get("train", {}).get("fraction") == 1:
        chosen["train"].pop("fraction")
    return chosen


def train_settings(wildcards):
    """A training job's settings: the discriminator's only for the schemes that have one, and
    the run's own seed."""
    sections = ["train"]
    if wildcards.scheme in ADVERSARIAL_SCHEMES:
        sections.append("adversarial")
    chosen = chosen_settings(*sections)
    chosen["train"]["seed"] = run_seed(wildcards.run)
    if run_fraction(wildcards.run) < 1:
        chosen["train"]["fraction"] = run_fraction(wildcards.run)
    return shlex.quote(json.dumps(chosen, sort_keys=True))


def fold_numbers():
    """Fold numbers: from a user-given splits file, else folds.n."""
    given = config["folds"]["file"]
    if not given:
        return list(range(config["folds"]["n"]))
    splits = read_json(given)
    return list(range(len(splits["folds"] if isinstance(splits, dict) else splits)))


FOLDS = fold_numbers()
# Training seeds (train.seeds): every scheme and fold is trained once per seed. A run of the
# first seed is <scheme>/fold_<k> (the layout of a one-seed experiment), of another seed
# <scheme>/seed_<s>/fold_<k>; `{run}` is that path below <scheme>/.
SEEDS = config["train"]["seeds"] or [config["train"]["seed"]]
# The learning-curve study (learning_curve.fractions) trains the first seed again on shares of
# each fold's training patients: <scheme>/frac_<percent>/fold_<k>.
FRACTIONS = config["learning_curve"]["fractions"]
RUN = r"(seed_\d+/|frac_\d+/)?fold_\d+"


def run_path(seed, fold):
    return f"fold_{fold}" if seed == SEEDS[0] else f"seed_{seed}/fold_{fold}"


RUNS = [run_path(seed, fold) for seed in SEEDS for fold in FOLDS]
SHARES = {share_name(f): f for f in sorted(FRACTIONS)}
if len(SHARES) < len(FRACTIONS):
    raise WorkflowError(
        f"learning_curve.fractions {FRACTIONS}: two shares name the same folder "
        f"({', '.join(SHARES)}); give shares that differ by at least 1 %"
    )
SHARE_RUNS = {name: [f"{name}/fold_{fold}" for fold in FOLDS] for name in SHARES}


def run_fraction(run):
    """The share of training patients of a run path (1 outside the learning-curve study)."""
    found = re.match(r"(frac_\d+)/", run)
    return SHARES[found.group(1)] if found else 1.0


def run_seed(run):
    """The seed of a run path (see RUNS)."""
    found = re.match(r"seed_(\d+)", run)
    return int(found.group(1)) if found else SEEDS[0]


def run_fold(run):
    """The fold of a run path (see RUNS)."""
    return int(run.rsplit("fold_", 1)[1])


# The ADDA study (rules/adda.smk), when adda.enabled
ADDA = EXP / "adda"
ADDA_CFG = config["adda"]


def adda_models():
    """The study's models: source-only, one per ADDA variant, and the oracle."""
    variants = [f"adda-{v}" for v in ADDA_CFG["variants"]]
    return [m for m in ADDA_MODELS if m in ("source-only", "oracle") or m in variants]


def adda_train_settings(wildcards):
    """Step 1's scheme settings: the discriminator of label maps only for hybrid."""
    sections = ["train"]
    if ADDA_CFG["source_scheme"] in ADVERSARIAL_SCHEMES:
        sections.append("adversarial")
    return settings(*sections)


# The GAN tasks (rules/gan.smk), when gan.enabled
GAN = EXP / "gan"
GAN_CFG = config["gan"]


def gan_targets():
    """The GAN tables the config asks for: the synthesis/translation one, the modes study."""
    if not GAN_CFG["enabled"]:
        return []
    tasks = GAN_CFG["tasks"]
    out = [GAN / "summary.md"] if {"synthesis", "translation"} & set(tasks) else []
    return out + ([GAN / "modes" / "modes.md"] if "modes" in tasks else [])


def gan_folds(task):
    """The folds a GAN task trains: gan.<task>.folds, or all."""
    chosen = GAN_CFG[task]["folds"]
    return FOLDS if chosen is None else chosen


def gan_outputs(task, name):
    """Each configured model's fold files of a task (model.json or metrics.tsv)."""
    if task not in GAN_CFG["tasks"]:
        return []
    return [
        GAN / f"{model}" / f"fold_{fold}" / name
        for model in gan_model_names(config, task)
        for fold in gan_folds(task)
    ]


def gan_train_settings(wildcards):
    """One GAN job's settings: its task's section with only its model (so a change to another
    model reruns nothing of this one)."""
    cfg = {"gan": gan_job_settings(config, wildcards.task, wildcards.model)}
    cfg = without_result_neutral(cfg)
    return shlex.quote(json.dumps(cfg, sort_keys=True))


def gan_modes_settings(wildcards):
    """One loss's job of the modes study (adding a loss or a change elsewhere in the config
    reruns nothing of it)."""
    cfg = {"gan": {"modes": gan_modes_job_settings(config, wildcards.loss)}}
    cfg = without_result_neutral(cfg)
    return shlex.quote(json.dumps(cfg, sort_keys=True))
