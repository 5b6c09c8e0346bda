"""The base class of adseg's user-facing errors.

An :class:`AdsegError` is an error the user can fix (a config, a cohort, a model folder, an
input scan, a training run that diverged): the ``adseg`` command line prints its message, with
no traceback, and exits with status 1. The library raises subclasses that keep their older
bases too (``ConfigError`` is still a ``ValueError``), so existing ``except`` clauses still
catch them.
"""

from __future__ import annotations


class AdsegError(Exception):
    """An error the user can fix; the CLI prints its message (no traceback) and exits 1.

    The CLI writes ``adseg COMMAND: HEADING: MESSAGE``. ``heading`` is ``error`` unless a
    subclass names another in its class statement, as
    ``class TrainingError(AdsegError, RuntimeError, heading="training stopped")`` does;
    its subclasses inherit it.
    """

    heading = "error"

    def __init_subclass__(cls, heading: str | None = None, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if heading is not None:
            cls.heading = heading
