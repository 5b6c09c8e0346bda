"""Experiment tracking in MLflow: loss-free, safe for parallel jobs. The only module that
imports mlflow.

In MLflow, each config ``experiment`` is one MLflow experiment. Each scheme has one parent run
per set of model-defining settings, and each cross-validation fold is a child run nested in
it. Metric names are the same for every scheme, so the UI compares them side by side:

- ``train/...`` and ``val/dice`` per epoch, ``step`` = epoch (child);
- ``test/<label>/<metric>``: the mean over the fold's held-out patients (child), or over all
  patients pooled over the folds (parent). The parent also has ``_std``, ``_median``, ``_n``,
  ``_fold_std`` (std of the fold means) and ``_p_vs_<scheme>`` (paired Wilcoxon test).

Params are the resolved config's settings that define the trained model, flattened. They are
immutable, as MLflow params are. The ``evaluate`` settings are tags, because a new evaluation
of the same model may change them.

**Nothing is lost.** Every event (params, tags, metrics, artifacts, status) is first appended
to the run's journal, ``<folder>/tracking/<uid>/events.jsonl``. Artifacts are hard-linked (or
copied) beside it. Only then is the event sent. When the tracking server or database cannot
be reached, the command goes on, and the events stay in the journal. The next command that
tracks the same run sends them, and so does ``adseg mlflow-sync``. Runs are found by tags
(a uid per fold run, and scheme plus settings hash per parent), so sending twice does not
make a second run, and MLflow drops a metric that is sent twice.

**Parallel jobs.** Creating the experiment, the parent run and the sqlite tables is done
under a file lock. The lock sits beside the sqlite file, or in the experiment's results
folder for a server. Other writes rely on the store: sqlite waits on its busy timeout, and a
write that still fails stays in the journal until the next flush.

**Reruns.** A resumed training job (``--resume auto`` finding its checkpoint) continues its
run and counts ``adseg.resumed``. A fresh start of a fold is a new run tagged
``adseg.attempt`` and ``adseg.rerun_of``, and the run it replaces is tagged
``adseg.superseded_by``. A parent made for changed settings is tagged in the same way.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from adseg import __version__
from adseg.config import experiment_dir
from adseg.io import read_json, write_json, write_text
from adseg.log import logger

ENV_CONFIG = "ADSEG_WORKFLOW_CONFIG"
"""Environment variable holding the workflow's whole resolved config as JSON (set by the
Snakefile): jobs get only the config sections they use, but track under the whole config."""

JOURNALS = "tracking"
RETRY_AFTER_S = 30.0
"""After a failed send, this process's unforced sends to that store wait this long, doubling
with every further failure (up to 10 minutes)."""

# An unreachable server must cost seconds, not MLflow's default minutes of HTTP retries: a
# failed send is retried by the journal anyway.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

# error codes that retrying cannot fix: the event is reported and skipped
PERMANENT = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "BAD_REQUEST"}
EPOCH_METRICS = {
    "loss_s": "train/loss_s",
    "loss_ce": "train/loss_ce",
    "loss_adv": "train/loss_adv",
    "loss_d": "train/loss_d",
    "d_real": "train/d_real",
    "d_fake": "train/d_fake",
    "grad_norm_s": "train/grad_norm_s",
    "grad_norm_d": "train/grad_norm_d",
    "lr_s": "train/lr_s",
    "lr_d": "train/lr_d",
    "seconds": "train/epoch_seconds",
    "val_dice": "val/dice",
    # the GAN tasks (adseg.gan)
    "loss_g": "train/loss_g",
    "loss_l1": "train/loss_l1",
    "grad_norm_g": "train/grad_norm_g",
    "std_ratio": "train/std_ratio",
    "instance_noise": "train/instance_noise",
    "val_mae": "val/mae",
    "val_psnr": "val/psnr",
    "val_ssim": "val/ssim",
}
_down_until: dict[str, float] = {}
_failures: dict[str, int] = {}
_warned: set[str] = set()
# settings that do not change a trained model (a resumed checkpoint may differ in them, see
# adseg.training.segmentation.fingerprint): params, but not part of a parent run's identity
RUNTIME = {
    "train": ("threads", "workers", "device", "amp", "val_every"),
    "preprocess": ("workers",),
    "gan": ("device", "amp"),
}
_stores: dict[str, _Store] = {}


def tracking_config(config: dict) -> dict:
    """The config runs are tracked under: the workflow's (see :data:`ENV_CONFIG`), else
    ``config``."""
    raw = os.environ.get(ENV_CONFIG)
    return json.loads(raw) if raw else config


def enabled(config: dict) -> bool:
    return bool(tracking_config(config)["mlflow"]["enabled"])


def tracking_uri(config: dict) -> str:
    """``mlflow.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else sqlite under results_dir."""
    uri = config["mlflow"]["tracking_uri"] or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return f"sqlite:///{(Path(config['results_dir']) / 'mlflow.db').resolve()}"
    db = _sqlite_path(uri)
    # a relative sqlite path would name another file when a job or sync runs elsewhere
    return f"sqlite:///{db.resolve()}" if db is not None else uri


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


def _lock_path(config: dict, uri: str) -> str:
    db = _sqlite_path(uri)
    folder = experiment_dir(config) if db is None else db.parent
    return str((folder / f"{db.name if db else '.mlflow'}.lock").resolve())


def model_settings(config: dict, scheme: str) -> dict:
    """A scheme's settings as run params: the resolved config without the tracking and
    evaluation sections, the list of schemes, and (for schemes without a discriminator) the
    discriminator's section. A GAN model (``synthesis-dcgan``) gets the cohort's sections and
    its own part of the ``gan`` section only."""
    from adseg.gan.settings import TASKS, job_settings, modes_settings, split_name

    shared = ("experiment", "results_dir", "dataset", "preprocess", "folds")
    if scheme.startswith("modes-"):  # the mode-coverage study: no cohort, one loss
        modes = modes_settings(config, scheme.removeprefix("modes-"))
        return {"experiment": config["experiment"], "gan": {"modes": modes}}
    if scheme.startswith(tuple(f"{t}-" for t in TASKS)):
        task, name = split_name(scheme)
        return {k: copy.deepcopy(config[k]) for k in shared} | {
            "gan": job_settings(config, task, name)
        }
    out = {k: copy.deepcopy(v) for k, v in config.items() if k not in ("mlflow", "evaluate")}
    out.pop("schemes", None)
    if scheme not in ("adversarial", "hybrid"):
        out.pop("adversarial", None)
    return out


def settings_hash(settings: dict) -> str:
    """What identifies a parent run: the settings less the :data:`RUNTIME` ones."""
    key = copy.deepcopy(settings)
    for section, names in RUNTIME.items():
        for name in names:
            key.get(section, {}).pop(name, None)
    return _digest(key)


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 0.001}}`` → ``{"train.lr": "0.001"}``; lists and null as JSON."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= flatten(value, f"{name}.")
        else:
            out[name] = value if isinstance(value, str) else json.dumps(value)
    return out


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def _git_commit() -> str | None:
    """The commit of this adseg checkout (``-dirty`` with uncommitted changes), if it is one."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")


