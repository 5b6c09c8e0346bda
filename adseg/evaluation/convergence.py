"""Did training converge, and did D learn? Read from each evaluated model's training log.

For every metrics file whose folder holds a trained network's ``model.json`` and
``training_log.tsv`` (one row per epoch; folders without them, and the threshold rule, whose
log is its fit's moves, are left out):

- the inner-validation Dice (``val_dice``) at the last validation epoch and at the one before:
  a plateau shows as a small difference;
- for a model with a discriminator, D's loss over its last :data:`LAST` logged epochs beside
  :data:`CHANCE`, the loss of a D that cannot tell the expert's maps from S's, and
  σ(D(real)) − σ(D(fake)) over those epochs (σ of each epoch's mean logits, as
  :func:`adseg.plots.d_score_panel` draws them).

:func:`write_training` writes ``training.tsv`` (one row per run, :func:`run_row`) and
``plots/training_curves.png`` (:func:`training_figure`), and returns the rows of summary.md's
table (:func:`by_scheme`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from adseg.io import read_json, write_tsv
from adseg.plots import LOGIT_LOSSES, plt, save, sigmoid, training_curves_figure
from adseg.preprocessing.qc import read_tsv
from adseg.training.schemes import SCHEMES

# adseg.training.engine.LOG; not imported from there, which would load torch
LOG = "training_log.tsv"
LAST = 5  # epochs D's loss and scores are averaged over
LN4 = 2 * math.log(2)
# L_D of a D that scores real and fake alike. Cross-entropy losses at logit 0 (σ = 0.5): each
# term is −t·ln ½ − (1 − t)·ln ½ = ln 2 whatever its target t, so one-sided smoothing
# (real_label) leaves 2 ln 2 (a constant D may go slightly lower, σ = t/2: 1.376 at t = 0.9).
# Hinge: any shared score in [−1, 1] costs 1 a term. WGAN: equal scores cancel. LSGAN's depends
# on real_label (not in model.json), WGAN-GP's on its gradient penalty: none stated.
CHANCE = {
    "minimax": (LN4, "2 ln 2"),
    "nonsaturating": (LN4, "2 ln 2"),
    "feature-matching": (LN4, "2 ln 2"),
    "hinge": (2.0, "2"),
    "wgan": (0.0, "0"),
}
TRAINING_COLUMNS = (
    "scheme",
    "fold",
    "seed",
    "epochs",
    "last_val_epoch",
    "last_val_dice",
    "previous_val_epoch",
    "previous_val_dice",
    "adversarial_loss",
    "d_loss_last5",
    "d_gap_last5",
)


@dataclass(frozen=True)
class Run:
    """One trained model's log.

    Attributes:
        scheme, fold, seed: from its ``model.json``.
        d_loss: D's loss (``discriminator.loss``); None for a model without D.
        history: the log's rows; numbers as floats (``epoch`` an int), empty cells None.
    """

    scheme: str
    fold: int
    seed: int
    d_loss: str | None
    history: list[dict]


def _given(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _mean(values) -> float:
    values = [v for v in values if _given(v)]
    return sum(values) / len(values) if values else math.nan


def _cell(key: str, v: str):
    if key == "phase":
        return v
    if v in ("", "nan"):
        return None
    return int(v) if key == "epoch" else float(v)


def read_run(folder: str | Path) -> Run | None:
    """The log of the model in ``folder``; None where there is none to read: no
    ``model.json`` or log, the threshold rule, or a log without epochs and ``val_dice``."""
    folder = Path(folder)
    if not ((folder / "model.json").is_file() and (folder / LOG).is_file()):
        return None
    spec = read_json(folder / "model.json")
    if spec.get("network", {}).get("name") == "ThresholdRule":
        return None
    rows = read_tsv(folder / LOG)
    if not rows or not {"epoch", "val_dice"} <= set(rows[0]):
        return None
    history = [{k: _cell(k, v) for k, v in r.items()} for r in rows]
    d_loss = spec["discriminator"]["loss"] if spec.get("discriminator") else None
    return Run(spec["scheme"], int(spec["fold"]), int(spec.get("seed", 0)), d_loss, history)


def run_row(run: Run) -> dict:
    """A run's row of ``training.tsv``: its last two validation epochs and their Dice; D's
    loss and σ(D(real)) − σ(D(fake)) averaged over the last :data:`LAST` epochs that logged
    them (the gap only where D's scores are logits; None where undefined)."""
    val = [(h["epoch"], h["val_dice"]) for h in run.history if _given(h.get("val_dice"))]
    last, previous = (val[-1] if val else (None, None)), (val[-2] if len(val) > 1 else (None, None))
    row = {
        "scheme": run.scheme,
        "fold": run.fold,
        "seed": run.seed,
        "epochs": max(h["epoch"] for h in run.history),
        "last_val_epoch": last[0],
        "last_val_dice": last[1],
        "previous_val_epoch": previous[0],
        "previous_val_dice": previous[1],
        "adversarial_loss": run.d_loss,
        "d_loss_last5": None,
        "d_gap_last5": None,
    }
    recent = [h for h in run.history if _given(h.get("loss_d"))][-LAST:]
    if run.d_loss is not None and recent:
        row["d_loss_last5"] = _mean(h["loss_d"] for h in recent)
        if run.d_loss in LOGIT_LOSSES:
            row["d_gap_last5"] = _mean(sigmoid(h["d_real"]) - sigmoid(h["d_fake"]) for h in recent)
    return row


def _span(values) -> str:
    values = sorted({v for v in values if v is not None})
    if not values:
        return "–"
    return str(values[0]) if len(values) == 1 else f"{values[0]}–{values[-1]}"


def by_scheme(rows: list[dict]) -> list[dict]:
    """summary.md's rows from :func:`run_row`'s, one per scheme in :data:`SCHEMES`' order: the
    means over folds and seeds (of what each run defines), epochs as ``a`` or ``a–b``, D's loss
    with its min and max over runs, and its chance level (None if none is stated)."""
    out = []
    for s in SCHEMES:
        mine = [r for r in rows if r["scheme"] == s]
        if not mine:
            continue
        losses = {r["adversarial_loss"] for r in mine}
        d = [r["d_loss_last5"] for r in mine if _given(r["d_loss_last5"])]
        changes = [
            r["last_val_dice"] - r["previous_val_dice"]
            for r in mine
            if _given(r["last_val_dice"]) and _given(r["previous_val_dice"])
        ]
        loss = next(iter(losses)) if len(losses) == 1 else None
        out.append(
            {
                "scheme": s,
                "runs": len(mine),
                "epochs": _span(r["epochs"] for r in mine),
                "last_val_epoch": _span(r["last_val_epoch"] for r in mine),
                "last_val_dice": _mean(r["last_val_dice"] for r in mine),
                "previous_val_epoch": _span(r["previous_val_epoch"] for r in mine),
                "previous_val_dice": _mean(r["previous_val_dice"] for r in mine),
                "val_change": _mean(changes),
                "adversarial": losses != {None},
                "d_loss": _mean(d),
                "d_loss_min": min(d, default=math.nan),
                "d_loss_max": max(d, default=math.nan),
                "chance": CHANCE.get(loss),
                "d_gap": _mean(r["d_gap_last5"] for r in mine),
            }
        )
    return out


def training_figure(runs: list[Run]) -> plt.Figure:
    """:func:`adseg.plots.training_curves_figure` of ``runs``, D's chance levels drawn."""
    chance = {CHANCE[r.d_loss] for r in runs if r.d_loss in CHANCE}
    return training_curves_figure(
        [{"scheme": r.scheme, "history": r.history, "d": r.d_loss is not None} for r in runs],
        "every run: inner-validation Dice and D's loss per epoch",
        [(v, f"chance: {text} = {v:.3f}") for v, text in sorted(chance)],
    )


def write_training(metric_files: list[str | Path], out: str | Path) -> list[dict]:
    """Write ``out/training.tsv`` (its header alone if no run has a log) and, if any run has
    one, ``out/plots/training_curves.png``; return :func:`by_scheme`'s rows."""
    out = Path(out)
    folders = dict.fromkeys(Path(f).parent for f in metric_files)
    runs = [r for r in map(read_run, folders) if r is not None and r.scheme in SCHEMES]
    runs.sort(key=lambda r: (list(SCHEMES).index(r.scheme), r.seed, r.fold))
    rows = [run_row(r) for r in runs]
    write_tsv(out / "training.tsv", rows, TRAINING_COLUMNS)
    if runs:
        save(training_figure(runs), out / "plots" / "training_curves.png")
    return by_scheme(rows)
