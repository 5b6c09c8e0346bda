"""The mode-coverage study: every GAN loss on the ring of 8 Gaussians (:mod:`adseg.gan.toy`),
several seeds, as an ``adseg gan modes`` command, a workflow rule and MLflow runs.

Per loss (one job: ``<out>/<loss>/``): each seed's run gives the modes covered and the share
of high-quality samples (within 3σ of a mode) of 2500 samples of its final generator.
``result.json`` holds the loss's summary (one line of ``modes.jsonl``), every seed's metrics
and loss history; ``samples.png`` a panel per seed. With tracking on, the loss is a parent run
(``modes-<loss>``) and each seed a child run with its losses per step, its metrics and its
figure.

:func:`summarize_modes` then gathers the losses into ``modes.md``, ``modes.tsv``,
``modes.jsonl`` and ``modes.png`` (the first seed of every loss).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from adseg.evaluation.html import write_html_twin
from adseg.gan.toy import ToySettings, train_toy
from adseg.io import read_json, write_json, write_text, write_tsv
from adseg.log import logger, progress

SEED_COLUMNS = (
    "loss",
    "seed",
    "modes_covered",
    "high_quality",
    "mean_distance",
    "diverged",
    "steps_done",
    "seconds",
)


def toy_overrides(config: dict) -> dict:
    """The :class:`ToySettings` fields ``gan.modes`` sets (the rest is each loss's recipe)."""
    m = config["gan"]["modes"]
    return {k: m[k] for k in ("steps", "lr_scale", "threads")}


def run_loss(
    loss: str,
    seeds: list[int],
    overrides: dict,
    report: Callable[[str, dict], None] | None = None,
    show: bool = False,
) -> tuple[dict, list[dict]]:
    """Train ``loss`` once per seed; its summary (one JSON line) and the per-seed results.

    ``report(loss, result)`` is called after each seed (the benchmark prints a line).
    """
    runs = []
    for seed in progress(seeds, f"{loss}: seeds", enabled=show):
        result = train_toy(ToySettings(loss, seed=seed, **overrides))
        if report is not None:
            report(loss, result)
        runs.append(result)
    return loss_summary(loss, seeds, runs), runs


def loss_summary(loss: str, seeds: list[int], runs: list[dict]) -> dict:
    """Modes covered and high-quality share over seeds (mean, min, max, each seed's)."""
    covered = [r["metrics"]["modes_covered"] for r in runs]
    quality = [r["metrics"]["high_quality"] for r in runs]
    return {
        "loss": loss,
        "seeds": seeds,
        "modes_covered_mean": round(statistics.fmean(covered), 2),
        "modes_covered_min": min(covered),
        "modes_covered_max": max(covered),
        "modes_covered": covered,
        "high_quality_mean": round(statistics.fmean(quality), 4),
        "high_quality": [round(q, 4) for q in quality],
        "mean_distance": [round(r["metrics"]["mean_distance"], 4) for r in runs],
        "counts": [r["metrics"]["counts"] for r in runs],
        "diverged": sum(r["diverged"] for r in runs),
        "seconds": round(sum(r["seconds"] for r in runs), 1),
    }


def run_modes_job(
    config: dict, loss: str, out: str | Path, show: bool = True, track: bool = False
) -> dict:
    """One loss of the study (``gan.modes``) into ``<out>/<loss>/``; returns its summary.

    Raises:
        ValueError: a loss the toy does not train (the config's schema lists them).
    """
    from adseg.gan.plots import mode_panels

    m = config["gan"]["modes"]
    folder = Path(out) / loss
    folder.mkdir(parents=True, exist_ok=True)
    overrides = toy_overrides(config)
    logger.info("mode coverage of %s: seeds %s, %s", loss, m["seeds"], overrides)

    def report(name: str, result: dict) -> None:
        r = result["metrics"]
        logger.info(
            "%s seed %d: %d of 8 modes, %.1f %% high quality, %.1f s%s",
            name,
            result["settings"]["seed"],
            r["modes_covered"],
            100 * r["high_quality"],
            result["seconds"],
            f", diverged at step {result['steps_done']}" if result["diverged"] else "",
        )

    summary, runs = run_loss(loss, m["seeds"], overrides, report, show)
    panels = {f"seed {r['settings']['seed']}": r for r in runs}
    mode_panels(panels, folder / "samples.png", f"{loss} on the ring of 8 Gaussians")
    np.save(folder / "samples_first_seed.npy", runs[0]["samples"].numpy())
    write_json(
        folder / "result.json",
        {
            "summary": summary,
            "settings": runs[0]["settings"] | {"seeds": m["seeds"]},
            "seeds": [seed_row(loss, r) for r in runs],
            "history": [r["history"] for r in runs],
        },
    )
    if track:
        _track(config, loss, folder, runs, summary)
    return summary


def seed_row(loss: str, result: dict) -> dict:
    m = result["metrics"]
    return {
        "loss": loss,
        "seed": result["settings"]["seed"],
        "modes_covered": m["modes_covered"],
        "high_quality": m["high_quality"],
        "mean_distance": m["mean_distance"],
        "diverged": result["diverged"],
        "steps_done": result["steps_done"],
        "seconds": round(result["seconds"], 2),
    }


def _track(config: dict, loss: str, folder: Path, runs: list[dict], summary: dict) -> None:
    """A parent run for the loss, a child run per seed (never raises)."""
    from adseg import tracking
    from adseg.gan.plots import mode_panels

    config = tracking.tracking_config(config)  # the workflow's whole config, in a job
    try:
        scheme = f"modes-{loss}"
        parent = tracking.parent_ref(config, scheme)
        for r in runs:
            seed = r["settings"]["seed"]
            seed_dir = folder / f"seed_{seed}"
            journal = tracking.new_fold_journal(
                config, scheme, seed, seed_dir, {"seed": seed}, parent, f"{scheme} seed {seed}"
            )
            history = r["history"]
            for i, step in enumerate(history["step"]):
                values = {f"train/{k}": history[k][i] for k in history if k != "step"}
                journal.metrics(values, step=step)
            row = seed_row(loss, r)
            final = {f"modes/{k}": float(row[k]) for k in ("modes_covered", "high_quality")}
            final |= {"modes/mean_distance": float(row["mean_distance"])}
            final |= {"modes/diverged": float(row["diverged"])}
            journal.metrics(final, step=r["steps_done"])
            mode_panels({f"seed {seed}": r}, seed_dir / "samples.png", f"{loss}, seed {seed}")
            journal.artifact(seed_dir / "samples.png", "samples")
            journal.status("FINISHED")
            tracking.report_pending(journal.flush(force=True), journal)
        journal = tracking.Journal.create(
            folder / tracking.JOURNALS / f"parent-{parent['config_hash']}", parent
        )
        journal.config_artifact(config)
        keys = ("modes_covered_mean", "modes_covered_min", "modes_covered_max")
        values = {f"modes/{k}": float(summary[k]) for k in (*keys, "high_quality_mean")}
        journal.metrics(values | {"modes/diverged_runs": float(summary["diverged"])}, step=1)
        journal.artifact(folder / "result.json", "summary")
        journal.artifact(folder / "samples.png", "summary")
        journal.status("FINISHED")
        tracking.report_pending(journal.flush(force=True), journal)
    except Exception as err:  # noqa: BLE001 - the result files are written; tracking is extra
        logger.warning("MLflow tracking of %s failed (%s); results are in %s", loss, err, folder)


def summarize_modes(out: str | Path, losses: list[str] | None = None) -> Path:
    """Gather ``<out>/<loss>/result.json`` (``losses``, default every one there) into
    ``modes.md``, ``modes.tsv``, ``modes.jsonl`` and ``modes.png``; returns ``modes.md``.

    Raises:
        FileNotFoundError: a loss without its result (or no result at all).
    """
    from adseg.gan.plots import mode_panels

    out = Path(out)
    if losses is None:
        losses = sorted(p.parent.name for p in out.glob("*/result.json"))
    if not losses:
        raise FileNotFoundError(f"{out}: no <loss>/result.json; run 'adseg gan modes' first")
    results = {}
    for loss in losses:
        path = out / loss / "result.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; run 'adseg gan modes --losses {loss}'")
        results[loss] = read_json(path)
    rows = [row for r in results.values() for row in r["seeds"]]
    write_tsv(out / "modes.tsv", rows, SEED_COLUMNS)
    lines = [json.dumps(r["summary"]) for r in results.values()]
    write_text(out / "modes.jsonl", "\n".join(lines) + "\n")
    panels = {}
    for loss, r in results.items():
        samples = torch.from_numpy(np.load(out / loss / "samples_first_seed.npy"))
        first = r["seeds"][0]
        panels[f"{loss} (seed {first['seed']})"] = {
            "samples": samples,
            "metrics": {k: first[k] for k in ("modes_covered", "high_quality")},
        }
    mode_panels(panels, out / "modes.png", "final samples, first seed")
    path = out / "modes.md"
    write_text(path, modes_markdown(results))
    write_html_twin(path)  # for the Snakemake report
    return path


def modes_markdown(results: dict[str, dict]) -> str:
    """The study's table: a row per loss."""
    first = next(iter(results.values()))["settings"]
    lines = [
        "# Mode coverage on the ring of 8 Gaussians",
        "",
        f"Radius 2, σ = {first['std']}; {first['steps']} generator steps, batch "
        f"{first['batch']}, MLPs of {first['layers']} hidden layers of {first['hidden']}; "
        "2500 samples of each final generator. A mode is covered with 20 samples within 3σ; "
        "high quality: the share of samples within 3σ of a mode.",
        "",
        "| loss | modes covered (per seed) | mean | high quality (per seed) | mean | diverged |",
        "|---|---|---|---|---|---|",
    ]
    for loss, r in results.items():
        s = r["summary"]
        hq = ", ".join(f"{q:.0%}" for q in s["high_quality"])
        lines.append(
            f"| {loss} | {', '.join(map(str, s['modes_covered']))} | "
            f"{s['modes_covered_mean']:.1f} | {hq} | {s['high_quality_mean']:.0%} | "
            f"{s['diverged']} |"
        )
    lines += ["", "![final samples](modes.png)", ""]
    return "\n".join(lines)