def _dataset_tag(config: dict) -> str:
    d = config["dataset"]
    if d["source"] == "synthetic":
        s = d["synthetic"]
        return f"synthetic ({s['n_patients']} patients, seed {s['seed']})"
    return str(d["path"])


def _common_tags(config: dict, scheme: str) -> dict[str, str]:
    tags = {
        "scheme": scheme,
        "dataset": _dataset_tag(config),
        "host": socket.gethostname(),
        "adseg.version": __version__,
        "adseg.experiment_dir": str(experiment_dir(config).resolve()),
    }
    commit = _git_commit()
    if commit:
        tags |= {"git_commit": commit, "mlflow.source.git.commit": commit.removesuffix("-dirty")}
    return tags


def parent_ref(config: dict, scheme: str) -> dict:
    """What identifies (and creates) a scheme's parent run."""
    settings = model_settings(config, scheme)
    uri = tracking_uri(config)
    return {
        "role": "parent",
        "uri": uri,
        "lock": _lock_path(config, uri),
        "experiment": config["experiment"],
        "scheme": scheme,
        "config_hash": settings_hash(settings),
        "run_name": scheme,
        "params": flatten(settings) | {"scheme": scheme},
        "tags": _common_tags(config, scheme),
    }


def _artifact_root(uri: str) -> str | None:
    """Artifacts of a sqlite store go beside its file (a server decides for itself)."""
    db = _sqlite_path(uri)
    return (db.parent / "mlartifacts").resolve().as_uri() if db else None


# --- the journal --------------------------------------------------------------------------


