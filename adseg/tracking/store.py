"""The MLflow stores: one client per tracking URI (made once per process), the lock that
orders creations in it, and how long this process waits for a store that failed."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from filelock import FileLock

from adseg.log import logger
from adseg.tracking.settings import sqlite_path

RETRY_AFTER_S = 30.0
"""After a failed send, this process's unforced sends to that store wait this long, doubling
with every further failure (up to 10 minutes)."""

# An unreachable server must cost seconds, not MLflow's default minutes of HTTP retries: a
# failed send is retried by the journal anyway.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

# error codes that retrying cannot fix: the event is reported and skipped
PERMANENT = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "BAD_REQUEST"}

_down_until: dict[str, float] = {}
_failures: dict[str, int] = {}
_warned: set[str] = set()
_stores: dict[str, Store] = {}


def store_for(uri: str, lock: str) -> Store:
    """This process's client of store ``uri`` (``lock``: its :func:`~adseg.tracking.settings.
    lock_path`)."""
    if uri not in _stores:
        _stores[uri] = Store(uri, lock)
    return _stores[uri]


def backing_off(uri: str) -> bool:
    """Whether unforced sends to ``uri`` wait after a recent failure (:data:`RETRY_AFTER_S`)."""
    return _down_until.get(uri, 0.0) > time.monotonic()


def note_failure(uri: str, err: Exception, kept_in: Path) -> None:
    """A send to ``uri`` failed: unforced sends wait, longer with every failure in a row; the
    first failure per store is reported (its events are kept in journal folder ``kept_in``)."""
    failures = _failures.get(uri, 0) + 1
    _failures[uri] = failures
    _down_until[uri] = time.monotonic() + min(600.0, RETRY_AFTER_S * 2 ** (failures - 1))
    if uri not in _warned:
        _warned.add(uri)
        logger.warning(
            "MLflow tracking at %s failed (%s); work goes on and events are kept "
            "in %s (sent by the next run or `adseg mlflow-sync`)",
            uri,
            short_error(err),
            kept_in,
        )


def note_success(uri: str) -> None:
    """A send to ``uri`` went through: no more waiting for it."""
    _down_until.pop(uri, None)
    _failures.pop(uri, None)


class RunGone(Exception):
    """The run is not in the store: deleted (``deleted``), or never there (a new database)."""

    def __init__(self, deleted: bool) -> None:
        self.deleted = deleted


def short_error(err: Exception) -> str:
    """An error in one line, for a warning."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300] if text else ''}"


def _artifact_root(uri: str) -> str | None:
    """Artifacts of a sqlite store go beside its file (a server decides for itself)."""
    db = sqlite_path(uri)
    return (db.parent / "mlartifacts").resolve().as_uri() if db else None


class Store:
    """An MLflow client for one tracking URI, with the lock that orders creations."""

    def __init__(self, uri: str, lock: str) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.lock = FileLock(lock, timeout=300)
        db = sqlite_path(uri)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        with self.lock:  # one process creates the sqlite tables
            self.client = MlflowClient(tracking_uri=uri)
            self.client.search_experiments(max_results=1)

    def experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            with self.lock:
                exp = self.client.get_experiment_by_name(name)
                if exp is None:
                    return self.client.create_experiment(
                        name, artifact_location=_artifact_root(self.uri)
                    )
        if exp.lifecycle_stage != "active":
            raise RuntimeError(
                f"MLflow experiment {name!r} is deleted in {self.uri}; restore it (mlflow "
                "experiments restore) or remove it for good (mlflow gc)"
            )
        return exp.experiment_id

    def _search(self, exp_id: str, where: dict[str, str]) -> list:
        text = " and ".join(f"tags.`{k}` = '{v}'" for k, v in where.items())
        return self.client.search_runs(
            [exp_id], filter_string=text, order_by=["attributes.start_time ASC"]
        )

    def _complete(self, run, ref: dict, replaced: list) -> str:
        """Log a new run's params and mark the runs it replaces; a run made by a process that
        died before this is completed by the next one that finds it."""
        from mlflow.entities import Param

        run_id = run.info.run_id
        if run.data.tags.get("adseg.complete") == "true":
            return run_id
        params = [Param(k, v) for k, v in ref["params"].items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(run_id, params=params[i : i + 100])
        for old in replaced:
            if "adseg.superseded_by" not in old.data.tags:
                self.client.set_tag(old.info.run_id, "adseg.superseded_by", run_id)
        self.client.set_tag(run_id, "adseg.complete", "true")
        return run_id

    def parent(self, exp_id: str, ref: dict) -> str:
        key = {"adseg.role": "parent", "scheme": ref["scheme"]}
        mine = key | {"adseg.config_hash": ref["config_hash"]}
        with self.lock:
            found = self._search(exp_id, mine)
            mine_ids = {r.info.run_id for r in found}
            others = [r for r in self._search(exp_id, key) if r.info.run_id not in mine_ids]
            if found:
                return self._complete(found[0], ref, others)
            tags = ref["tags"] | mine
            if others:
                tags["adseg.supersedes"] = ",".join(r.info.run_id for r in others)
            run = self.client.create_run(exp_id, run_name=ref["run_name"], tags=tags)
            return self._complete(run, ref, others)

    def fold(self, exp_id: str, ref: dict) -> str:
        parent_id = self.parent(exp_id, ref["parent"])
        with self.lock:
            found = self._search(exp_id, {"adseg.uid": ref["uid"]})
            # runs of the same fold and training seed: a rerun replaces them, another seed not
            same = {"mlflow.parentRunId": parent_id, "fold": str(ref["fold"])}
            if "seed" in ref["tags"]:
                same["seed"] = ref["tags"]["seed"]
            siblings = [
                r for r in self._search(exp_id, same) if r.data.tags.get("adseg.uid") != ref["uid"]
            ]
            if found:
                return self._complete(found[0], ref, siblings)
            tags = ref["tags"] | {
                "adseg.uid": ref["uid"],
                "adseg.role": "fold",
                "mlflow.parentRunId": parent_id,
                "adseg.attempt": str(len(siblings) + 1),
            }
            if siblings:
                tags["adseg.rerun_of"] = siblings[-1].info.run_id
            run = self.client.create_run(exp_id, run_name=ref["run_name"], tags=tags)
            return self._complete(run, ref, siblings)

    def resolve(self, ref: dict) -> str:
        """The run id of ``ref``: found by its tags, or created."""
        exp_id = self.experiment_id(ref["experiment"])
        return self.parent(exp_id, ref) if ref["role"] == "parent" else self.fold(exp_id, ref)

    def send(self, run_id: str, events: list[dict], folder: Path, keep_blobs: bool) -> int:
        """Send the first event of ``events`` (or a run of metric events as one batch); return
        how many were sent. An event the store refuses for good is reported and skipped.

        Uploaded artifacts are removed from ``folder`` unless ``keep_blobs`` (a copy into
        another store than the run's own).

        Raises:
            RunGone: the run is deleted, or not in the store.
        """
        from mlflow.exceptions import MlflowException

        n = max(1, _metric_events_fitting(events)) if events[0]["op"] == "metrics" else 1
        try:
            self._send(run_id, events[:n], folder, keep_blobs)
        except MlflowException as err:
            if err.error_code not in PERMANENT:
                raise
            self._check_run(run_id)
            if n == 1:
                logger.warning(
                    "MLflow refused a %s event of run %s: %s", events[0]["op"], run_id, err
                )
            else:  # find the bad one: send the batch's events one by one
                for i in range(n):
                    self.send(run_id, events[i : i + 1], folder, keep_blobs)
        return n

    def _check_run(self, run_id: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise RunGone(deleted=False) from err
            raise
        if run.info.lifecycle_stage != "active":
            raise RunGone(deleted=True)

    def _send(self, run_id: str, events: list[dict], folder: Path, keep_blobs: bool) -> None:
        from mlflow.entities import Metric, RunTag

        first = events[0]
        if first["op"] == "metrics":
            batch = [
                Metric(k, v, e["time"], e["step"]) for e in events for k, v in e["metrics"].items()
            ]
            for i in range(0, len(batch), 900):  # MLflow takes 1000 metrics per batch
                self.client.log_batch(run_id, metrics=batch[i : i + 900])
        elif first["op"] == "tags":
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in first["tags"].items()])
        elif first["op"] == "artifact":
            blob = folder / first["blob"]
            if blob.is_file():
                self.client.log_artifact(run_id, str(blob), first["artifact_path"])
                if not keep_blobs:
                    shutil.rmtree(blob.parent, ignore_errors=True)
            else:
                logger.warning("%s was sent to the run's own store and removed; not logged", blob)
        elif first["op"] == "status":
            if first["status"] == "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
            else:
                self.client.set_terminated(run_id, first["status"], end_time=first["time"])


def _metric_events_fitting(events: list[dict], limit: int = 900) -> int:
    """How many leading metric events fit in one MLflow batch (at most 1000 metrics)."""
    total = 0
    for i, e in enumerate(events):
        if e["op"] != "metrics":
            return i
        total += len(e["metrics"])
        if total > limit:
            return i
    return len(events)
