"""The MLflow model registry: each scheme's fold ensemble as a version of the registered model
``adseg-<experiment>-<scheme>``, the ``champion`` alias on the scheme best on the primary
endpoint (:mod:`adseg.tracking.fetch` gets a version back as a model folder).

A summary (:func:`adseg.tracking.log_summary`) logs the ensemble (``fold_<k>/`` with the files
predict reads) through the parent run's journal as its artifacts ``ensemble/<digest>/``: the
digest of those files names them, so a retrained ensemble never overwrites the files an
earlier version points at. It then leaves a request, ``registry.json`` in the journal's
folder, and carries it out once the store has the artifacts: the version's ``source`` is that
artifact folder and its ``run_id`` the parent run. A store that cannot be reached leaves the
request for ``adseg mlflow-sync``; each store the request is carried out in is recorded in it.

The same ensemble (the digest, a tag) again reuses its version; a changed one makes a new
version, and the alias moves with it. Registry versions have no metrics: the parent run's
summary metrics are the version's ``metric.<name>`` tags.
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path

from adseg.errors import AdsegError
from adseg.io import read_json, write_json
from adseg.log import logger
from adseg.tracking.journal import Journal, journals_under
from adseg.tracking.store import short_error, store_for

ENSEMBLE = "ensemble"
REQUEST = "registry.json"
CHAMPION = "champion"
DIGEST_TAG = "adseg.ensemble_digest"
LOWER_IS_BETTER = frozenset({"lesion_fp"})
"""Primary endpoints where the least mean is best (false-positive lesions per patient)."""


class RegistryError(AdsegError):
    """A registered model, alias or version that is not there, or a registry that cannot be
    reached."""


def model_name(experiment: str, scheme: str) -> str:
    return f"adseg-{experiment}-{scheme}"


def ensemble_files(fold_dirs: dict[int, Path]) -> dict[str, Path]:
    """``fold_<k>/<name>`` → file: of each fold, the files ``adseg predict`` reads (spec,
    plan, config, the final and, where there is one, the best checkpoint)."""
    from adseg.inference.modelfolder import CHECKPOINTS, FOLD_FILES

    files = {}
    for fold, folder in sorted(fold_dirs.items()):
        for name in (*FOLD_FILES, *CHECKPOINTS.values()):
            if (folder / name).is_file():
                files[f"fold_{fold}/{name}"] = folder / name
    return files


def complete(fold_dirs: dict[int, Path]) -> bool:
    """Whether every fold has what predict needs (``model.json`` last: a finished fold)."""
    from adseg.inference.modelfolder import CHECKPOINTS, FOLD_FILES

    needed = (*FOLD_FILES, CHECKPOINTS["final"])
    return bool(fold_dirs) and all((d / n).is_file() for d in fold_dirs.values() for n in needed)


def files_digest(files: dict[str, Path]) -> str:
    """The digest of an ensemble: each file's relative path and bytes."""
    whole = hashlib.sha256()
    for rel in sorted(files):
        one = hashlib.sha256()
        with open(files[rel], "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                one.update(block)
        whole.update(f"{rel}\0{one.hexdigest()}\n".encode())
    return whole.hexdigest()[:16]


def folder_digest(folder: Path) -> str:
    """:func:`files_digest` of the ensemble in ``folder`` (its ``fold_*/`` files)."""
    files = {p.relative_to(folder).as_posix(): p for p in folder.glob("fold_*/*") if p.is_file()}
    return files_digest(files)


def primary_values(stats: list[dict], primary: str) -> tuple[str, dict[str, float]]:
    """The summary's main label (as :func:`adseg.evaluation.summary.summarize` picks it) and
    each scheme's pooled mean of ``primary`` on it, in the summary's order of schemes."""
    from adseg.evaluation.statistics import number

    labels = sorted({s["label"] for s in stats})
    main = "lesion" if "lesion" in labels else labels[0] if labels else ""
    values = {
        s["scheme"]: number(s["mean"])
        for s in stats
        if s["label"] == main and s["metric"] == primary and s["fold"] == "all"
    }
    return main, values


def champion(values: dict[str, float], primary: str) -> str | None:
    """The scheme best on the primary endpoint: the highest mean (the least for
    :data:`LOWER_IS_BETTER`). An undefined (NaN) mean never wins; of tied schemes the first in
    the summary's order wins (the registry's order, baselines first); None when no scheme
    has a defined mean (the alias then stays where it is)."""
    sign = -1.0 if primary in LOWER_IS_BETTER else 1.0
    defined = {s: sign * v for s, v in values.items() if not math.isnan(v)}
    if not defined:
        return None
    best = max(defined.values())
    return next(s for s, v in defined.items() if v == best)


def plan(
    stats: list[dict], primary: str, found: dict[str, dict[int, list[Path]]]
) -> dict[str, dict]:
    """What a summary registers: per scheme whose every fold is complete, its ensemble (of
    each fold, the folder ``adseg predict -m <scheme>/`` reads: the first training seed's),
    its primary endpoint and whether it is the champion among these schemes."""
    ensembles = {}
    for scheme, by_fold in found.items():
        folds = {k: min(dirs, key=lambda d: (len(d.parts), str(d))) for k, dirs in by_fold.items()}
        if complete(folds):
            ensembles[scheme] = folds
        else:
            logger.warning(
                "MLflow model registry: %s has an incomplete fold; not registered", scheme
            )
    main, values = primary_values(stats, primary)
    best = champion({s: v for s, v in values.items() if s in ensembles}, primary)
    return {
        s: {
            "folds": folds,
            "primary": (primary, main, values.get(s, math.nan)),
            "champion": None if best is None else s == best,
        }
        for s, folds in ensembles.items()
    }


def log_request(journal: Journal, planned: dict, metrics: dict[str, float]) -> None:
    """Log a scheme's ensemble on its parent run and leave the request to register it."""
    digest = log_ensemble(journal, planned["folds"])
    folds = sorted(planned["folds"])
    request(journal, digest, folds, planned["primary"], metrics, planned["champion"])


def log_ensemble(journal: Journal, fold_dirs: dict[int, Path]) -> str:
    """Log the ensemble as artifacts ``ensemble/<digest>/fold_<k>/`` of the parent run (once
    per digest); return the digest."""
    files = ensemble_files(fold_dirs)
    digest = files_digest(files)
    where = f"{ENSEMBLE}/{digest}"
    logged = any(
        e["op"] == "artifact" and str(e.get("artifact_path") or "").startswith(f"{where}/")
        for e in journal.events()
    )
    if not logged:
        for rel, path in files.items():
            journal.artifact(path, f"{where}/{Path(rel).parent.as_posix()}")
    return digest


def request(
    journal: Journal,
    digest: str,
    folds: list[int],
    primary: tuple[str, str, float],
    metrics: dict[str, float],
    is_champion: bool | None,
) -> dict:
    """Write the parent run's registration request (:data:`REQUEST`) and return it.

    ``primary``: (endpoint, label, value); ``is_champion``: None leaves the alias alone.
    """
    ref = journal.ref
    endpoint, label, value = primary
    tags = {
        "experiment": ref["experiment"],
        "scheme": ref["scheme"],
        "settings_hash": ref["config_hash"],
        "n_folds": str(len(folds)),
        "folds": ",".join(map(str, folds)),
        "primary_endpoint": endpoint,
        "primary_label": label,
        "primary_value": repr(float(value)),
        DIGEST_TAG: digest,
    }
    if "git_commit" in ref["tags"]:
        tags["git_commit"] = ref["tags"]["git_commit"]
    entry = {
        "name": model_name(ref["experiment"], ref["scheme"]),
        "artifact_path": f"{ENSEMBLE}/{digest}",
        "tags": tags,
        "metrics": {f"metric.{k}": repr(float(v)) for k, v in metrics.items()},
        "champion": is_champion,
        "time": int(time.time() * 1000),
        "registered": {},
    }
    write_json(journal.dir / REQUEST, entry)
    return entry


def try_register(journal: Journal, uri: str | None = None) -> bool | None:
    """Carry out the journal's request in store ``uri`` (default: the run's own) once the
    store has all the run's events; True when done (now or before), False when it waits
    (warned), None when there is no request."""
    path = journal.dir / REQUEST
    if not path.is_file():
        return None
    uri = uri or journal.ref["uri"]
    entry = read_json(path)
    if uri in entry["registered"]:
        return True
    if journal.pending(uri):
        logger.warning(
            "MLflow model %s not registered yet: the run's events are not all in %s; "
            "`adseg mlflow-sync %s` registers it",
            entry["name"],
            uri,
            journal.dir.parent.parent,
        )
        return False
    try:
        version = _register(journal, entry, uri)
    except Exception as err:  # noqa: BLE001 - the request stays for mlflow-sync
        logger.warning(
            "MLflow model %s not registered in %s (%s); the request is kept in %s and "
            "`adseg mlflow-sync %s` registers it",
            entry["name"],
            uri,
            short_error(err),
            path,
            journal.dir.parent.parent,
        )
        return False
    now = read_json(path)  # a newer summary may have rewritten it meanwhile
    if now["time"] == entry["time"]:
        now["registered"][uri] = version
        write_json(path, now)
    logger.info("MLflow model %s version %s (%s)", entry["name"], version, uri)
    return True


def register_pending(paths: list[str | Path], uri: str | None = None) -> tuple[int, int]:
    """Carry out the registration requests under ``paths`` not yet done in their store (or in
    ``uri``), oldest first; return (done, still waiting)."""
    found = [j for j in journals_under(*paths) if (j.dir / REQUEST).is_file()]
    found.sort(key=lambda j: read_json(j.dir / REQUEST)["time"])
    done = waiting = 0
    for journal in found:
        if try_register(journal, uri):
            done += 1
        else:
            waiting += 1
    return done, waiting


def _register(journal: Journal, entry: dict, uri: str) -> str:
    """Find or make the version of ``entry``'s ensemble in ``uri``; set tags and alias."""
    from mlflow.exceptions import MlflowException

    store = store_for(uri, journal.ref["lock"])
    client = store.client
    name, tags = entry["name"], entry["tags"]
    run_id = journal.run_id(uri)
    source = f"{client.get_run(run_id).info.artifact_uri}/{entry['artifact_path']}"
    version_tags = tags | entry["metrics"]
    with store.lock:  # two summaries at once make one version
        try:
            model = client.create_registered_model(name, tags=tags)
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            model = client.get_registered_model(name)
            for key, value in tags.items():
                if model.tags.get(key) != value:
                    client.set_registered_model_tag(name, key, value)
        same = [
            v
            for v in client.search_model_versions(f"name = '{name}'")
            if v.tags.get(DIGEST_TAG) == tags[DIGEST_TAG] and v.run_id == run_id
        ]
        if same:
            version = min(same, key=lambda v: int(v.version))
            for key, value in version_tags.items():
                if version.tags.get(key) != value:
                    client.set_model_version_tag(name, version.version, key, value)
        else:
            description = (
                f"{tags['scheme']}: the ensemble of {tags['n_folds']} folds of experiment "
                f"{tags['experiment']}; {tags['primary_endpoint']} {tags['primary_value']}"
            )
            version = client.create_model_version(
                name, source, run_id=run_id, tags=version_tags, description=description
            )
        _move_alias(client, model, str(version.version), entry["champion"], tags["experiment"])
    return str(version.version)


def _move_alias(client, model, version: str, is_champion: bool | None, experiment: str) -> None:
    """The champion alias on ``version`` and on no other model of the experiment, or off
    ``model`` when it is not the champion; left alone when undecided (None)."""
    if is_champion is None:
        return
    if not is_champion:
        if CHAMPION in (model.aliases or {}):
            client.delete_registered_model_alias(model.name, CHAMPION)
        return
    client.set_registered_model_alias(model.name, CHAMPION, version)
    others = client.search_registered_models(
        filter_string=f"tags.experiment = '{experiment}'", max_results=1000
    )
    for other in others:
        mine = other.name.startswith("adseg-") and other.tags.get("experiment") == experiment
        if mine and other.name != model.name and CHAMPION in (other.aliases or {}):
            client.delete_registered_model_alias(other.name, CHAMPION)
