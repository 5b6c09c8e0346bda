"""adseg against plain MONAI baselines, side by side in one process, as ratios.

    python bench/run.py                   # every figure (a few minutes on a laptop CPU)
    python bench/run.py --only train      # train | data | predict | memory
    python bench/run.py --device cuda     # default: auto

Each figure times adseg and its baseline on the same network, batch, data and device,
alternating the two in rounds so drift hits both alike, and reports the ratio of medians.
Absolute times and the machine come first. The last lines are one per figure,
``NAME ratio=R goal<=G``, and the exit status is 3 if a goal is missed (1 is a crash, as for
any Python script). The memory figures are reported against their baselines without a goal.

The workflow's time per rule: ``bench/workflow.py``. Results: ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

GOALS = {
    "train_step_ce_vs_monai": ("<=", 1.05),
    "train_step_adversarial_vs_ce": ("<=", 1.5),
    "data_wait_share": ("<=", 0.05),
    "predict_vs_sliding_window": ("<=", 1.3),
    "train_peak_memory_vs_monai": ("report", None),
    "predict_peak_memory_vs_monai": ("report", None),
}


def machine(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    text = f"{cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    if device.type == "cuda":
        text += f", GPU {torch.cuda.get_device_name(device)}"
    return text


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compare(
    a: Callable[[], None], b: Callable[[], None], device, rounds: int, n: int
) -> tuple[float, float]:
    """Median seconds per call of ``a`` and of ``b``, timed in alternating rounds of ``n``."""
    for fn in (a, b):  # warm-up: allocator, cuDNN autotuning, caches
        for _ in range(max(2, n // 2)):
            fn()
    times: dict[int, list[float]] = {0: [], 1: []}
    for r in range(rounds):
        order = (0, 1) if r % 2 == 0 else (1, 0)
        for i in order:
            fn = (a, b)[i]
            sync(device)
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            sync(device)
            times[i].append((time.perf_counter() - t0) / n)
    return statistics.median(times[0]), statistics.median(times[1])


# --- the data: a small synthetic cohort, preprocessed as the default workflow does ----------


def make_experiment(folder: Path, n_patients: int, spacing: list[float] | None = None) -> dict:
    """The default workflow's data: a synthetic cohort, preprocessed, split into its folds.

    ``spacing`` replaces the default config's target spacing (mm, x y z); the config used is
    kept in the folder for :func:`load_experiment`.
    """
    import yaml

    from adseg.config import load_config
    from adseg.data.splits import case_meta_from_dataset, make_splits
    from adseg.data.synthetic import generate_cohort
    from adseg.io import write_json, write_text
    from adseg.preprocessing.cohort import prepare_cohort

    overrides = {"preprocess": {"target_spacing": spacing}} if spacing else None
    config = load_config(ROOT / "config" / "config.yaml", overrides)
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    generate_cohort(folder / "raw", n_patients, 0, progress=False)
    prepare_cohort(folder / "raw", config, folder / "preprocessed", workers=2, show_progress=False)
    dataset = json.loads((folder / "preprocessed" / "dataset.json").read_text())
    folds = config["folds"]
    splits = make_splits(case_meta_from_dataset(dataset), folds["n"], folds["seed"])
    write_json(folder / "splits.json", splits)
    return load_experiment(folder)


def trainer_for(exp: dict, scheme: str, device: torch.device, **train):
    from adseg.config import deep_merge
    from adseg.io import read_json
    from adseg.training.job import check_job
    from adseg.training.segmentor import SegmentorTrainer

    config = deep_merge(copy.deepcopy(exp["config"]), {"train": train}) if train else exp["config"]
    out = exp["folder"] / f"{scheme}_bench"
    job = check_job(config, scheme, 0, exp["preprocessed"], read_json(exp["splits"]), out)
    return job, SegmentorTrainer(job, device)


def first_batch(job, device) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch as train_fold's loop gets it: plain tensors, no MONAI metadata."""
    from monai.data import set_track_meta

    loader, _ = _loader(job, device)
    set_track_meta(False)
    try:
        batch = next(iter(loader))
    finally:
        set_track_meta(True)
    return batch["image"].to(device), batch["label"].to(device)


