"""Mode coverage of every GAN loss on the ring of 8 Gaussians (σ = 0.02, radius 2).

    python bench/gan_modes.py                          # all losses, seeds 0 1 2 (minutes)
    python bench/gan_modes.py --losses wgan-gp --seeds 0 --steps 500
    python bench/gan_modes.py --plot modes.png         # also draw the final samples

Each loss trains with its recipe (:class:`adseg.gan.toy.ToySettings`) once per seed; the final
generator's 2500 samples give the modes covered (a mode needs 20 high-quality samples, VEEGAN)
and the share of high-quality samples (within 3σ of a mode), as Metz et al. 2017 and Srivastava
et al. 2017 report them. The machine and the settings come first, then one JSON line per loss.
A benchmark, not a test: the exit status is non-zero only on errors.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from adseg.gan.toy import TOY_LOSSES, ToySettings, ring_modes, train_toy  # noqa: E402


def machine(threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, {threads} torch threads, torch {torch.__version__}"


def run_loss(loss: str, seeds: list[int], overrides: dict) -> tuple[dict, list[dict]]:
    """Train ``loss`` once per seed; return its JSON summary and the per-seed results."""
    runs = []
    for seed in seeds:
        result = train_toy(ToySettings(loss, seed=seed, **overrides))
        m = result["metrics"]
        print(
            f"  {loss} seed {seed}: {m['modes_covered']} modes, high quality "
            f"{m['high_quality']:.3f}, {result['seconds']:.1f} s"
            + (f", diverged at step {result['steps_done']}" if result["diverged"] else ""),
            file=sys.stderr,
            flush=True,
        )
        runs.append(result)
    covered = [r["metrics"]["modes_covered"] for r in runs]
    quality = [r["metrics"]["high_quality"] for r in runs]
    summary = {
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
    return summary, runs


def plot(samples: dict[str, dict], path: Path) -> None:
    """A panel per loss: the final samples of its first seed over the mode centres."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(samples))
    rows = -(-len(samples) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    centres = ring_modes()
    for ax in axes.flat[len(samples) :]:
        ax.axis("off")
    for ax, (loss, result) in zip(axes.flat, samples.items(), strict=False):
        points, m = result["samples"], result["metrics"]
        ax.scatter(points[:, 0], points[:, 1], s=1, alpha=0.4)
        ax.scatter(centres[:, 0], centres[:, 1], s=30, c="red", marker="x")
        ax.set(xlim=(-3, 3), ylim=(-3, 3), aspect="equal", xticks=[], yticks=[])
        ax.set_title(
            f"{loss} (seed {result['settings']['seed']})\n{m['modes_covered']}/8 modes, "
            f"{m['high_quality']:.0%} high quality",
            fontsize=9,
        )
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=120)
    plt.close(fig)
    os.replace(tmp, path)  # a killed run never leaves a figure that looks finished


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, help="generator steps (default: ToySettings')")
    parser.add_argument("--losses", nargs="+", choices=TOY_LOSSES, default=list(TOY_LOSSES))
    parser.add_argument("--lr-scale", type=float, help="1 for the published learning rates")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: ToySettings')")
    parser.add_argument("--plot", type=Path, help="draw the first seed's samples here (.png)")
    args = parser.parse_args()
    given = {"steps": args.steps, "lr_scale": args.lr_scale, "threads": args.threads}
    overrides = {k: v for k, v in given.items() if v is not None}
    threads = ToySettings(**overrides).threads
    print(f"machine: {machine(threads)}; {time.strftime('%Y-%m-%d')}")
    for loss in args.losses:
        print(f"settings: {ToySettings(loss, **overrides)}")
    start = time.perf_counter()
    lines, first = [], {}
    for loss in args.losses:
        summary, runs = run_loss(loss, args.seeds, overrides)
        lines.append(summary)
        first[loss] = runs[0]
    if args.plot:
        plot(first, args.plot)
        print(f"plot: {args.plot}")
    print(f"total: {time.perf_counter() - start:.0f} s")
    print()
    for summary in lines:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
