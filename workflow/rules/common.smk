# Shared by all rules: the validated config and the paths derived from it.
import json
import os
import shlex
from pathlib import Path

from adseg.config import experiment_dir, resolve_config

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
EXP = experiment_dir(config)
LOGS = EXP / "logs"
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
    chosen = {s: dict(config[s]) for s in sections}
    # how many processes run a stage does not change its results
    chosen.get("preprocess", {}).pop("workers", None)
    return shlex.quote(json.dumps(chosen, sort_keys=True))