def _loader(job, device: torch.device):
    """The training loader as train_fold makes it on ``device``."""
    from adseg.training.loader import case_items, training_loader

    t, spec = job.config["train"], job.spec
    return training_loader(
        case_items(job.preprocessed, spec["train_cases"]),
        spec["patch_size"],
        spec["network"]["spatial_dims"],
        spec["slice_axis"],
        t["batch_size"],
        t["samples_per_case"],
        t["pos_fraction"],
        t["workers"],
        background=device.type == "cuda",
    )


# --- figures ------------------------------------------------------------------------------


def bench_train(exp: dict, device: torch.device, rounds: int, report: dict) -> None:
    """adseg's ce step vs a hand-written MONAI loop; adseg's adversarial step vs its ce step."""
    job, trainer = trainer_for(exp, "ce", device)
    x, y = first_batch(job, device)
    net = copy.deepcopy(trainer.segmentor)
    t = job.config["train"]
    opt = torch.optim.Adam(net.parameters(), lr=t["lr"], weight_decay=t["weight_decay"])

    def plain() -> None:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x), y[:, 0].long())
        loss.backward()
        opt.step()

    def ce() -> None:
        trainer.supervised_step(x, y)

    adseg_s, monai_s = compare(ce, plain, device, rounds, 10)
    report["train_step_ce_vs_monai"] = adseg_s / monai_s
    print(
        f"train step, ce (batch {tuple(x.shape)}): adseg {adseg_s * 1e3:.1f} ms, "
        f"plain MONAI loop {monai_s * 1e3:.1f} ms"
    )
    _, adv = trainer_for(exp, "adversarial", device)

    def adversarial() -> None:
        adv.adversarial_step(x, y)

    adv_s, ce_s = compare(adversarial, ce, device, rounds, 10)
    report["train_step_adversarial_vs_ce"] = adv_s / ce_s
    print(f"train step: adversarial {adv_s * 1e3:.1f} ms, ce {ce_s * 1e3:.1f} ms")
    # the arithmetic each step must do: a time ratio below this needs a smaller network,
    # not faster code
    adv_flops, ce_flops = step_flops(adversarial), step_flops(ce)
    print(
        f"train step arithmetic: adversarial {adv_flops / 1e9:.2f} GFLOP, ce "
        f"{ce_flops / 1e9:.2f} GFLOP (ratio {adv_flops / ce_flops:.2f})"
    )


