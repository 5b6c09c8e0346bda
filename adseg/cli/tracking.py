"""``adseg mlflow-sync``: send the MLflow events kept while the tracking server was
unreachable, then register the model versions that waited for them."""

from __future__ import annotations

import argparse
from pathlib import Path

from adseg.cli.common import UserError, add_command
from adseg.log import logger

EXAMPLE = "adseg mlflow-sync results/default"


def _add_mlflow_sync(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "mlflow-sync",
        "Send MLflow events kept while the tracking server was unreachable; register the "
        "model versions that waited for them.",
        _mlflow_sync,
        EXAMPLE,
        config=False,
    )
    p.add_argument("paths", type=Path, nargs="+", help="experiment, scheme or fold folders")
    p.add_argument(
        "--tracking-uri", help="send to this store instead of the one each run was made for"
    )


def _mlflow_sync(args) -> None:
    from adseg.tracking import register_pending, sync

    for path in args.paths:
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: no such folder")
    runs, sent, pending = sync(args.paths, args.tracking_uri)
    if not runs:
        where = ", ".join(map(str, args.paths))
        raise UserError(f"no MLflow journals (tracking/*/ref.json) under {where}")
    logger.info("sent %d events of %d runs; %d pending", sent, runs, pending)
    registered, waiting = register_pending(args.paths, args.tracking_uri)
    if registered or waiting:
        logger.info("registered model versions: %d done, %d waiting", registered, waiting)
    if pending or waiting:
        raise UserError(
            f"{pending} events could not be sent and {waiting} model versions not registered; "
            "the tracking store is unreachable"
        )


COMMANDS = {"mlflow-sync": _add_mlflow_sync}
