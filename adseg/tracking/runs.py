"""The runs a command makes: a fold's run (:class:`FoldRun`, the hooks training calls), and
what is said of events a store did not take."""

from __future__ import annotations

import functools
import uuid
from pathlib import Path

from adseg.io import read_json
from adseg.log import logger
from adseg.tracking.journal import JOURNALS, Journal, current_journal, journals_under, set_current
from adseg.tracking.settings import EPOCH_METRICS, parent_ref, tracking_config
from adseg.tracking.store import short_error
from adseg.tracking.system import SystemMetrics, peak_memory


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
    set_current(out, journal)
    return journal


def never_fails(method):
    """Tracking is a side job: a failure in it is reported, never the end of the command."""

    @functools.wraps(method)
    def guarded(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - the journal keeps what was logged
            logger.warning("MLflow tracking: %s failed (%s)", method.__name__, short_error(err))
            return None

    return guarded


class FoldRun:
    """The MLflow run of one trained fold; :func:`adseg.training.segmentation.train_fold` calls
    its hooks. From :meth:`start` to :meth:`finish` or :meth:`fail` it samples the machine
    (:mod:`adseg.tracking.system`) unless ``mlflow.system_metrics`` is off.

    No hook raises: a tracking failure is reported and training goes on.
    """

    def __init__(self, config: dict) -> None:
        self.config = tracking_config(config)
        self.journal: Journal | None = None
        self.epochs_logged = 0
        self.committed = 0  # the last epoch whose checkpoint is on disk
        self.system: SystemMetrics | None = None
        self.device = "cpu"  # where the job trains, from start()

    @never_fails
    def start(self, job, resumed_after: int | None, device, splits: Path) -> None:
        """Continue the fold's run when training resumes (after epoch ``resumed_after``),
        else begin a new one."""
        folder = Path(job.out)
        self.device = device
        parent = parent_ref(self.config, job.name)
        journal = current_journal(folder)
        if (
            resumed_after is not None
            and journal is not None
            and journal.ref["parent"]["config_hash"] == parent["config_hash"]
        ):
            self.journal = journal
            # an epoch logged but not checkpointed before the job died is trained again
            journal.discard_after(resumed_after)
            self.committed = resumed_after
            count = journal.count_tag("adseg.resumed") + 1
            journal.tags({"adseg.resumed": count, "adseg.resumed_after_epoch": resumed_after})
            journal.status("RUNNING")
        else:
            if journal is not None and journal.last_status() in (None, "RUNNING"):
                journal.status("KILLED")  # the run a fresh start replaces never ended
            self.journal = self._new(job, parent, device, splits)
        for old in journals_under(folder):
            old.flush(force=old.dir == self.journal.dir)  # also what earlier commands left
        self._watch_system()

    def _watch_system(self) -> None:
        """Sample the machine into the run (``mlflow.system_metrics``) until it ends."""
        settings = self.config["mlflow"]
        if self.system is not None:
            self.system.stop()
        if settings.get("system_metrics", True):
            self.system = SystemMetrics(self.journal, settings.get("system_metrics_interval", 10))
            self.system.start()

    def _stop_system(self) -> None:
        if self.system is not None:
            self.system.stop()
            self.system = None

    def _new(self, job, parent: dict, device, splits: Path) -> Journal:
        dataset = read_json(job.preprocessed / "dataset.json")["cases"]
        spec = job.spec
        cases = spec["train_cases"] + spec["val_cases"] + spec.get("test_cases", [])
        seed = job.config["train"]["seed"]
        tags = {
            "domain": "+".join(sorted({dataset[c]["domain"] for c in cases})),
            "device": _device_name(device),
            "seed": seed,
        }
        several = len(self.config["train"].get("seeds") or []) > 1  # the workflow's seeds
        name = f"{job.name} fold {job.fold}" + (f" seed {seed}" if several else "")
        if spec.get("train_fraction", 1.0) < 1:  # a learning-curve share
            name += f" ({100 * spec['train_fraction']:g} % training patients)"
        journal = new_fold_journal(
            self.config, job.name, job.fold, Path(job.out), tags, parent, name
        )
        journal.config_artifact(self.config)
        for name in ("config.yaml", "plans.json"):
            journal.artifact(Path(job.out) / name, "model")
        journal.artifact(splits, "data")
        return journal

    @never_fails
    def epoch(self, row: dict, lr_d: float | None) -> None:
        """One epoch's row of ``training_log.tsv`` as metrics at step = epoch, kept in the
        journal until :meth:`commit` (after the epoch's checkpoint) sends it."""
        if self.journal is None:
            return
        values = {EPOCH_METRICS[k]: v for k, v in row.items() if k in EPOCH_METRICS}
        if lr_d is not None:
            values["train/lr_d"] = lr_d
        self.journal.metrics(values, step=row["epoch"])
        self.epochs_logged += 1

    @never_fails
    def commit(self) -> None:
        """Send what the epoch logged: called once its checkpoint is on disk, so a job killed
        in between sends nothing of an epoch it will train again (exactly once per step)."""
        if self.journal is not None:
            self.committed += 1
            self.journal.flush()

    @never_fails
    def artifact(self, path: Path, artifact_path: str) -> None:
        """A file made during the run (a figure of samples), sent with the next
        :meth:`commit`, :meth:`finish` or :meth:`fail`."""
        if self.journal is None:
            return
        self.journal.artifact(path, artifact_path)

    @never_fails
    def metrics(self, values: dict[str, float], step: int) -> None:
        """Metrics outside the epoch table (e.g. ADDA's domain AUC), logged as they are."""
        if self.journal is None:
            return
        self.journal.metrics(values, step=step)
        self.journal.flush()

    @never_fails
    def finish(self, spec: dict) -> None:
        """The model folder and its figures as artifacts; the run FINISHED."""
        if self.journal is None:
            return
        self._stop_system()
        # a finished run resumed with nothing left to train already has all of this
        if self.epochs_logged or self.journal.last_status() != "FINISHED":
            out = Path(self.journal.ref["tags"]["adseg.model_dir"])
            final = {
                "train/epochs_trained": spec["epochs_trained"],
                "val/best_dice": spec["best_val_dice"],
                "val/best_epoch": spec["best_epoch"] or None,
                "quality_threshold": spec.get("quality_threshold"),
                **peak_memory(self.device),
            }
            self.journal.metrics(final, step=spec["epochs_trained"])
            for name in ("model.json", "plans.json", "config.yaml", "checkpoint_final.pt"):
                self.journal.artifact(out / name, "model")
            self.journal.artifact(out / "learning_curves.png", "training")
            self.journal.artifact(out / "training_log.tsv", "training")
        self.journal.status("FINISHED")
        report_pending(self.journal.flush(force=True), self.journal)

    @never_fails
    def fail(self, error: BaseException) -> None:
        """The run FAILED (divergence, an error) or KILLED (interrupted, terminated)."""
        if self.journal is None:
            return
        self._stop_system()
        out = Path(self.journal.ref["tags"]["adseg.model_dir"])
        killed = isinstance(error, KeyboardInterrupt | SystemExit)
        # an epoch that died before its checkpoint is trained again on resume: not logged now
        self.journal.discard_after(_epochs_on_disk(out, self.committed))
        message = str(error) or type(error).__name__
        self.journal.tags({"adseg.error": message[:4000]})
        self.journal.artifact(out / "training_log.tsv", "training")
        self.journal.status("KILLED" if killed else "FAILED")
        report_pending(self.journal.flush(force=True), self.journal)


def _epochs_on_disk(out: Path, known: int) -> int:
    """The epochs in ``out``'s last checkpoint (the truth a resume starts from), or ``known``
    when it cannot be read."""
    path = out / "checkpoint_last.pt"
    if not path.is_file():
        return known
    from adseg.checkpoint import load_checkpoint

    try:
        return len(load_checkpoint(path)["history"])
    except (OSError, ValueError, KeyError):
        return known


def report_pending(pending: int, journal: Journal) -> None:
    """Warn that ``pending`` events of ``journal`` are not sent, and how to send them."""
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
