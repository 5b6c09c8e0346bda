"""Experiment configuration: one JSON schema, defaults filled from it, clear errors.

The schema lives in ``workflow/schemas/config.schema.yaml`` (shipped with the package as
``adseg/resources/config.schema.yaml``); Snakemake and the CLI both validate through
:func:`resolve_config`, so a config accepted by one is accepted by the other.

One layering rule, Snakemake's own: a user's config file is laid over the embedded default
``config/config.yaml`` (shipped as ``adseg/resources/config.yaml``), mappings merged key by
key and every other value replaced; the schema's defaults fill what neither sets.
``snakemake --configfile FILE`` does this through the Snakefile's ``configfile:`` directive,
``adseg COMMAND --config FILE`` through :func:`load_config`, and ``adseg config --config FILE``
prints the result.
"""

from __future__ import annotations

import copy
import json
import os
import re
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from adseg.errors import AdsegError

SCHEMA_RESOURCE = "config.schema.yaml"
DEFAULT_RESOURCE = "config.yaml"
ENV_CONFIG = "ADSEG_WORKFLOW_CONFIG"
"""Environment variable holding the workflow's whole resolved config as JSON (set by the
Snakefile): jobs get only the config sections they use, but track under the whole config
and take its result-neutral settings."""
RESULT_NEUTRAL = "x-result-neutral"
"""Schema mark of a setting that changes how a job runs or how often it reports, not what it
trains: threads, workers, device, mixed precision, validation and figure frequency. One list
for the workflow's rerun logic, MLflow's run identity and every resume fingerprint."""


class ConfigError(AdsegError, ValueError):
    """A configuration that does not fit the schema; the message lists every problem."""


@cache
def schema() -> dict:
    """The config JSON schema as a dict."""
    text = resources.files("adseg.resources").joinpath(SCHEMA_RESOURCE).read_text()
    return yaml.safe_load(text)


@cache
def embedded_default() -> dict:
    """The embedded default experiment, ``config/config.yaml``, as a dict (unresolved)."""
    text = resources.files("adseg.resources").joinpath(DEFAULT_RESOURCE).read_text()
    return yaml.safe_load(text) or {}


def _fill_defaults(validator_class: type) -> type:
    """Extend a jsonschema validator so it writes schema defaults into the instance.

    The recipe from the jsonschema FAQ: before checking ``properties``, set every missing
    property that has a default. Object defaults (``{}``) are then filled recursively.
    """
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema_):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema_)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _fill_defaults(jsonschema.Draft202012Validator)


def _describe(error: jsonschema.ValidationError) -> str:
    """One readable line for a schema error, listing allowed keys for unknown ones."""
    where = ".".join(str(p) for p in error.absolute_path) or "<top level>"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        names = ", ".join(map(repr, unknown))
        return f"{where}: unknown key(s) {names}; allowed: {', '.join(allowed)}"
    if error.validator == "enum":
        choices = ", ".join(map(str, error.validator_value))
        return f"{where}: {error.instance!r} is not allowed; choose from {choices}"
    hint = error.schema.get("description") if isinstance(error.schema, dict) else None
    if error.validator in ("pattern", "oneOf") and hint:
        return f"{where}: {error.instance!r} is not valid ({' '.join(hint.split())})"
    return f"{where}: {error.message}"


def resolve_config(config: dict | None, base_dir: str | os.PathLike | None = None) -> dict:
    """Validate ``config`` against the schema and return a copy with defaults filled.

    Args:
        config: the raw config (e.g. parsed YAML); None means all defaults.
        base_dir: folder that relative dataset paths are resolved against; default: cwd.

    Raises:
        ConfigError: listing every problem, not just the first.
    """
    resolved = copy.deepcopy(config) if config else {}
    errors = sorted(_Validator(schema()).iter_errors(resolved), key=lambda e: list(e.absolute_path))
    problems = [_describe(e) for e in errors]
    if not problems:
        problems = _semantic_problems(resolved, Path(base_dir or "."))
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    return resolved