def step_flops(step) -> int:
    """Floating-point operations of one call of ``step`` (torch's FLOP counter: matrix
    products and convolutions, forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops()


def bench_data(exp: dict, device: torch.device, rounds: int, report: dict) -> None:
    """Share of a training epoch spent waiting for the next batch (workflow settings)."""
    from monai.data import set_track_meta

    train = {"workers": OPTIONS["workers"]} if OPTIONS.get("workers") is not None else {}
    job, trainer = trainer_for(exp, "ce", device, **train)
    loader, _ = _loader(job, device)
    set_track_meta(False)  # as train_fold does after caching
    for _ in loader:  # one epoch to warm up
        break
    wait = step = 0.0
    batches = 0
    for _ in range(rounds):
        it = iter(loader)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                break
            x = batch["image"].to(device, non_blocking=True)
            y = batch["label"].to(device, non_blocking=True)
            sync(device)
            t1 = time.perf_counter()
            trainer.supervised_step(x, y)
            sync(device)
            wait += t1 - t0
            step += time.perf_counter() - t1
            batches += 1
    set_track_meta(True)
    report["data_wait_share"] = wait / (wait + step)
    print(
        f"data: {batches} batches, waiting {wait / batches * 1e3:.1f} ms and computing "
        f"{step / batches * 1e3:.1f} ms per batch (workers {job.config['train']['workers']})"
    )


def trained_model(exp: dict) -> Path:
    """Fold 0 of the ce scheme, trained as the default config trains it. Its masks are like
    a user's (a one-epoch model called 91 % of every volume lesion, and labelling the
    components of such a mask took 4 ms of a 70 ms predict)."""
    from adseg.training.segmentation import train_fold

    config = exp["config"]
    out = exp["folder"] / "model" / f"ce-{config['train']['epochs']}-epochs"
    if not (out / "fold_0" / "model.json").is_file():
        train_fold(config, "ce", 0, exp["preprocessed"], exp["splits"], out / "fold_0", "no", False)
    return out


def bench_predict(exp: dict, device: torch.device, rounds: int, report: dict) -> None:
    """adseg predict per volume (check and fingerprint the inputs, read, preprocess, infer,
    resample back, write) vs MONAI's sliding-window inference alone on the already-preprocessed
    tensor."""
    from adseg.inference.modelfolder import read_model
    from adseg.inference.predict import (
        Critics,
        PredictOptions,
        check_cases,
        collect_inputs,
        predict_case,
    )
    from adseg.inference.sliding import make_inferer
    from adseg.training.loader import case_items, validation_dataset

    model_dir = trained_model(exp)
    models = read_model(model_dir, [0])
    spec = models[0].spec
    nets = [m.segmentor("final", device) for m in models]
    cases = collect_inputs([exp["raw"] / "imagesTr"], spec["channel_names"])[:4]
    out = Path(tempfile.mkdtemp(dir=exp["folder"]))
    opts = PredictOptions(device=str(device.type), show_progress=False)
    critics = Critics.load(models, None, device)
    dims, axis = spec["network"]["spatial_dims"], spec["slice_axis"]
    inferer = make_inferer(dims, spec["patch_size"], axis)
    items = validation_dataset(case_items(exp["preprocessed"], [c.case_id for c in cases]))
    tensors = [item["image"].unsqueeze(0).to(device) for item in items]
    net = nets[0]

    def adseg_predict() -> None:
        check_cases(cases, models)  # what predict checks before writing anything
        for case in cases:
            predict_case(case, models, nets, critics, inferer, opts, out, device)

    @torch.inference_mode()
    def bare() -> None:
        # the same MONAI inferer (window, overlap, Gaussian blending), on tensors in memory
        for x in tensors:
            inferer(x, net).argmax(1).cpu()

    adseg_s, bare_s = compare(adseg_predict, bare, device, rounds, 1)
    n = len(cases)
    report["predict_vs_sliding_window"] = adseg_s / bare_s
    print(
        f"predict: adseg {adseg_s / n:.3f} s per volume, bare MONAI inference "
        f"{bare_s / n:.3f} s per volume ({n} volumes, shape {tuple(tensors[0].shape[2:])})"
    )


MEMORY_CHILD = """
import json, sys, torch
sys.path[:0] = [{root!r}, {root!r} + "/bench"]
from pathlib import Path
import run as b
exp = b.load_experiment(Path({folder!r}))
device = torch.device({device!r})
what = {what!r}
if device.type == "cuda":
    torch.cuda.reset_peak_memory_stats(device)
