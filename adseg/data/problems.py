"""What cohort discovery and validation report: where a channel lives and the problems found.

Shared by :mod:`adseg.data.layouts`, :mod:`adseg.data.cohort`, :mod:`adseg.data.checks` and
the scan inputs of :mod:`adseg.inference`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ChannelSource:
    """Where one channel of one case lives.

    Attributes:
        path: the NIfTI file.
        index: None for a 3-D file; k for channel k (4th axis) of a 4-D file.
    """

    path: Path
    index: int | None


@dataclass(frozen=True)
class Problem:
    """One problem found in a cohort, about one file (or folder)."""

    level: str  # "error" | "warning"
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.level.upper():<6} {self.path}: {self.message}"


class Problems(list):
    """A list of :class:`Problem` with shorthands to add them."""

    def error(self, path: str | Path, message: str) -> None:
        self.append(Problem("error", str(path), message))

    def warning(self, path: str | Path, message: str) -> None:
        self.append(Problem("warning", str(path), message))
