"""Check every file of a cohort before any work, and report all problems at once.

The files of each case are read and checked by :func:`adseg.data.checks.check_case`, in
parallel; what it learns about a case is kept in the report's
:class:`~adseg.data.checks.CaseInfo` list, so the fingerprint and QC need not read the files
again.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from adseg.config import cohort_layout
from adseg.data.checks import CaseInfo, check_case
from adseg.data.cohort import Case, discover_cohort
from adseg.data.problems import Problem
from adseg.log import parallel_map


@dataclass
class ValidationReport:
    """All problems of a cohort and what was learned about each case."""

    root: str
    layout: str
    n_cases: int
    problems: list[Problem]
    cases: list[CaseInfo]
    layout_reason: str = ""

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "warning"]

    def ok(self) -> bool:
        """True when there is no error (warnings allowed)."""
        return not self.errors

    def format(self) -> str:
        """A summary line, then every problem grouped by file."""
        lines = [
            f"{self.root} ({self.layout} layout): {self.n_cases} cases, "
            f"{len(self.errors)} error(s), {len(self.warnings)} warning(s)"
        ]
        if self.layout_reason:
            lines.append(f"layout: {self.layout_reason}")
        by_path: dict[str, list[Problem]] = {}
        for p in self.problems:
            by_path.setdefault(p.path, []).append(p)
        for path, problems in by_path.items():
            lines.append(path)
            lines.extend(f"  {p.level.upper():<7} {p.message}" for p in problems)
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-ready dict; :meth:`from_dict` is its inverse."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ValidationReport:
        return cls(
            d["root"],
            d["layout"],
            d["n_cases"],
            [Problem(**p) for p in d["problems"]],
            [CaseInfo(**c) for c in d["cases"]],
            d.get("layout_reason", ""),
        )


def validate_cohort(
    root: str | Path,
    layout: str = "auto",
    patient_regex: str | None = None,
    grid_tolerance: float = 0.01,
    anisotropy_warning: float = 10.0,
    workers: int = 1,
    progress: bool = True,
) -> ValidationReport:
    """Discover a cohort and read every file of it, collecting every problem.

    Args:
        root: cohort folder (see :func:`adseg.data.cohort.discover_cohort`).
        layout: "auto", "nnunet" or "msd".
        patient_regex: see :func:`adseg.data.cohort.discover_cohort`.
        grid_tolerance: largest label/reference grid difference accepted, in voxels (spacing
            relative, origin in reference voxels, direction cosines absolute).
        anisotropy_warning: warn when a file's largest/smallest spacing exceeds this ratio.
        workers: processes reading cases in parallel (1: in this process).
        progress: show a progress bar over cases.

    Returns:
        The report; problems sorted by file, errors first within a file.
    """
    cohort, found = discover_cohort(root, layout, patient_regex)
    settings = (cohort.channel_names, cohort.labels, grid_tolerance, anisotropy_warning)
    jobs = [(case, *settings) for case in cohort.cases]
    results = parallel_map(check_case, jobs, workers, "validate", progress)
    problems = list(found) + [p for _, case_problems in results for p in case_problems]
    problems.sort(key=lambda p: (p.path, p.level != "error"))
    return ValidationReport(
        str(root),
        cohort.layout,
        len(cohort.cases),
        problems,
        [info for info, _ in results],
        cohort.layout_reason,
    )


def validate_with_config(
    root: str | os.PathLike, config: dict, workers: int = 1, progress: bool = True
) -> ValidationReport:
    """:func:`validate_cohort` with the layout and tolerances of a resolved config."""
    ds = config["dataset"]
    return validate_cohort(
        root,
        cohort_layout(config),
        ds["patient_regex"],
        ds["grid_tolerance"],
        ds["anisotropy_warning"],
        workers,
        progress,
    )


def case_warnings(report: ValidationReport, cases: list[Case]) -> dict[str, list[str]]:
    """The report's warnings per case id, matched by the files of each case."""
    owner = {}
    for case in cases:
        for path in [*(src.path for src in case.channels), case.label]:
            if path is not None:
                owner[str(path)] = case.case_id
    out: dict[str, list[str]] = {c.case_id: [] for c in cases}
    for problem in report.warnings:
        if problem.path in owner:
            out[owner[problem.path]].append(problem.message)
    return out
