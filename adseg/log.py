"""Logging, progress bars and the parallel map that every per-case stage uses.

Progress bars read well both in a terminal and in a Snakemake log file."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

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


def _single_threaded() -> None:
    """Pool initializer: one thread per process, since the pool already fills the cores."""
    import SimpleITK as sitk
    import torch

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    torch.set_num_threads(1)


def parallel_map(
    fn: Callable[..., T], jobs: list[tuple], workers: int, desc: str, show: bool = True
) -> list[T]:
    """``[fn(*job) for job in jobs]`` in order, in ``workers`` processes, with a progress bar.

    With one worker everything runs in this process (easier to debug, no pickling).
    """
    if workers <= 1:
        return [fn(*job) for job in progress(jobs, desc, enabled=show)]
    with ProcessPoolExecutor(max_workers=workers, initializer=_single_threaded) as pool:
        futures: list[Any] = [pool.submit(fn, *job) for job in jobs]
        return [f.result() for f in progress(futures, desc, enabled=show)]
