"""A registered model version fetched as the model folder ``adseg predict -m`` reads:
``models:/<name>@<alias>`` or ``models:/<name>/<version>`` to a local folder, downloaded once
into a cache (:func:`fetch_model`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from filelock import FileLock

from adseg.io import atomic_dir, read_json, write_json
from adseg.log import logger
from adseg.tracking.registry import DIGEST_TAG, RegistryError, folder_digest
from adseg.tracking.settings import sqlite_path
from adseg.tracking.store import short_error

ENV_CACHE = "ADSEG_CACHE"
RECORD = ".adseg-fetched.json"
"""In a cached folder: the version's name, number, source and store, written last."""

# not found: the registry answers RESOURCE_DOES_NOT_EXIST (a model, a version) or
# INVALID_PARAMETER_VALUE (an alias)
NOT_FOUND = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/<name>@<alias>`` → (name, alias, None); ``models:/<name>/<version>`` →
    (name, None, version).

    Raises:
        RegistryError: any other form.
    """
    rest = uri.removeprefix("models:/") if uri.startswith("models:/") else ""
    if "@" in rest and "/" not in rest:
        name, alias = rest.split("@", 1)
        if name and alias:
            return name, alias, None
    elif rest.count("/") == 1:
        name, version = rest.split("/")
        if name and version.isdigit():
            return name, None, version
    raise RegistryError(
        f"{uri!r}: not a registered model; give models:/<name>@<alias> "
        "(e.g. models:/adseg-default-hybrid@champion) or models:/<name>/<version>"
    )


def default_cache() -> Path:
    """``$ADSEG_CACHE/models``, else ``$XDG_CACHE_HOME/adseg/models`` (``~/.cache``)."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]) / "models"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "adseg" / "models"


def fetch_model(uri: str, tracking_uri: str | None = None, cache_dir: Path | None = None) -> Path:
    """The local model folder (``fold_<k>/`` ...) of registered version ``uri``, downloaded
    once into ``<cache_dir>/<name>/<version>/`` (default :func:`default_cache`).

    ``uri``: ``models:/<name>@<alias>`` (resolved to its version first) or
    ``models:/<name>/<version>``; ``tracking_uri``: the store, default
    ``$MLFLOW_TRACKING_URI``, else ``sqlite:///results/mlflow.db``. The download goes to a
    temporary folder beside the cached one, is checked against the version's digest and is
    then renamed into place. A version already cached (from the same source) is not
    downloaded again; a cached explicit version is used as it is when the store cannot be
    reached.

    Raises:
        RegistryError: a malformed ``uri``, an unknown model, alias or version, a store that
            cannot be reached, or a download whose files are not the registered ones.
    """
    name, alias, version = parse_model_uri(uri)
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    tracking_uri = tracking_uri or f"sqlite:///{Path('results/mlflow.db').resolve()}"
    root = Path(cache_dir) if cache_dir is not None else default_cache()
    try:
        found = _resolve(_client(tracking_uri), name, alias, version, tracking_uri)
    except _Unreachable as err:
        cached = root / name / str(version)
        if version is None or not (cached / RECORD).is_file():
            raise RegistryError(str(err)) from None
        logger.warning("%s; using the copy cached in %s", err, cached)
        return cached
    folder = root / name / str(found.version)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder.parent / f".{found.version}.lock")):  # one download at a time
        record = folder / RECORD
        if record.is_file() and read_json(record)["source"] == found.source:
            return folder
        with atomic_dir(folder) as tmp:
            _download(found, tracking_uri, tmp)
            write_json(
                tmp / RECORD,
                {"name": name, "version": str(found.version), "source": found.source}
                | {"tracking_uri": tracking_uri},
            )
    logger.info("%s version %s fetched into %s", name, found.version, folder)
    return folder


class _Unreachable(Exception):
    """The store could not be asked."""


def _client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    db = sqlite_path(tracking_uri)
    if db is not None and not db.is_file():  # MLflow would make an empty one
        raise _Unreachable(f"no MLflow store at {tracking_uri}: {db} does not exist")
    try:
        return MlflowClient(tracking_uri=tracking_uri)
    except Exception as err:  # noqa: BLE001 - any failure to open the store
        raise _Unreachable(
            f"the MLflow store {tracking_uri} cannot be reached ({short_error(err)})"
        ) from None


def _resolve(client, name: str, alias: str | None, version: str | None, tracking_uri: str):
    """The model version of ``alias`` or ``version``.

    Raises:
        RegistryError: an unknown model, alias or version (naming what there is).
        _Unreachable: the store did not answer.
    """
    from mlflow.exceptions import MlflowException

    try:
        if alias is not None:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, version)
    except MlflowException as err:
        if err.error_code not in NOT_FOUND:
            raise _Unreachable(
                f"the MLflow store {tracking_uri} cannot be reached ({short_error(err)})"
            ) from None
    except Exception as err:  # noqa: BLE001 - a server that does not answer, a broken file
        raise _Unreachable(
            f"the MLflow store {tracking_uri} cannot be reached ({short_error(err)})"
        ) from None
    raise RegistryError(_not_found(client, name, alias, version, tracking_uri))


def _not_found(client, name: str, alias: str | None, version: str | None, where: str) -> str:
    """What is missing, and what there is instead."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException:
        names = sorted(m.name for m in client.search_registered_models(max_results=100))
        return f"no registered model {name!r} in {where}; it has: {', '.join(names) or 'none'}"
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    aliases = ", ".join(f"{a} (version {v})" for a, v in sorted((model.aliases or {}).items()))
    have = f"versions {', '.join(map(str, versions)) or 'none'}; aliases {aliases or 'none'}"
    what = f"no alias {alias!r}" if alias is not None else f"no version {version}"
    return f"registered model {name!r} in {where} has {what}; it has {have}"


def _download(version, tracking_uri: str, into: Path) -> None:
    """The version's files into folder ``into``, checked against its digest.

    Raises:
        RegistryError: the download failed or its files are not the registered ones.
    """
    import mlflow

    try:
        got = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=version.source,
                dst_path=str(into / ".download"),
                tracking_uri=tracking_uri,
            )
        )
    except Exception as err:  # noqa: BLE001 - any failure: nothing is cached
        raise RegistryError(
            f"{version.name} version {version.version}: its files at {version.source} could "
            f"not be downloaded ({short_error(err)})"
        ) from None
    for child in got.iterdir():  # the folder's files, not the folder, go into ``into``
        os.replace(child, into / child.name)
    shutil.rmtree(into / ".download")
    digest = version.tags.get(DIGEST_TAG)
    if digest and folder_digest(into) != digest:
        raise RegistryError(
            f"{version.name} version {version.version}: the files downloaded from "
            f"{version.source} are not the registered ensemble (digest {digest})"
        )
