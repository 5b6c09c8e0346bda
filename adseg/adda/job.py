"""One ADDA job (a variant on a fold), checked against its source model, config and splits."""

from __future__ import annotations

from pathlib import Path

from adseg.data.splits import case_meta_from_dataset, fold_cases
from adseg.inference.modelfolder import read_fold
from adseg.io import read_json
from adseg.training.job import downsampling
from adseg.training.losses import check_loss
from adseg.training.schemes import ADDA_VARIANTS, SPLITTABLE_NETWORKS


class AddaJob:
    """One (variant, fold) adaptation, checked: what :func:`adapt_fold` needs."""

    def __init__(self, config, variant, fold, preprocessed, splits, source_dir, out):
        self.config, self.variant, self.fold = config, variant, fold
        self.preprocessed, self.splits_path = Path(preprocessed), Path(splits)
        self.source_dir, self.out = Path(source_dir), Path(out)
        self.scheme = self.name = f"adda-{variant}"
        a = config["adda"]
        problems = []
        if variant not in ADDA_VARIANTS:
            problems.append(f"variant {variant!r} unknown; choose from {', '.join(ADDA_VARIANTS)}")
        try:
            check_loss(a["loss"])
        except ValueError as err:
            problems.append(f"adda.loss: {err}")
        self.source = read_fold(self.source_dir)
        spec = self.source.spec
        net = spec["network"]
        if net["name"] not in SPLITTABLE_NETWORKS:
            problems.append(
                f"{self.source_dir}: network {net['name']} has no explicit encoder/decoder split; "
                f"ADDA needs train.network.name {' or '.join(SPLITTABLE_NETWORKS)}"
            )
        if spec["fold"] != fold:
            problems.append(f"{self.source_dir} is fold {spec['fold']}, not fold {fold}")
        if spec.get("domains") not in (None, [a["source"]]):
            problems.append(
                f"{self.source_dir} was trained on domains {spec['domains']}, not on the "
                f"source domain {a['source']!r} (adda.source)"
            )
        dataset = read_json(self.preprocessed / "dataset.json")
        entry = fold_cases(read_json(splits), fold, case_meta_from_dataset(dataset), "splits")
        domain = {c: dataset["cases"][c]["domain"] for c in dataset["cases"]}

        def of(cases, d):
            return [c for c in cases if domain[c] == d]

        # fitted on the inner training patients (target ones without labels), checked on the
        # inner validation ones, tested on the fold's held-out patients
        self.source_train = of(entry["train"], a["source"])
        self.target_train = of(entry["train"], a["target"])
        self.source_val = of(entry["val"], a["source"])
        self.target_val = of(entry["val"], a["target"])
        self.test_cases = list(entry["test"])
        self.source_test = of(entry["test"], a["source"])
        self.target_test = of(entry["test"], a["target"])
        if a["source"] == a["target"]:
            problems.append(f"adda.source and adda.target are both {a['source']!r}")
        for name, cases in (
            (f"source ({a['source']}) training", self.source_train),
            (f"target ({a['target']}) training", self.target_train),
        ):
            if not cases:
                present = ", ".join(sorted(set(domain.values())))
                problems.append(f"fold {fold} has no {name} cases; its domains are {present}")
        self.factor = downsampling(net["name"], net["features"])
        if problems:
            raise ValueError("cannot adapt:\n  " + "\n  ".join(problems))
        self.spec = spec  # the source model's
