"""Mode coverage of every GAN loss on the ring of 8 Gaussians (σ = 0.02, radius 2).

    python bench/gan_modes.py                          # all losses, seeds 0 1 2 (minutes)
    python bench/gan_modes.py --losses wgan-gp --seeds 0 --steps 500
    python bench/gan_modes.py --plot modes.png         # also draw the final samples

Each loss trains with its recipe (:class:`adseg.gan.toy.ToySettings`) once per seed; the final
generator's 2500 samples give the modes covered (a mode needs 20 high-quality samples, VEEGAN)
and the share of high-quality samples (within 3σ of a mode), as Metz et al. 2017 and Srivastava
et al. 2017 report them. The machine and the settings come first, then one JSON line per loss.
The same study runs in the workflow (gan.tasks: [modes]) and as 'adseg gan modes', with MLflow
runs.
A benchmark, not a test: the exit status is non-zero only on errors.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from adseg.gan.modes import run_loss  # noqa: E402
from adseg.gan.plots import mode_panels  # noqa: E402
from adseg.gan.toy import TOY_LOSSES, ToySettings  # noqa: E402


def machine(threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, {threads} torch threads, torch {torch.__version__}"


def report(loss: str, result: dict) -> None:
    m = result["metrics"]
    print(
        f"  {loss} seed {result['settings']['seed']}: {m['modes_covered']} modes, high quality "
        f"{m['high_quality']:.3f}, {result['seconds']:.1f} s"
        + (f", diverged at step {result['steps_done']}" if result["diverged"] else ""),
        file=sys.stderr,
        flush=True,
    )


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
        summary, runs = run_loss(loss, args.seeds, overrides, report)
        lines.append(summary)
        first[f"{loss} (seed {args.seeds[0]})"] = runs[0]
    if args.plot:
        mode_panels(first, args.plot, "final samples, first seed")
        print(f"plot: {args.plot}")
    print(f"total: {time.perf_counter() - start:.0f} s")
    print()
    for summary in lines:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
