"""What bench/gpu.sh measured, in one page, from its output folder.

    python bench/gpu_report.py OUT        # OUT: the folder bench/gpu.sh wrote ($OUT)

Reads only that folder (stages.tsv, bench_run.txt, the stages' benchmark files, training logs,
nvidia-smi dmon logs and per-process GPU memory logs), so it runs anywhere on a copy of it.
"""

from __future__ import annotations

import contextlib
import csv
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def table(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ","))


def section(title: str):
    def wrap(fn):
        def run(out: Path) -> None:
            print(f"\n## {title}")
            try:
                fn(out)
            except Exception as err:  # noqa: BLE001 - a report of what is there, whatever is missing
                print(f"(could not read: {type(err).__name__}: {err})")

        return run

    return wrap


@section("stages (exit 124: hit its time limit)")
def stages(out: Path) -> None:
    print((out / "stages.tsv").read_text().rstrip())


@section("machine")
def machine(out: Path) -> None:
    for name in ("gpu.csv", "versions.txt", "import_times.txt", "kit_imports.tsv"):
        path = out / name
        if path.is_file():
            print(f"-- {name}")
            print(path.read_text().rstrip())


@section("A: bench/run.py")
def bench_run(out: Path) -> None:
    keep = ("machine:", "data:", "train step", "predict:", "peak memory", "bench/run.py")
    for line in (out / "bench_run.txt").read_text().splitlines():
        if line.startswith(keep) or "ratio=" in line or "Error" in line:
            print(line)
    exit_file = out / "A" / "bench_exit.txt"
    if exit_file.is_file():
        print(exit_file.read_text().rstrip())


def epoch_seconds(folder: Path) -> None:
    """Median seconds of an epoch per scheme (the first epoch, with its warm-up, apart)."""
    per: dict[str, list[float]] = defaultdict(list)
    first: dict[str, list[float]] = defaultdict(list)
    for path in sorted(folder.glob("*.tsv")):
        scheme = re.sub(r"_fold_\d+$", "", path.stem)
        rows = table(path)
        if rows:
            first[scheme].append(float(rows[0]["seconds"]))
            per[scheme] += [float(r["seconds"]) for r in rows[1:]]
    for scheme in sorted(first):
        later = f"{statistics.median(per[scheme]):.2f} s" if per[scheme] else "-"
        print(
            f"  {scheme:<12} epochs after the first: median {later} ({len(per[scheme])} epochs); "
            f"first epoch median {statistics.median(first[scheme]):.2f} s"
        )


def rules(folder: Path) -> None:
    from workflow import job_times

    times = job_times(folder)
    per_rule: dict[str, list[float]] = defaultdict(list)
    for name, (s, _) in times.items():
        per_rule[re.sub(r"_(ce|dicece|adversarial|hybrid)_fold_\d+$", "", name)].append(s)
    print(f"  {'rule':<16} {'jobs':>4} {'sum s':>8} {'max s':>8}")
    for rule, values in sorted(per_rule.items(), key=lambda kv: -sum(kv[1])):
        print(f"  {rule:<16} {len(values):>4} {sum(values):>8.1f} {max(values):>8.1f}")


def workflow_stage(out: Path, name: str) -> None:
    folder = out / name
    wall = folder / "wall.tsv"
    if wall.is_file():
        print("wall:", wall.read_text().strip())
    if (folder / "benchmarks").is_dir():
        rules(folder / "benchmarks")
    if (folder / "training_logs").is_dir():
        epoch_seconds(folder / "training_logs")
    if (folder / "summary.md").is_file():
        lines = (folder / "summary.md").read_text().splitlines()
        print("  summary.md:", *[f"  {x}" for x in lines if x.startswith("|")][:6], sep="\n")


@section("B: default workflow (config/config.yaml)")
def stage_b(out: Path) -> None:
    workflow_stage(out, "B")
    text = out / "B" / "workflow_py.txt"
    if text.is_file():
        print("-- bench/workflow.py --results")
        print(text.read_text().rstrip())


@section("C: config/gpu.yaml workflow")
def stage_c(out: Path) -> None:
    workflow_stage(out, "C")


@section("D: 4 hybrid folds sharing the GPU vs one at a time")
def stage_d(out: Path) -> None:
    rows = table(out / "D" / "jobs.tsv")
    for r in rows:
        seconds = float(r["seconds"])
        print(f"  {r['variant']:<11} {r['job']:<8} exit {r['exit']:>3} {seconds:8.1f} s")
    total = {r["variant"]: float(r["seconds"]) for r in rows if r["job"].startswith("all")}
    if len(total) == 2 and total["concurrent"] > 0:
        print(f"  one at a time / side by side: {total['sequential'] / total['concurrent']:.2f}")
    if (out / "D" / "training_logs").is_dir():
        epoch_seconds(out / "D" / "training_logs")


@section("E: config/gpu-3d.yaml, one fold")
def stage_e(out: Path) -> None:
    path = out / "E" / "times.tsv"
    if path.is_file():
        print(path.read_text().rstrip())
    if (out / "E" / "training_logs").is_dir():
        epoch_seconds(out / "E" / "training_logs")


def dmon(path: Path) -> str:
    """Mean and peak SM utilisation and peak frame-buffer memory in an nvidia-smi dmon log."""
    header, sm, fb = None, [], []
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            if header is None:
                header = line.lstrip("#").split()
            continue
        parts = line.split()
        if header and len(parts) == len(header):
            row = dict(zip(header, parts, strict=True))
            for key, into in (("sm", sm), ("fb", fb)):
                with contextlib.suppress(KeyError, ValueError):
                    into.append(float(row[key]))
    if not sm:
        return "no samples"
    return (
        f"{len(sm)} s sampled: SM busy mean {statistics.mean(sm):.0f} %, max {max(sm):.0f} %; "
        f"memory used max {max(fb) if fb else float('nan'):.0f} MB"
    )


@section("GPU use per stage (nvidia-smi dmon -s um; per-process memory)")
def gpu_use(out: Path) -> None:
    for folder in sorted(p for p in out.iterdir() if p.is_dir()):
        if (folder / "dmon.txt").is_file():
            print(f"  {folder.name}: {dmon(folder / 'dmon.txt')}")
        rows = table(folder / "gpu_apps.csv")
        if not rows:
            continue
        peak: dict[tuple[str, str], float] = {}
        at: dict[str, float] = defaultdict(float)
        for r in rows:
            try:  # the last line may be cut short where the logger was stopped
                mib = float(r["used_mib"])
            except (TypeError, ValueError):
                continue
            key = (r["pid"], r["job"])
            peak[key] = max(peak.get(key, 0.0), mib)
            at[r["t"]] += mib
        together = max(at.values())
        print(f"  {folder.name}: {len(peak)} processes; all together at most {together:.0f} MiB")
        by_job: dict[str, float] = {}
        for (_, job), mib in peak.items():
            by_job[job] = max(by_job.get(job, 0.0), mib)
        for job, mib in sorted(by_job.items(), key=lambda kv: -kv[1])[:16]:
            print(f"    {mib:8.0f} MiB  {job}")


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "gpu-out")
    print(f"# adseg GPU measurement: {out}")
    for part in (stages, machine, bench_run, stage_b, stage_c, stage_d, stage_e, gpu_use):
        part(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
