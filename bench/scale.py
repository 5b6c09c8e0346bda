"""Cohorts that need not fit in memory: peak memory and time per case as the cohort grows.

    python bench/scale.py                       # 40 and 400 synthetic patients
    python bench/scale.py --sizes 40 400 1500   # PI-CAI's size too (an hour on 2 cores)
    python bench/scale.py --data /tmp/scale     # keep the synthetic cohorts for the next run
    python bench/scale.py --spacing 0.5 0.5 3   # a T2w's grid: 4x the voxels a case

For each size, in fresh processes, so that one size's memory cannot hide in another's:
- **preprocessing**: validation and preprocessing of the whole synthetic cohort (the
  workflow's ``validate_cohort`` and ``preprocess`` rules), ``--workers`` processes; its peak
  is the larger of the main process's and the largest worker's.
- **training**: epochs of the ce scheme on fold 0 as the workflow trains them (streamed from
  the memory-mapped arrays), repeated until 240 cases were drawn, then one validation pass
  over the fold's validation cases; time per case is the epochs' time per case drawn.
- **baseline**: the same with the loader it replaced (rebuilt here): every case read from
  its NIfTI files into MONAI's ``CacheDataset``, with its voxel indices, before training.

The last lines are ``NAME ratio=R goal<=G``, each size against the first: peak memory within
1.5x and time per case within 1.2x. The exit status is 3 if a goal is missed, as bench/run.py.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import (  # noqa: E402
    GOAL_MISSED,
    ROOT,
    add_spacing_option,
    load_experiment,
    machine,
    peak_rss_mb,
    trainer_for,
)

GOALS = {"peak_rss": 1.5, "time_per_case": 1.2}


def children_peak_mb() -> float:
    """The largest peak resident memory of this process's finished children (the workers)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def stage_synthesise(folder: Path, n: int, workers: int, spacing: list[float] | None) -> dict:
    """The synthetic cohort (kept with --data; not measured) and the default config, at
    ``spacing`` (mm) if given."""
    import yaml

    from adseg.config import load_config
    from adseg.data.synthetic import generate_cohort
    from adseg.io import write_text

    folder.mkdir(parents=True, exist_ok=True)
    overrides = {"preprocess": {"target_spacing": spacing}} if spacing else None
    config = load_config(ROOT / "config" / "config.yaml", overrides)
    write_text(folder / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    t0 = time.perf_counter()
    if not (folder / "raw" / "dataset.json").is_file():
        generate_cohort(folder / "raw", n, 0, workers=workers, progress=False)
    return {"seconds": time.perf_counter() - t0}


def stage_preprocess(folder: Path, workers: int) -> dict:
    """Validate and preprocess the cohort (as the workflow's rules do); write the folds."""
    from adseg.data.splits import case_meta_from_dataset, make_splits
    from adseg.data.validation import validate_with_config
    from adseg.io import read_json, write_json
    from adseg.preprocessing.cohort import prepare_cohort

    config = load_experiment(folder)["config"]
    t0 = time.perf_counter()
    report = validate_with_config(folder / "raw", config, workers, False)
    prepare_cohort(folder / "raw", config, folder / "preprocessed", report, workers, False)
    seconds = time.perf_counter() - t0
    dataset = read_json(folder / "preprocessed" / "dataset.json")
    folds = config["folds"]
    splits = make_splits(case_meta_from_dataset(dataset), folds["n"], folds["seed"])
    write_json(folder / "splits.json", splits)
    return {
        "cases": len(dataset["cases"]),
        "seconds": seconds,
        "peak_rss_mb": max(peak_rss_mb(), children_peak_mb()),
    }


MIN_DRAWS = 240
"""Training epochs are repeated until this many cases were drawn, so that a small cohort's
time per case rests on as many batches as a large one's (one epoch of 30 cases is 8)."""


def stage_train(folder: Path, in_ram: bool) -> dict:
    """Training epochs of ce on fold 0 (at least :data:`MIN_DRAWS` cases drawn), then one
    validation pass, on the CPU; with ``in_ram`` through the former loader."""
    import math

    import torch

    from adseg.inference.sliding import make_inferer
    from adseg.training import loader as loading

    torch.set_num_threads(1)  # the workflow's train.threads
    exp = load_experiment(folder)
    job, trainer = trainer_for(exp, "ce", torch.device("cpu"))
    t, spec = job.config["train"], job.spec
    train = loading.case_items(job.preprocessed, spec["train_cases"])
    val = loading.case_items(job.preprocessed, spec["val_cases"])
    t0 = time.perf_counter()
    if in_ram:
        batches, randomize, val_set = former_loader(job, train, val)
    else:
        batches, randomize = loading.training_loader(
            train,
            spec["patch_size"],
            2,
            spec["slice_axis"],
            t["batch_size"],
            t["samples_per_case"],
            t["pos_fraction"],
        )
        val_set = loading.validation_dataset(val)
    ready = time.perf_counter()
    epochs = math.ceil(MIN_DRAWS / len(train))
    for epoch in range(epochs):
        randomize.set_random_state(epoch)
        trainer.run_epoch(batches, epoch, warmup=False)
    trained = time.perf_counter()
    trainer.validate(val_set, make_inferer(2, spec["patch_size"], spec["slice_axis"], 16))
    return {
        "cases": len(train) * epochs,
        "val_cases": len(val),
        "seconds": trained - ready,
        "setup_seconds": ready - t0,
        "validation_seconds": time.perf_counter() - trained,
        "peak_rss_mb": peak_rss_mb(),
    }


def former_loader(job, train: list[dict], val: list[dict]) -> tuple:
    """adseg's loader until the arrays (ee744d8), rebuilt: every training case read from its
    NIfTI files into a MONAI ``CacheDataset`` with its lesion and background voxel indices
    (int32), then drawn by the same ``CasePatches``; the validation cases cached alike."""
    import numpy as np
    import torch
    from monai.data import CacheDataset
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        EnsureTyped,
        FgBgToIndicesd,
        LoadImaged,
        SpatialPadd,
        ToNumpyd,
    )

    from adseg.training import loader as loading

    t, spec = job.config["train"], job.spec
    crop = loading.patch_shape(spec["patch_size"], 2, spec["slice_axis"])
    randomize = loading.random_transforms(crop, t["samples_per_case"], t["pos_fraction"], 2)

    def load(pad_to) -> list:
        return [
            LoadImaged(keys=["image", "label"], image_only=True),
            EnsureChannelFirstd(keys=["image", "label"]),
            EnsureTyped(keys=["image", "label"], dtype=np.float32, track_meta=False),
            SpatialPadd(keys=["image", "label"], spatial_size=list(pad_to)),
        ]

    indices = [loading.FG_INDICES, loading.BG_INDICES]
    chain = [
        *load(crop),
        FgBgToIndicesd(keys="label"),
        ToNumpyd(keys=indices, dtype=np.int32),
        EnsureTyped(keys=["image", "label"], data_type="numpy"),
        loading.CasePatches(randomize),
    ]
    cached = CacheDataset(train, Compose(chain), num_workers=1, copy_cache=False, progress=False)
    batches = torch.utils.data.DataLoader(
        cached,
        batch_size=max(1, t["batch_size"] // t["samples_per_case"]),
        shuffle=True,
        collate_fn=loading.collate_patches,
    )
    return batches, randomize, CacheDataset(val, Compose(load([1, 1, 1])), progress=False)


def run_stage(*args: str) -> dict:
    """A stage in a fresh Python process; its JSON line."""
    out = subprocess.run(
        [sys.executable, __file__, "--stage", *args],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[40, 400], help="patients")
    parser.add_argument("--workers", type=int, default=2, help="preprocessing processes")
    parser.add_argument("--data", type=Path, help="keep the cohorts in this folder")
    add_spacing_option(parser)
    parser.add_argument("--stage", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        kind, folder = args.stage[0], Path(args.stage[1])
        if kind == "synthesise":
            spacing = [float(v) for v in args.stage[4:]] or None
            result = stage_synthesise(folder, int(args.stage[2]), int(args.stage[3]), spacing)
        elif kind == "preprocess":
            result = stage_preprocess(folder, int(args.stage[2]))
        else:
            result = stage_train(folder, in_ram=kind == "train-in-ram")
        print(json.dumps(result))
        return 0

    import torch

    print(f"machine: {machine(torch.device('cpu'))}; {time.strftime('%Y-%m-%d')}")
    data = nullcontext(args.data) if args.data else tempfile.TemporaryDirectory(prefix="adseg-")
    rows = {}
    with data as f:
        for n in args.sizes:
            folder = Path(f) / f"patients_{n}"
            spacing = [str(v) for v in args.spacing or []]
            synth = run_stage("synthesise", str(folder), str(n), str(args.workers), *spacing)
            print(f"{n} patients synthesised in {synth['seconds']:.0f} s", flush=True)
            pre = run_stage("preprocess", str(folder), str(args.workers))
            train = run_stage("train", str(folder))
            ram = run_stage("train-in-ram", str(folder))
            rows[n] = {"preprocess": pre, "train": train, "in_ram": ram}
            print(
                f"{n} patients ({pre['cases']} cases): preprocessing "
                f"{pre['seconds'] / pre['cases']:.3f} s a case, peak {pre['peak_rss_mb']:.0f} MB",
                flush=True,
            )
            for label, r in (("streamed", train), ("former loader, in RAM", ram)):
                print(
                    f"  training, {label}: {r['setup_seconds']:.1f} s to set up, "
                    f"{r['seconds'] / r['cases']:.3f} s a case drawn ({r['cases']}), "
                    f"validation of {r['val_cases']} cases {r['validation_seconds']:.1f} s, "
                    f"peak {r['peak_rss_mb']:.0f} MB",
                    flush=True,
                )
    print()
    first, missed = args.sizes[0], 0
    for n in args.sizes[1:]:
        a, b = rows[first], rows[n]
        for stage in ("preprocess", "train", "in_ram"):
            for figure, goal in GOALS.items():
                if figure == "peak_rss":
                    ratio = b[stage]["peak_rss_mb"] / a[stage]["peak_rss_mb"]
                else:
                    ratio = (b[stage]["seconds"] / b[stage]["cases"]) / (
                        a[stage]["seconds"] / a[stage]["cases"]
                    )
                name = f"{stage}_{figure}_{n}_vs_{first}"
                if stage == "in_ram":  # the former loader: reported, not a goal
                    print(f"{name} ratio={ratio:.3f} (baseline, reported)")
                    continue
                ok = ratio <= goal
                missed += not ok
                print(f"{name} ratio={ratio:.3f} goal<={goal:g}{'' if ok else '  MISSED'}")
    return GOAL_MISSED if missed else 0


if __name__ == "__main__":
    sys.exit(main())
