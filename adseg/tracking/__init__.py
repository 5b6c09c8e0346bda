"""Experiment tracking in MLflow: loss-free, safe for parallel jobs. The only package that
imports mlflow (in :mod:`~adseg.tracking.store`, :mod:`~adseg.tracking.registry`,
:mod:`~adseg.tracking.fetch` and :mod:`~adseg.tracking.system`).

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

**Models.** The summary of the training schemes registers each scheme's fold ensemble as a
version of the registered model ``adseg-<experiment>-<scheme>``, its files logged through the
parent run's journal, and gives the alias ``champion`` to the scheme best on the primary
endpoint. A registration the store could not take waits in the journal's folder for
``adseg mlflow-sync``. ``fetch_model("models:/adseg-default-hybrid@champion")`` gives a
version back as a local model folder for ``adseg predict -m``.

**System metrics.** A fold's run records the machine's CPU, memory, disk, network and GPU
use while it trains, through its journal, under MLflow's ``system/`` names.

The modules, by job: :mod:`~adseg.tracking.settings` (config → params, tags, identity),
:mod:`~adseg.tracking.journal` (the events on disk, and sending them),
:mod:`~adseg.tracking.store` (the MLflow client, and waiting for a store that failed),
:mod:`~adseg.tracking.runs` (a fold's run, as training makes it),
:mod:`~adseg.tracking.system` (its system metrics),
:mod:`~adseg.tracking.results` (what evaluation and summaries log),
:mod:`~adseg.tracking.registry` (the ensembles as registered model versions) and
:mod:`~adseg.tracking.fetch` (a version back as a model folder).
"""

from adseg.tracking.fetch import fetch_model
from adseg.tracking.journal import JOURNALS, Journal, current_journal, journals_under, sync
from adseg.tracking.registry import RegistryError, register_pending
from adseg.tracking.results import (
    adda_parent_metrics,
    log_evaluation,
    log_fold_results,
    log_summary,
    metric_key,
)
from adseg.tracking.runs import FoldRun, new_fold_journal, report_pending
from adseg.tracking.settings import (
    ENV_CONFIG,
    EPOCH_METRICS,
    enabled,
    flatten,
    model_settings,
    parent_ref,
    settings_hash,
    tracking_config,
    tracking_uri,
)
from adseg.tracking.store import RETRY_AFTER_S, Store

__all__ = [
    "ENV_CONFIG",
    "EPOCH_METRICS",
    "JOURNALS",
    "RETRY_AFTER_S",
    "FoldRun",
    "Journal",
    "RegistryError",
    "Store",
    "adda_parent_metrics",
    "current_journal",
    "enabled",
    "fetch_model",
    "flatten",
    "journals_under",
    "log_evaluation",
    "log_fold_results",
    "log_summary",
    "metric_key",
    "model_settings",
    "new_fold_journal",
    "parent_ref",
    "register_pending",
    "report_pending",
    "settings_hash",
    "sync",
    "tracking_config",
    "tracking_uri",
]