def _semantic_problems(config: dict, base_dir: Path) -> list[str]:
    """Checks that a JSON schema cannot express (files on disk, cross-key rules)."""
    problems = []
    dataset = config["dataset"]
    if dataset["source"] != "synthetic":
        if not dataset["path"]:
            problems.append(f"dataset.path: required when dataset.source is {dataset['source']!r}")
        elif not (base_dir / dataset["path"]).is_dir():
            problems.append(f"dataset.path: folder {dataset['path']!r} does not exist")
    regex = dataset["patient_regex"]
    if regex:
        try:
            groups = re.compile(regex).groups
        except re.error as err:
            groups = None
            problems.append(f"dataset.patient_regex: {regex!r} is not a regular expression ({err})")
        if groups == 0:
            problems.append(
                f"dataset.patient_regex: {regex!r} needs a group (...) for the patient id"
            )
    adda = config["adda"]
    if adda["enabled"]:
        from adseg.training.schemes import SPLITTABLE_NETWORKS

        network = config["train"]["network"]["name"]
        if network not in SPLITTABLE_NETWORKS:
            problems.append(
                f"adda.enabled: ADDA splits the segmentor into encoder and decoder; "
                f"train.network.name {network} has no such split, use "
                f"{' or '.join(SPLITTABLE_NETWORKS)}"
            )
        if adda["source"] == adda["target"]:
            problems.append(f"adda.source and adda.target are both {adda['source']!r}")
        if not config["folds"]["file"] and "domain" not in config["folds"]["stratify"]:
            problems.append(
                "adda.enabled: folds.stratify must include domain, so every fold has "
                "patients of both domains"
            )
    from adseg.gan.settings import problems as gan_problems

    problems += gan_problems(config)
    splits_file = config["folds"]["file"]
    if splits_file and not (base_dir / splits_file).is_file():
        problems.append(f"folds.file: file {splits_file!r} does not exist")
    return problems


@cache
def result_neutral() -> tuple[tuple[str, ...], ...]:
    """The config paths marked result-neutral in the schema, e.g. ``("train", "threads")``."""
    found: list[tuple[str, ...]] = []

    def walk(node: dict, path: tuple[str, ...]) -> None:
        for name, sub in node.get("properties", {}).items():
            if sub.get(RESULT_NEUTRAL):
                found.append((*path, name))
            walk(sub, (*path, name))

    walk(schema(), ())
    return tuple(found)


def without_result_neutral(config: dict, *path: str) -> dict:
    """A copy of the section at ``path`` of ``config`` (the whole config without a path)
    less its result-neutral settings, at any depth."""
    out = config
    for key in path:
        out = out[key]
    out = copy.deepcopy(out)
    for full in result_neutral():
        if full[: len(path)] != path:
            continue
        node = out
        for key in full[len(path) : -1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(full[-1], None)
    return out


def result_neutral_of(config: dict) -> dict:
    """Only the result-neutral settings of ``config``, as a nested dict."""
    out: dict = {}
    for full in result_neutral():
        node, target = config, out
        for key in full[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
            target = target.setdefault(key, {})
        if isinstance(node, dict) and full[-1] in node:
            target[full[-1]] = copy.deepcopy(node[full[-1]])
    return out


def load_config(path: str | os.PathLike | None, overrides: dict | None = None) -> dict:
    """Lay a YAML config (or none) over the embedded default, merge ``overrides`` into it and
    resolve it: what ``snakemake --configfile path`` runs with.

    Raises:
        ConfigError: if the file is missing, not YAML, or does not fit the schema.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})") from err
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    base = embedded_default()
    workflow = os.environ.get(ENV_CONFIG)
    if workflow:
        # a workflow job: its --set holds what it trains; how it runs comes from the config
        # the workflow was started with (not a rule param, so changing it reruns nothing)
        # only for the sections the job was given: a job checks the config it runs under,
        # and another section's setting (adda.enabled) would bring that section's checks
        neutral = result_neutral_of(json.loads(workflow))
        # (they win over the embedded default, not over the job's own settings)
        given = {k: v for k, v in neutral.items() if k in (overrides or {})}
        base = deep_merge(base, given)
    try:
        return resolve_config(deep_merge(base, deep_merge(raw, overrides or {})))
    except ConfigError as err:
        raise ConfigError(f"{path or 'defaults'}: {err}") from None


def deep_merge(base: dict, override: dict) -> dict:
    """Recursively merge ``override`` into a copy of ``base`` (override wins)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def cohort_layout(config: dict) -> str:
    """The cohort layout to read: the synthetic cohort is nnU-Net raw, found by ``auto``."""
    source = config["dataset"]["source"]
    return "auto" if source in ("synthetic", "auto") else source


def experiment_dir(config: dict) -> Path:
    """``<results_dir>/<experiment>``: where every output of this experiment goes."""
    return Path(config["results_dir"]) / config["experiment"]