class Journal:
    """One run's events, kept on disk until MLflow has them.

    ``folder`` holds ``ref.json`` (what identifies the run), ``events.jsonl`` (one event per
    line, appended and fsynced), ``state.json`` (per store: the MLflow run id and how many
    events it has) and ``blobs/`` (artifacts waiting to be uploaded).
    """

    def __init__(self, folder: Path) -> None:
        self.dir = Path(folder)
        self.ref = read_json(self.dir / "ref.json")
        self._lock = FileLock(str(self.dir / ".lock"))

    @classmethod
    def create(cls, folder: Path, ref: dict) -> Journal:
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "ref.json", ref)
        return cls(folder)

    @property
    def events_file(self) -> Path:
        return self.dir / "events.jsonl"

    def append(self, op: str, **data: Any) -> None:
        line = json.dumps({"op": op, "time": int(time.time() * 1000), **data}, allow_nan=True)
        with open(self.events_file, "a+b") as f:
            f.seek(0, os.SEEK_END)
            if f.tell():
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a line cut short by a crash stays a line of its own
                    line = "\n" + line
            f.write((line + "\n").encode())
            f.flush()
            os.fsync(f.fileno())

    def metrics(self, values: dict[str, float], step: int = 0) -> None:
        clean = {k: float(v) for k, v in values.items() if v is not None}
        if clean:
            self.append("metrics", metrics=clean, step=step)

    def tags(self, tags: dict[str, Any]) -> None:
        self.append("tags", tags={k: str(v) for k, v in tags.items()})

    def status(self, status: str) -> None:
        self.append("status", status=status)

    def last_status(self) -> str | None:
        return next((e["status"] for e in reversed(self.events()) if e["op"] == "status"), None)

    def count_tag(self, key: str) -> int:
        """How many times tag ``key`` was set (an evaluation or summary counter)."""
        return sum(1 for e in self.events() if e["op"] == "tags" and key in e["tags"])

    def artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Keep a copy of ``path`` (a hard link where possible) and log it when sending.

        The copy is taken now: a file rewritten later (a retrained checkpoint) does not change
        what this run gets.
        """
        path = Path(path)
        if not path.is_file():
            logger.warning("not logged to MLflow: %s does not exist", path)
            return
        blob = self.dir / "blobs" / uuid.uuid4().hex[:12] / path.name
        blob.parent.mkdir(parents=True)
        try:
            os.link(path, blob)
        except OSError:
            shutil.copy2(path, blob)
        self.append("artifact", blob=str(blob.relative_to(self.dir)), artifact_path=artifact_path)

    def config_artifact(self, config: dict) -> None:
        """The whole resolved config the run is tracked under, as ``config.yaml``."""
        import yaml

        path = self.dir / "config.yaml"
        write_text(path, yaml.safe_dump(config, sort_keys=False))
        self.artifact(path)

    def events(self) -> list[dict]:
        """The events in order; a line cut short by a crash is skipped (it stays skipped, so
        positions do not move)."""
        out = []
        if not self.events_file.is_file():
            return out
        for line in self.events_file.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def state(self, uri: str | None = None) -> dict:
        """``{"run_id", "sent"}`` of the run in store ``uri`` (default: the run's own)."""
        path = self.dir / "state.json"
        stores = read_json(path) if path.is_file() else {}
        return stores.get(uri or self.ref["uri"], {"run_id": None, "sent": 0})

    def _save_state(self, uri: str, state: dict) -> None:
        path = self.dir / "state.json"
        stores = read_json(path) if path.is_file() else {}
        write_json(path, stores | {uri: state})

    def pending(self, uri: str | None = None) -> int:
        """Events not yet in the run's store (or in store ``uri``)."""
        return len(self.events()) - self.state(uri)["sent"]

    def run_id(self, uri: str | None = None) -> str | None:
        return self.state(uri)["run_id"]

    def flush(self, force: bool = False, uri: str | None = None) -> int:
        """Send the events not sent yet; return how many are still pending.

        Never raises: when the store cannot be reached the events stay, and the first failure
        per store is reported once. Unforced, it does not wait for a store that failed lately
        nor for another process sending this journal. ``uri`` sends to another store than the
        run's own (the run is found or made there, and gets every event).
        """
        uri = uri or self.ref["uri"]
        if not force and _down_until.get(uri, 0.0) > time.monotonic():
            return self.pending(uri)
        try:
            with self._lock.acquire(timeout=120 if force else 0):
                return self._send_pending(uri)
        except Timeout:
            return self.pending(uri)

    def _send_pending(self, uri: str) -> int:
        events, state = self.events(), self.state(uri)
        if state["sent"] >= len(events):
            return 0
        try:
            store = _store(uri, self.ref["lock"])
            if state["run_id"] is None:
                state["run_id"] = store.resolve(self.ref)
                self._save_state(uri, state)
            while state["sent"] < len(events):
                try:
                    n = store.send(
                        state["run_id"], events[state["sent"] :], self.dir, uri != self.ref["uri"]
                    )
                except _RunGone as gone:
                    if gone.deleted:
                        logger.warning(
                            "MLflow run %s (%s) was deleted; its %d remaining events are not sent",
                            state["run_id"],
                            self.ref["run_name"],
                            len(events) - state["sent"],
                        )
                        n = len(events) - state["sent"]
                    else:  # the store lost it (a new database): make the run anew, resend all
                        logger.warning(
                            "MLflow run %s is gone from %s; logging it anew", state["run_id"], uri
                        )
                        state = {"run_id": store.resolve(self.ref), "sent": 0}
                        n = 0
                state["sent"] += n
                self._save_state(uri, state)
        except Exception as err:  # noqa: BLE001 - any failure keeps the events for later
            failures = _failures.get(uri, 0) + 1
            _failures[uri] = failures
            _down_until[uri] = time.monotonic() + min(600.0, RETRY_AFTER_S * 2 ** (failures - 1))
            if uri not in _warned:
                _warned.add(uri)
                logger.warning(
                    "MLflow tracking at %s failed (%s); work goes on and events are kept "
                    "in %s (sent by the next run or `adseg mlflow-sync`)",
                    uri,
                    _short(err),
                    self.dir,
                )
        else:
            _down_until.pop(uri, None)
            _failures.pop(uri, None)
        return len(events) - state["sent"]


class _RunGone(Exception):
    def __init__(self, deleted: bool) -> None:
        self.deleted = deleted


def _short(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300] if text else ''}"


