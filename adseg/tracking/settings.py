"""How a config becomes MLflow names: whether and where runs are tracked, a scheme's params,
the hash that identifies its parent run, its tags, and the metric names of an epoch."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

from adseg import __version__
from adseg.config import ENV_CONFIG, experiment_dir, without_result_neutral
from adseg.training.schemes import ADVERSARIAL_SCHEMES

EPOCH_METRICS = {
    "loss_s": "train/loss_s",
    "loss_ce": "train/loss_ce",
    "loss_adv": "train/loss_adv",
    "loss_d": "train/loss_d",
    "d_real": "train/d_real",
    "d_fake": "train/d_fake",
    "grad_norm_s": "train/grad_norm_s",
    "grad_norm_d": "train/grad_norm_d",
    "lr_s": "train/lr_s",
    "lr_d": "train/lr_d",
    "seconds": "train/epoch_seconds",
    "val_dice": "val/dice",
    # the GAN tasks (adseg.gan)
    "loss_g": "train/loss_g",
    "loss_l1": "train/loss_l1",
    "grad_norm_g": "train/grad_norm_g",
    "std_ratio": "train/std_ratio",
    "instance_noise": "train/instance_noise",
    "val_mae": "val/mae",
    "val_psnr": "val/psnr",
    "val_ssim": "val/ssim",
}


def tracking_config(config: dict) -> dict:
    """The config runs are tracked under: the workflow's (see :data:`ENV_CONFIG`) with the
    job's own share of training patients (``train.fraction``), else ``config``."""
    raw = os.environ.get(ENV_CONFIG)
    if not raw:
        return config
    workflow = json.loads(raw)
    # a learning-curve job's share of training patients is its own (a parent per share)
    fraction = config.get("train", {}).get("fraction", 1.0)
    if fraction < 1:
        workflow.setdefault("train", {})["fraction"] = fraction
    return workflow


def enabled(config: dict) -> bool:
    return bool(tracking_config(config)["mlflow"]["enabled"])


def tracking_uri(config: dict) -> str:
    """``mlflow.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else sqlite under results_dir."""
    uri = config["mlflow"]["tracking_uri"] or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return f"sqlite:///{(Path(config['results_dir']) / 'mlflow.db').resolve()}"
    db = sqlite_path(uri)
    # a relative sqlite path would name another file when a job or sync runs elsewhere
    return f"sqlite:///{db.resolve()}" if db is not None else uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI; None for a server."""
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


def lock_path(config: dict, uri: str) -> str:
    """The file lock that orders creations in store ``uri``: beside the sqlite file, or in the
    experiment's results folder for a server."""
    db = sqlite_path(uri)
    folder = experiment_dir(config) if db is None else db.parent
    return str((folder / f"{db.name if db else '.mlflow'}.lock").resolve())


def model_settings(config: dict, scheme: str) -> dict:
    """A scheme's settings as run params: the resolved config without the tracking and
    evaluation sections, the list of schemes, the training seeds, and (for schemes without a
    discriminator) the discriminator's section. A GAN model (``synthesis-dcgan``) gets the
    cohort's sections and its own part of the ``gan`` section only."""
    from adseg.gan.settings import TASKS, job_settings, modes_settings, split_name

    shared = ("experiment", "results_dir", "dataset", "preprocess", "folds")
    if scheme.startswith("modes-"):  # the mode-coverage study: no cohort, one loss
        modes = modes_settings(config, scheme.removeprefix("modes-"))
        return {"experiment": config["experiment"], "gan": {"modes": modes}}
    if scheme.startswith(tuple(f"{t}-" for t in TASKS)):
        task, name = split_name(scheme)
        return {k: copy.deepcopy(config[k]) for k in shared} | {
            "gan": job_settings(config, task, name)
        }
    out = {k: copy.deepcopy(v) for k, v in config.items() if k not in ("mlflow", "evaluate")}
    # which schemes and training shares the workflow runs is not a model's setting
    out.pop("schemes", None)
    out.pop("learning_curve", None)
    if out.get("train", {}).get("fraction", 1) >= 1:  # the full share: as before shares existed
        out["train"].pop("fraction", None)
    # a scheme's runs of every training seed share its parent; each child is tagged its seed
    for key in ("seed", "seeds"):
        out.get("train", {}).pop(key, None)
    if scheme not in ADVERSARIAL_SCHEMES:
        out.pop("adversarial", None)
    return out


def settings_hash(settings: dict) -> str:
    """What identifies a parent run: the settings less the result-neutral ones (params all
    the same; :data:`adseg.config.RESULT_NEUTRAL`)."""
    return _digest(without_result_neutral(settings))


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 0.001}}`` → ``{"train.lr": "0.001"}``; lists and null as JSON."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= flatten(value, f"{name}.")
        else:
            out[name] = value if isinstance(value, str) else json.dumps(value)
    return out


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def _git_commit() -> str | None:
    """The commit of this adseg checkout (``-dirty`` with uncommitted changes), if it is one."""
    root = Path(__file__).resolve().parents[2]  # adseg/tracking/settings.py → the checkout
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")


def _dataset_tag(config: dict) -> str:
    d = config["dataset"]
    if d["source"] == "synthetic":
        s = d["synthetic"]
        return f"synthetic ({s['n_patients']} patients, seed {s['seed']})"
    return str(d["path"])


def _common_tags(config: dict, scheme: str) -> dict[str, str]:
    tags = {
        "scheme": scheme,
        "dataset": _dataset_tag(config),
        "host": socket.gethostname(),
        "adseg.version": __version__,
        "adseg.experiment_dir": str(experiment_dir(config).resolve()),
    }
    commit = _git_commit()
    if commit:
        tags |= {"git_commit": commit, "mlflow.source.git.commit": commit.removesuffix("-dirty")}
    return tags


def parent_ref(config: dict, scheme: str) -> dict:
    """What identifies (and creates) a scheme's parent run."""
    settings = model_settings(config, scheme)
    uri = tracking_uri(config)
    return {
        "role": "parent",
        "uri": uri,
        "lock": lock_path(config, uri),
        "experiment": config["experiment"],
        "scheme": scheme,
        "config_hash": settings_hash(settings),
        "run_name": _run_name(config, scheme),
        "params": flatten(settings) | {"scheme": scheme},
        "tags": _common_tags(config, scheme),
    }


def _run_name(config: dict, scheme: str) -> str:
    """A parent's name: the scheme, and the share of training patients below the full one."""
    fraction = config.get("train", {}).get("fraction", 1)
    return scheme if fraction >= 1 else f"{scheme} ({100 * fraction:g} % training patients)"
