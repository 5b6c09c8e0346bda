# Shared by all rules: the validated config and the paths derived from it.
import json
import os
import shlex
from pathlib import Path

from adseg.config import resolve_config

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
EXP = Path(config["results_dir"]) / config["experiment"]
LOGS = EXP / "logs"
SYNTHETIC = config["dataset"]["source"] == "synthetic"
RAW = EXP / "raw" if SYNTHETIC else Path(config["dataset"]["path"])


def settings(*sections):
    """The config sections a rule depends on, as a shell-quoted JSON for `adseg --set`.

    Passing them as params (not a config file) makes Snakemake rerun a rule exactly when a
    section it uses changes.
    """
    return shlex.quote(json.dumps({s: config[s] for s in sections}, sort_keys=True))
