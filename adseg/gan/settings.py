"""The ``gan`` config section: task and model names, resolved recipes, and checks.

No torch import here: the workflow's rule files and :func:`adseg.config.resolve_config` use
it, and every Snakemake job parses those again.
"""

from __future__ import annotations

TASKS = ("synthesis", "translation")


def model_name(task: str, name: str) -> str:
    """What results, the workflow and MLflow call a GAN model: ``synthesis-dcgan``."""
    return f"{task}-{name}"


def model_names(config: dict, task: str) -> list[str]:
    """The configured models of ``task`` under their full names."""
    return [model_name(task, n) for n in config["gan"][task]["models"]]


def split_name(full: str) -> tuple[str, str]:
    """``synthesis-dcgan`` → (``synthesis``, ``dcgan``).

    Raises:
        ValueError: not a GAN model name.
    """
    task, sep, name = full.partition("-")
    if task not in TASKS or not sep or not name:
        raise ValueError(
            f"GAN model {full!r} unknown; names are <task>-<model>, task one of {', '.join(TASKS)}"
        )
    return task, name


def recipe(config: dict, task: str, name: str) -> dict:
    """A model's recipe with ``d_norm`` resolved (``auto``: batch, layer for wgan-gp).

    Raises:
        ValueError: no such model in the config, naming the ones there are.
    """
    models = config["gan"][task]["models"]
    if name not in models:
        raise ValueError(f"gan.{task}.models has no {name!r}; it has {', '.join(models) or 'none'}")
    out = dict(models[name])
    if out["d_norm"] == "auto":
        out["d_norm"] = "layer" if out["loss"] == "wgan-gp" else "batch"
    return out


def job_settings(config: dict, task: str, name: str) -> dict:
    """The settings one model's job depends on: the task's section with only that model.

    What the workflow passes to a GAN job and MLflow records as the model's params, so a
    change to another model reruns (and re-parents) nothing of this one.
    """
    g = config["gan"]
    # which folds run is the workflow's business: adding one must not rerun the others
    section = {k: v for k, v in g[task].items() if k not in ("models", "folds")}
    common = {k: g[k] for k in ("seed", "device", "amp", "intensity_percentiles")}
    return common | {task: section | {"models": {name: g[task]["models"][name]}}}


def modes_settings(config: dict, loss: str) -> dict:
    """What one loss's job of the modes study depends on: ``gan.modes`` with only that loss,
    less ``threads`` (how fast, not what). The workflow passes it to the job (so adding a
    loss reruns nothing of the others) and MLflow records it as the loss's params."""
    modes = config["gan"]["modes"] | {"losses": [loss]}
    modes.pop("threads", None)
    return modes


def problems(config: dict) -> list[str]:
    """Settings of the ``gan`` section that contradict each other (the schema checks types)."""
    g = config["gan"]
    out = []
    for task in TASKS:
        for name, r in g[task]["models"].items():
            where = f"gan.{task}.models.{name}"
            if r["loss"] == "wgan-gp" and r["d_norm"] == "batch":
                out.append(
                    f"{where}.d_norm batch with loss wgan-gp: the gradient penalty is per sample "
                    "and batch norm couples samples; use layer, instance or none (or auto)"
                )
            if task == "synthesis" and r["adv_weight"] != 1.0:
                out.append(f"{where}.adv_weight: synthesis has no other loss term; leave it 1")
            if task == "translation" and r["adv_weight"] == 0 and r["l1_weight"] == 0:
                out.append(f"{where}: adv_weight and l1_weight are both 0; nothing to train")
            smallest = 3 * 2 ** r["d_layers"]  # MONAI's PatchDiscriminator
            patch = g["translation"]["patch_size"]
            if task == "translation" and r["adv_weight"] > 0 and min(patch) < smallest:
                out.append(
                    f"{where}.d_layers {r['d_layers']}: the PatchGAN needs patches of at least "
                    f"{smallest} voxels; gan.translation.patch_size is {patch}"
                )
            if task == "translation" and r["minibatch_std"]:
                out.append(f"{where}.minibatch_std: only the synthesis (DCGAN) D has one")
    n, given = config["folds"]["n"], config["folds"]["file"]
    for task in (t for t in g["tasks"] if t in TASKS):
        chosen = g[task]["folds"] or []
        if not given and any(k >= n for k in chosen):
            out.append(f"gan.{task}.folds {chosen}: folds.n is {n}, so folds are 0-{n - 1}")
    t = g["translation"]
    if t["source"] == t["target"]:
        out.append(f"gan.translation.source and target are both {t['source']!r}")
    factor = 2 ** (t["levels"] - 1)
    if any(p % factor for p in t["patch_size"]):
        out.append(
            f"gan.translation.patch_size {t['patch_size']}: a U-Net of {t['levels']} levels "
            f"needs multiples of {factor}"
        )
    lo, hi = g["intensity_percentiles"]
    if lo >= hi:
        out.append(f"gan.intensity_percentiles {[lo, hi]}: the first must be below the second")
    return out
