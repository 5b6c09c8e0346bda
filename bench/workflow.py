"""The embedded default workflow's time: total, per rule, and the critical path.

    python bench/workflow.py                       # runs `snakemake --cores all` afresh
    python bench/workflow.py --results results     # reads an earlier run's benchmarks

Every rule has a Snakemake ``benchmark:`` file (``<experiment>/benchmarks/``), which records
each job's wall time and peak memory. This script sums them per rule. It also walks the job
graph (``snakemake --dag``) for the longest chain of job times: no number of cores can make
the run shorter than that chain.
"""

from __future__ import annotations

import argparse
import csv
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def snakemake(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )


def job_times(bench_dir: Path) -> dict[str, tuple[float, float]]:
    """Benchmark file stem (``train_hybrid_fold_2``) → (seconds, peak RSS MB)."""
    out = {}
    for path in sorted(bench_dir.glob("*.tsv")):
        with open(path) as f:
            row = next(csv.DictReader(f, delimiter="\t"))
        rss = float(row["max_rss"]) if row.get("max_rss") not in (None, "", "NA", "-") else 0.0
        out[path.stem] = (float(row["s"]), rss)
    return out


def dag(config_args: list[str]) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Node id → job name (rule and wildcards, as in the benchmark files), and edges."""
    run = snakemake("--dag", "--forceall", *config_args)
    if run.returncode:
        raise RuntimeError(run.stderr[-2000:])
    nodes, edges = {}, []
    for line in run.stdout.splitlines():
        m = re.match(r'\s*(\d+)\[label = "([^"]+)"', line)
        if m:
            parts = m.group(2).split("\\n")
            wildcards = dict(p.split(": ", 1) for p in parts[1:] if ": " in p)
            name = parts[0]
            if "scheme" in wildcards:
                name += f"_{wildcards['scheme']}_fold_{wildcards['fold']}"
            nodes[m.group(1)] = name
        m = re.match(r"\s*(\d+) -> (\d+)", line)
        if m:
            edges.append((m.group(1), m.group(2)))
    # Snakemake leaves the wildcards out of some labels (evaluate): take them from the job's
    # input, the train job of the same scheme and fold
    for a, b in edges:
        suffix = re.search(r"_\w+_fold_\d+$", nodes[a])
        if suffix and nodes[b] == "evaluate":
            nodes[b] += suffix.group(0)
    return nodes, edges


def critical_path(nodes, edges, seconds: dict[str, float]) -> tuple[float, list[str]]:
    preds = defaultdict(list)
    for a, b in edges:
        preds[b].append(a)
    memo: dict[str, tuple[float, list[str]]] = {}

    def longest(node: str) -> tuple[float, list[str]]:
        if node not in memo:
            best = max((longest(p) for p in preds[node]), default=(0.0, []), key=lambda x: x[0])
            memo[node] = (best[0] + seconds.get(nodes[node], 0.0), [*best[1], nodes[node]])
        return memo[node]

    return max((longest(n) for n in nodes), key=lambda x: x[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, help="an earlier run's results_dir to read")
    parser.add_argument("--experiment", default="default")
    args = parser.parse_args()
    results = args.results or Path(tempfile.mkdtemp(prefix="adseg-workflow-")) / "results"
    config_args = ["--config", f"results_dir={results.resolve()}"]
    total = None
    if args.results is None:
        t0 = time.perf_counter()
        run = snakemake("--cores", "all", *config_args)
        total = time.perf_counter() - t0
        if run.returncode:
            print(run.stderr[-3000:], file=sys.stderr)
            return 1
    times = job_times(results / args.experiment / "benchmarks")
    per_rule: dict[str, list[float]] = defaultdict(list)
    for name, (s, _) in times.items():
        per_rule[re.sub(r"_(ce|dicece|adversarial|hybrid)_fold_\d+$", "", name)].append(s)
    if total is not None:
        print(f"snakemake --cores all on the default config: {total:.0f} s wall")
        # kept for a reread (--results) or a look at the run itself
        print(f"results: {results} (read again with --results {results})")
    print(f"{'rule':<16} {'jobs':>4} {'sum s':>8} {'max s':>8}")
    for rule, values in sorted(per_rule.items(), key=lambda kv: -sum(kv[1])):
        print(f"{rule:<16} {len(values):>4} {sum(values):>8.1f} {max(values):>8.1f}")
    peak = max(times.items(), key=lambda kv: kv[1][1])
    print(f"largest peak RSS: {peak[0]} {peak[1][1]:.0f} MB")
    nodes, edges = dag(config_args)
    length, path = critical_path(nodes, edges, {k: v[0] for k, v in times.items()})
    print(f"critical path {length:.0f} s: " + " → ".join(p for p in path if p != "all"))
    busy = sum(v[0] for v in times.values())
    print(f"job time in all {busy:.0f} s; with 2 cores the run needs at least {busy / 2:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
