"""Logging and progress bars that read well both in a terminal and in a Snakemake log file."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

logger = logging.getLogger("adseg")


def setup_logging(verbose: bool = False) -> None:
    """Send adseg's log records to stderr with a timestamp (idempotent)."""
    if logger.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)


def progress(
    items: Iterable[T], desc: str, total: int | None = None, enabled: bool = True
) -> Iterator[T]:
    """A tqdm bar over ``items``.

    In a terminal it redraws in place; in a log file (Snakemake redirects stderr) it writes a
    line at most every 30 s instead of flooding the log with carriage returns.
    """
    interactive = sys.stderr.isatty()
    return iter(
        tqdm(
            items,
            desc=desc,
            total=total,
            disable=not enabled,
            file=sys.stderr,
            mininterval=0.1 if interactive else 30.0,
            dynamic_ncols=interactive,
            ascii=not interactive,
        )
    )