b.MEMORY_TASKS[what](exp, device)
gpu = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
print(json.dumps({{"rss_mb": b.peak_rss_mb(), "gpu_mb": gpu / 2**20}}))
"""


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB.

    Linux's ``VmHWM``, not ``getrusage``: ru_maxrss survives fork and exec, so a child of
    this (large) script would report the parent's peak (every figure read 876 MB).
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS


def _train_adseg(exp, device) -> None:
    job, trainer = trainer_for(exp, "ce", device)
    loader, _ = _loader(job, device)
    for _ in range(2):
        for batch in loader:
            trainer.supervised_step(batch["image"].to(device), batch["label"].to(device))


def _train_monai(exp, device) -> None:
    from adseg.training.networks import build_segmentor

    job, _ = trainer_for(exp, "ce", device)
    net_spec = job.spec["network"]
    net = build_segmentor(
        net_spec["name"],
        net_spec["spatial_dims"],
        net_spec["in_channels"],
        net_spec["out_channels"],
        net_spec["features"],
    ).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loader, _ = _loader(job, device)
    for _ in range(2):
        for batch in loader:
            opt.zero_grad()
            x, y = batch["image"].to(device), batch["label"].to(device)
            F.cross_entropy(net(x), y[:, 0].long()).backward()
            opt.step()


def _predict_adseg(exp, device) -> None:
    from adseg.inference.predict import PredictOptions, predict

    out = Path(tempfile.mkdtemp(dir=exp["folder"]))
    opts = PredictOptions(device=device.type, show_progress=False, folds=[0])
    predict([exp["raw"] / "imagesTr"], out, trained_model(exp), opts)


@torch.inference_mode()
def _predict_monai(exp, device) -> None:
    from adseg.inference.modelfolder import read_model
    from adseg.inference.sliding import make_inferer
    from adseg.training.loader import case_items, validation_dataset

    model = read_model(trained_model(exp), [0])[0]
    net, spec = model.segmentor("final", device), model.spec
    inferer = make_inferer(2, spec["patch_size"], spec["slice_axis"])
    ids = json.loads((exp["preprocessed"] / "dataset.json").read_text())["cases"]
    for item in validation_dataset(case_items(exp["preprocessed"], sorted(ids))):
        inferer(item["image"].unsqueeze(0).to(device), net).argmax(1).cpu()


MEMORY_TASKS = {
    "train_adseg": _train_adseg,
    "train_monai": _train_monai,
    "predict_adseg": _predict_adseg,
    "predict_monai": _predict_monai,
}


def load_experiment(folder: Path) -> dict:
    from adseg.config import load_config

    kept = folder / "config.yaml"
    return {
        "config": load_config(kept if kept.is_file() else ROOT / "config" / "config.yaml"),
        "raw": folder / "raw",
        "preprocessed": folder / "preprocessed",
        "splits": folder / "splits.json",
        "folder": folder,
    }


def bench_memory(exp: dict, device: torch.device, rounds: int, report: dict) -> None:
    """Peak memory of training and of predict, each in a fresh process, vs the baselines."""
    trained_model(exp)
    peaks = {}
    for what in MEMORY_TASKS:
        code = MEMORY_CHILD.format(
            root=str(ROOT), folder=str(exp["folder"]), device=str(device), what=what
        )
        run = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=False
        )
        if run.returncode:
            raise RuntimeError(f"memory run {what} failed:\n{run.stderr[-2000:]}")
        peaks[what] = json.loads(run.stdout.strip().splitlines()[-1])
    key = "gpu_mb" if device.type == "cuda" else "rss_mb"
    for task in ("train", "predict"):
        a, b = peaks[f"{task}_adseg"][key], peaks[f"{task}_monai"][key]
        report[f"{task}_peak_memory_vs_monai"] = a / b
        print(f"peak memory, {task} ({key}): adseg {a:.0f} MB, plain MONAI {b:.0f} MB")


OPTIONS: dict = {}
GROUPS = {
    "train": bench_train,
    "data": bench_data,
    "predict": bench_predict,
    "memory": bench_memory,
}


def add_spacing_option(parser: argparse.ArgumentParser) -> None:
    """``--spacing X Y Z``: the target spacing of the data made for a benchmark."""
    parser.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        metavar=("X", "Y", "Z"),
        help="target spacing in mm for new data (default: the config's 1 1 3; 0.5 0.5 3 gives "
        "4x the voxels, as a T2w's in-plane resolution)",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(GROUPS), nargs="+", help="figure groups")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--rounds", type=int, default=7, help="alternating timing rounds")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--data", type=Path, help="keep the generated data in this folder")
    parser.add_argument(
        "--patients",
        type=int,
        default=40,
        help="synthetic patients (default 40, the default workflow's cohort: a training fold "
        "of 30 cases, so an epoch has as many batches as the workflow's)",
    )
    add_spacing_option(parser)
    parser.add_argument(
        "--workers", type=int, help="loader workers for the data figure (default: the config's)"
    )
    args = parser.parse_args()
    OPTIONS["workers"] = args.workers
    from adseg.training.engine import pick_device

    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {machine(device)}; device {device}; {time.strftime('%Y-%m-%d')}")
    # without --data the generated cohort is removed at the end
    data = nullcontext(args.data) if args.data else tempfile.TemporaryDirectory(prefix="adseg-")
    with data as f:
        folder = Path(f)
        if not (folder / "splits.json").is_file():
            t0 = time.perf_counter()
            make_experiment(folder, args.patients, args.spacing)
            print(
                f"data: {args.patients} synthetic patients preprocessed in "
                f"{time.perf_counter() - t0:.0f} s"
            )
        exp = load_experiment(folder)
        report: dict[str, float] = {}
        for name in args.only or GROUPS:
            GROUPS[name](exp, device, args.rounds, report)
    print()
    missed = 0
    for name, ratio in report.items():
        op, goal = GOALS[name]
        if op == "report":
            print(f"{name} ratio={ratio:.3f} (reported, no goal)")
            continue
        ok = ratio <= goal if op == "<=" else ratio >= goal
        missed += not ok
        print(f"{name} ratio={ratio:.3f} goal{op}{goal:g}{'' if ok else '  MISSED'}")
    return GOAL_MISSED if missed else 0


GOAL_MISSED = 3

if __name__ == "__main__":
    sys.exit(main())