def current_journal(folder: str | Path) -> Journal | None:
    """The journal of the run a model folder (or scheme folder) currently belongs to."""
    pointer = Path(folder) / JOURNALS / "current"
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return Journal(path) if (path / "ref.json").is_file() else None


def _set_current(folder: Path, journal: Journal) -> None:
    write_text(folder / JOURNALS / "current", journal.dir.name + "\n")


def journals_under(*paths: str | Path) -> list[Journal]:
    """Every journal in these folders (recursively), fold runs before parents."""
    found = {p.parent for root in paths for p in Path(root).rglob(f"{JOURNALS}/*/ref.json")}
    journals = [Journal(d) for d in sorted(found)]
    return sorted(journals, key=lambda j: j.ref["role"] == "parent")


# --- the store ----------------------------------------------------------------------------


class _Store:
    """An MLflow client for one tracking URI, with the lock that orders creations."""

    def __init__(self, uri: str, lock: str) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.lock = FileLock(lock, timeout=300)
        db = _sqlite_path(uri)
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
            siblings = [
                r
                for r in self._search(
                    exp_id, {"mlflow.parentRunId": parent_id, "fold": str(ref["fold"])}
                )
                if r.data.tags.get("adseg.uid") != ref["uid"]
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
            _RunGone: the run is deleted, or not in the store.
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
                raise _RunGone(deleted=False) from err
            raise
        if run.info.lifecycle_stage != "active":
            raise _RunGone(deleted=True)

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


def _store(uri: str, lock: str) -> _Store:
    if uri not in _stores:
        _stores[uri] = _Store(uri, lock)
    return _stores[uri]


# --- what the commands log ----------------------------------------------------------------


def new_fold_journal(
    config: dict,
    scheme: str,
    fold: int,
    out: Path,
    tags: dict,
    parent: dict | None = None,
    run_name: str | None = None,
) -> Journal:
    """A new run for fold ``fold`` of ``scheme`` whose model folder is ``out``; it becomes
    the folder's current run. ``parent``: the scheme's :func:`parent_ref`, if already made;
    ``run_name``: default ``<scheme> fold <fold>``."""
    parent = parent or parent_ref(config, scheme)
    uid = uuid.uuid4().hex
    ref = {
        "role": "fold",
        "uid": uid,
        "uri": parent["uri"],
        "lock": parent["lock"],
        "experiment": parent["experiment"],
        "fold": fold,
        "run_name": run_name or f"{scheme} fold {fold}",
        "params": parent["params"] | {"fold": str(fold)},
        "tags": parent["tags"]
        | {"fold": str(fold), "adseg.model_dir": str(out.resolve())}
        | {k: str(v) for k, v in tags.items()},
        "parent": parent,
    }
    journal = Journal.create(out / JOURNALS / uid, ref)
    _set_current(out, journal)
    return journal


def _never_fails(method):
    """Tracking is a side job: a failure in it is reported, never the end of the command."""

    @functools.wraps(method)
    def guarded(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - the journal keeps what was logged
            logger.warning("MLflow tracking: %s failed (%s)", method.__name__, _short(err))
            return None

    return guarded


class FoldRun:
    """The MLflow run of one trained fold; :func:`adseg.training.segmentation.train_fold` calls
    its hooks.

    No hook raises: a tracking failure is reported and training goes on.
    """

    def __init__(self, config: dict) -> None:
        self.config = tracking_config(config)
        self.journal: Journal | None = None
        self.epochs_logged = 0

    @_never_fails
    def start(self, job, resumed_after: int | None, device, splits: Path) -> None:
        """Continue the fold's run when training resumes (after epoch ``resumed_after``),
        else begin a new one."""
        folder = Path(job.out)
        parent = parent_ref(self.config, job.name)
        journal = current_journal(folder)
        if (
            resumed_after is not None
            and journal is not None
            and journal.ref["parent"]["config_hash"] == parent["config_hash"]
        ):
            self.journal = journal
            count = journal.count_tag("adseg.resumed") + 1
            journal.tags({"adseg.resumed": count, "adseg.resumed_after_epoch": resumed_after})
            journal.status("RUNNING")
        else:
            if journal is not None and journal.last_status() in (None, "RUNNING"):
                journal.status("KILLED")  # the run a fresh start replaces never ended
            self.journal = self._new(job, parent, device, splits)
        for old in journals_under(folder):
            old.flush(force=old.dir == self.journal.dir)  # also what earlier commands left

    def _new(self, job, parent: dict, device, splits: Path) -> Journal:
        dataset = read_json(job.preprocessed / "dataset.json")["cases"]
        cases = job.spec["train_cases"] + job.spec["val_cases"]
        tags = {
            "domain": "+".join(sorted({dataset[c]["domain"] for c in cases})),
            "device": _device_name(device),
        }
        journal = new_fold_journal(self.config, job.name, job.fold, Path(job.out), tags, parent)
        journal.config_artifact(self.config)
        for name in ("config.yaml", "plans.json"):
            journal.artifact(Path(job.out) / name, "model")
        journal.artifact(splits, "data")
        return journal

    @_never_fails
    def epoch(self, row: dict, lr_d: float | None) -> None:
        """One epoch's row of ``training_log.tsv`` as metrics at step = epoch."""
        if self.journal is None:
            return
        values = {EPOCH_METRICS[k]: v for k, v in row.items() if k in EPOCH_METRICS}
        if lr_d is not None:
            values["train/lr_d"] = lr_d
        self.journal.metrics(values, step=row["epoch"])
        self.epochs_logged += 1
        self.journal.flush()

    @_never_fails
    def artifact(self, path: Path, artifact_path: str) -> None:
        """A file made during the run (a figure of samples), logged now."""
        if self.journal is None:
            return
        self.journal.artifact(path, artifact_path)
        self.journal.flush()

    @_never_fails
    def metrics(self, values: dict[str, float], step: int) -> None:
        """Metrics outside the epoch table (e.g. ADDA's domain AUC), logged as they are."""
        if self.journal is None:
            return
        self.journal.metrics(values, step=step)
        self.journal.flush()

    @_never_fails
    def finish(self, spec: dict) -> None:
        """The model folder and its figures as artifacts; the run FINISHED."""
        if self.journal is None:
            return
        # a finished run resumed with nothing left to train already has all of this
        if self.epochs_logged or self.journal.last_status() != "FINISHED":
            out = Path(self.journal.ref["tags"]["adseg.model_dir"])
            final = {
                "train/epochs_trained": spec["epochs_trained"],
                "val/best_dice": spec["best_val_dice"],
                "val/best_epoch": spec["best_epoch"] or None,
                "quality_threshold": spec.get("quality_threshold"),
            }
            self.journal.metrics(final, step=spec["epochs_trained"])
            for name in ("model.json", "plans.json", "config.yaml", "checkpoint_final.pt"):
                self.journal.artifact(out / name, "model")
            self.journal.artifact(out / "learning_curves.png", "training")
            self.journal.artifact(out / "training_log.tsv", "training")
        self.journal.status("FINISHED")
        report_pending(self.journal.flush(force=True), self.journal)

    @_never_fails
    def fail(self, error: BaseException) -> None:
        """The run FAILED (divergence, an error) or KILLED (interrupted, terminated)."""
        if self.journal is None:
            return
        out = Path(self.journal.ref["tags"]["adseg.model_dir"])
        killed = isinstance(error, KeyboardInterrupt | SystemExit)
        message = str(error) or type(error).__name__
        self.journal.tags({"adseg.error": message[:4000]})
        self.journal.artifact(out / "training_log.tsv", "training")
        self.journal.status("KILLED" if killed else "FAILED")
        report_pending(self.journal.flush(force=True), self.journal)


def report_pending(pending: int, journal: Journal) -> None:
    if pending:
        logger.warning(
            "%d MLflow events of %s not sent (%s unreachable); they are kept in %s. Send "
            "them with: adseg mlflow-sync %s",
            pending,
            journal.ref["run_name"],
            journal.ref["uri"],
            journal.dir,
            journal.dir.parent.parent,
        )


def _device_name(device) -> str:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return str(device)


def _nanmean(values: list[float]) -> float | None:
    defined = [v for v in values if not math.isnan(v)]
    return sum(defined) / len(defined) if defined else None


def metric_key(*parts: str) -> str:
    """A metric name MLflow accepts: label names such as ``NCR+NET`` or ``edema (ED)`` have
    their other characters replaced by ``_``."""
    return "/".join(re.sub(r"[^\w\-. :]", "_", str(p)) for p in parts)


@_never_fails
def log_evaluation(fold_dir: str | Path, rows: list[dict], files: list[Path], settings: dict):
    """A fold's test metrics (means over its held-out patients) and files on its run."""
    from adseg.evaluation.summary import DERIVED, per_patient

    patients = per_patient(rows)
    values = {}
    for label in sorted({k[0] for k in patients}):
        mine = [v for k, v in patients.items() if k[0] == label]
        for m in DERIVED:
            values[metric_key("test", label, m)] = _nanmean([float(p[m]) for p in mine])
        values[metric_key("test", label, "n_patients")] = len(mine)
    log_fold_results(fold_dir, values, files, settings)


@_never_fails
def log_fold_results(
    fold_dir: str | Path, values: dict, files: list[Path], settings: dict | None = None
):
    """Test metrics and files of an evaluation on the fold's run.

    Each evaluation of the fold is one step (``adseg.evaluations``), so a rerun with other
    ``settings`` (logged as tags) adds a point instead of a duplicate.
    """
    journal = current_journal(fold_dir)
    if journal is None:
        logger.info("%s has no MLflow run (trained without tracking); not logged", fold_dir)
        return
    step = journal.count_tag("adseg.evaluations") + 1
    tags = {f"evaluate.{k}": json.dumps(v) for k, v in (settings or {}).items()}
    journal.tags({"adseg.evaluations": step} | tags)
    journal.metrics(values, step=step)
    for path in files:
        journal.artifact(path, "evaluation/overlays" if path.suffix == ".png" else "evaluation")
    report_pending(journal.flush(force=True), journal)


@_never_fails
def log_summary(
    exp_dir: str | Path,
    metric_files: list[Path],
    config: dict,
    parent_metrics: Callable[[str], dict[str, float]] | None = None,
    files: tuple[str, ...] = ("summary.md", "summary.tsv", "tests.tsv"),
) -> None:
    """Each scheme's parent run: pooled statistics, fold spread, p-values and the summary files.

    Sends first whatever the experiment's fold runs still hold. ``exp_dir`` holds the
    summary ``files`` and a folder per scheme; ``parent_metrics(scheme)`` gives a parent's
    metrics (default: from the scheme table's summary.tsv and tests.tsv).
    """
    from adseg.preprocessing.qc import read_tsv

    exp_dir = Path(exp_dir)
    sync([Path(f).parent for f in metric_files])
    if parent_metrics is None:
        stats = read_tsv(exp_dir / "summary.tsv")
        tests = read_tsv(exp_dir / "tests.tsv")

        def parent_metrics(scheme: str) -> dict[str, float]:
            return _parent_metrics(scheme, stats, tests)

    parents: dict[str, dict] = {}
    for f in metric_files:
        fold_journal = current_journal(Path(f).parent)
        if fold_journal is not None:
            ref = fold_journal.ref["parent"]
            parents.setdefault(ref["scheme"], ref)
    for scheme, ref in parents.items():
        folder = exp_dir / scheme / JOURNALS / f"parent-{ref['config_hash']}"
        if (folder / "ref.json").is_file():
            journal = Journal(folder)
        else:
            journal = Journal.create(folder, ref)
        journal.config_artifact(tracking_config(config))
        step = journal.count_tag("adseg.summaries") + 1
        journal.tags({"adseg.summaries": step})
        journal.metrics(parent_metrics(scheme), step=step)
        for name in files:
            journal.artifact(exp_dir / name, "summary")
        for plot in sorted((exp_dir / "plots").glob("*.png")):
            journal.artifact(plot, "summary/plots")
        journal.status("FINISHED")
        report_pending(journal.flush(force=True), journal)


def adda_parent_metrics(exp_dir: Path, model: str) -> dict[str, float]:
    """An ADDA model's parent metrics: per domain and label the pooled mean, std and n, the
    p-values against the other models, and the mean domain AUC over folds."""
    from adseg.evaluation.summary import _num, _stats
    from adseg.preprocessing.qc import read_tsv

    values: dict[str, float] = {}
    for s in read_tsv(exp_dir / "summary.tsv"):
        if s["scheme"] == model and s["fold"] == "all":
            name = metric_key("test", s["domain"], s["label"], s["metric"])
            values |= {name: _num(s["mean"]), f"{name}_std": _num(s["std"])}
            values[f"{name}_n"] = float(s["n"])
    for t in read_tsv(exp_dir / "tests.tsv"):
        if model in (t["scheme_a"], t["scheme_b"]):
            other = t["scheme_b"] if t["scheme_a"] == model else t["scheme_a"]
            key = metric_key("test", t["domain"], t["label"], f"{t['metric']}_p_vs_{other}")
            values[key] = _num(t["p"])
    aucs = [
        _num(r["domain_auc"]) for r in read_tsv(exp_dir / "domain_auc.tsv") if r["scheme"] == model
    ]
    spread = _stats(aucs)
    if spread["n"]:
        values["domain_auc"] = spread["mean"]
    return {k: v for k, v in values.items() if not math.isnan(v)}


def _parent_metrics(scheme: str, stats: list[dict], tests: list[dict]) -> dict[str, float]:
    from adseg.evaluation.summary import _num, _stats

    values: dict[str, float] = {}
    fold_means: dict[str, list[float]] = {}
    for s in stats:
        if s["scheme"] != scheme:
            continue
        name = metric_key("test", s["label"], s["metric"])
        if s["fold"] == "all":
            values[name] = _num(s["mean"])
            values[f"{name}_std"] = _num(s["std"])
            values[f"{name}_median"] = _num(s["median"])
            values[f"{name}_n"] = float(s["n"])
        else:
            fold_means.setdefault(name, []).append(_num(s["mean"]))
    for name, means in fold_means.items():
        spread = _stats(means)  # over the folds with a defined mean
        if spread["n"]:
            values[f"{name}_fold_mean"] = spread["mean"]
        if spread["n"] > 1:
            values[f"{name}_fold_std"] = spread["std"]
    for t in tests:
        if scheme in (t["scheme_a"], t["scheme_b"]):
            other = t["scheme_b"] if t["scheme_a"] == scheme else t["scheme_a"]
            values[metric_key("test", t["label"], f"{t['metric']}_p_vs_{other}")] = _num(t["p"])
    return {k: v for k, v in values.items() if not math.isnan(v)}


def sync(paths: list[str | Path], uri: str | None = None) -> tuple[int, int, int]:
    """Send what the journals under ``paths`` hold; (journals, events sent, events pending).

    Once a store has failed in this sweep, its other journals are not tried again.
    """
    journals = journals_under(*paths)
    sent = pending = 0
    failed: set[str] = set()
    for journal in journals:
        target = uri or journal.ref["uri"]
        before = journal.pending(target)
        left = before if target in failed else journal.flush(force=True, uri=target)
        if left:
            failed.add(target)
        sent += before - left
        pending += left
    return len(journals), sent, pending
