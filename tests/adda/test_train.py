"""ADDA: the encoder/decoder split, the two updates, frozen parts, label blindness, the
domain diagnostic, resume, the study's table and its workflow rules."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import assert_roles_disjoint, rewrite_arrays, snakemake

from adseg.adda.adapter import Adapter
from adseg.adda.job import AddaJob
from adseg.adda.probe import auc, domain_auc
from adseg.adda.train import adapt_fold
from adseg.config import ConfigError, deep_merge, load_config, resolve_config
from adseg.evaluation.cases import METRIC_COLUMNS
from adseg.inference.modelfolder import read_fold
from adseg.io import read_json, write_json, write_tsv
from adseg.training.networks import build_segmentor, split_segmentor, with_encoder
from adseg.training.segmentation import train_fold
from adseg.training.steps import discriminator_step, generator_step

ADDA_TRAIN = {
    "train": {"network": {"name": "SegResNet", "spatial_dims": 2, "features": [8, 16]}},
    "adda": {
        "epochs": 2,
        "steps_per_epoch": 2,
        "val_every": 1,
        "lr": 1e-3,
        "feature_d_features": [8],
        "output_d_features": [8, 16],
    },
}


# the tiny experiment's fold with held-out patients of both scanners
FOLD = 1


def _config(tiny_experiment, **sections) -> dict:
    config = deep_merge(copy.deepcopy(tiny_experiment["config"]), ADDA_TRAIN)
    return deep_merge(config, sections)


def _domains(tiny_experiment) -> dict[str, str]:
    cases = read_json(tiny_experiment["preprocessed"] / "dataset.json")["cases"]
    return {c: v["domain"] for c, v in cases.items()}


@pytest.fixture(scope="module")
def source_model(tiny_experiment, tmp_path_factory):
    """Fold 1's source-only model: SegResNet trained on the fold's scanner-A patients."""
    out = tmp_path_factory.mktemp("adda") / "source-only" / f"fold_{FOLD}"
    train_fold(
        _config(tiny_experiment),
        "ce",
        FOLD,
        tiny_experiment["preprocessed"],
        tiny_experiment["splits"],
        out,
        show_progress=False,
        domains=["A"],
        name="source-only",
    )
    return out


def _adapt(tiny_experiment, source_model, out, variant="feature", preprocessed=None, **sections):
    return adapt_fold(
        _config(tiny_experiment, **sections),
        variant,
        FOLD,
        preprocessed or tiny_experiment["preprocessed"],
        tiny_experiment["splits"],
        source_model,
        out,
        resume="no",
        show_progress=False,
    )


def _weights(folder) -> dict:
    return torch.load(folder / "checkpoint_final.pt", weights_only=True)["segmentor"]


@pytest.mark.parametrize("name,features", [("SegResNet", [8, 16, 32]), ("BasicUNet", [4] * 6)])
@pytest.mark.parametrize("dims", [2, 3])
def test_encoder_then_decoder_is_the_monai_network(name, features, dims):
    net = build_segmentor(name, dims, 3, 2, features).eval()
    encoder, decoder = split_segmentor(net)
    x = torch.randn(2, 3, *[32] * dims)
    with torch.no_grad():
        assert torch.equal(decoder(encoder(x)), net(x))
    # the two halves hold every parameter of the network exactly once, under its own keys
    keys = [*encoder.state_dict(), *decoder.state_dict()]
    assert sorted(keys) == sorted(net.state_dict())


def test_networks_without_a_split_are_refused():
    with pytest.raises(ValueError, match="UNet has no explicit encoder/decoder split"):
        split_segmentor(build_segmentor("UNet", 2, 1, 2, [4, 8]))


def test_a_target_encoder_drops_back_into_the_network():
    net = build_segmentor("SegResNet", 2, 1, 2, [4, 8])
    encoder, _ = split_segmentor(net)
    moved = {k: v + 1 for k, v in encoder.state_dict().items()}
    merged = with_encoder(net.state_dict(), moved)
    for key, value in net.state_dict().items():
        assert torch.equal(merged[key], moved.get(key, value)), key
    with pytest.raises(ValueError, match="not in the network"):
        with_encoder(net.state_dict(), {"elsewhere.weight": torch.zeros(1)})


def test_source_only_model_trains_on_its_domain_and_is_tested_on_all(tiny_experiment, source_model):
    spec = read_json(source_model / "model.json")
    domain = _domains(tiny_experiment)
    fold = read_json(tiny_experiment["splits"])["folds"][FOLD]
    assert spec["name"] == "source-only" and spec["domains"] == ["A"]
    assert spec["train_cases"] == [c for c in fold["inner_train"] if domain[c] == "A"]
    assert spec["val_cases"] == [c for c in fold["inner_val"] if domain[c] == "A"]
    assert spec["test_cases"] == fold["val"]
    assert_roles_disjoint(spec, read_json(tiny_experiment["preprocessed"] / "dataset.json"))
    assert {domain[c] for c in spec["test_cases"]} == {"A", "B"}


def test_a_domain_the_fold_lacks_is_an_error(tiny_experiment, tmp_path):
    message = "domain C not in fold 0; its cases come from domains A, B"
    with pytest.raises(ValueError, match=message):
        train_fold(
            _config(tiny_experiment),
            "ce",
            0,
            tiny_experiment["preprocessed"],
            tiny_experiment["splits"],
            tmp_path,
            domains=["C"],
        )


@pytest.mark.parametrize("variant", ["feature", "output"])
def test_each_update_moves_only_its_own_network(tiny_experiment, source_model, variant):
    config = _config(tiny_experiment)
    adapter = Adapter(read_fold(source_model).segmentor(), variant, config, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    xs, xt = (torch.randn(4, 3, 32, 32, generator=g) for _ in range(2))

    def snapshot(module):
        return [p.detach().clone() for p in module.parameters()]

    def same(before, module):
        return all(torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))

    source, enc_t, disc = snapshot(adapter.source), snapshot(adapter.enc_t), snapshot(adapter.disc)
    with torch.no_grad():
        real = adapter.represent(adapter.enc_s, xs)
    fake = adapter.represent(adapter.enc_t, xt)
    if variant == "feature":
        assert fake.shape[1] == 16  # the bottleneck of features [8, 16]
    else:
        assert fake.shape[1] == 2 and torch.allclose(fake.sum(1), torch.ones(()))
    discriminator_step(adapter.disc, adapter.opt_d, real, fake, "nonsaturating")
    assert not same(disc, adapter.disc)
    assert same(enc_t, adapter.enc_t) and same(source, adapter.source)
    disc = snapshot(adapter.disc)
    generator_step(adapter.enc_t, adapter.disc, adapter.opt_t, fake, "nonsaturating")
    assert not same(enc_t, adapter.enc_t)
    assert same(disc, adapter.disc) and same(source, adapter.source)
    # a whole step: M_s and C (the source network) stay as they were
    adapter.step(xs, xt)
    assert same(source, adapter.source)
    assert all(not p.requires_grad for p in adapter.source.parameters())


@pytest.mark.parametrize("variant", ["feature", "output"])
def test_adapted_model_is_the_target_encoder_on_the_frozen_decoder(
    tiny_experiment, source_model, tmp_path, variant
):
    before = _weights(source_model)
    spec = _adapt(tiny_experiment, source_model, tmp_path / variant, variant)
    adapted = _weights(tmp_path / variant)
    encoder_keys = set(split_segmentor(read_fold(source_model).segmentor())[0].state_dict())
    for key, value in _weights(source_model).items():
        assert torch.equal(value, before[key]), key
    moved = [k for k in adapted if not torch.equal(adapted[k], before[k])]
    assert moved and set(moved) <= encoder_keys  # only M_t trained; C is the source's
    domain = _domains(tiny_experiment)
    assert spec["name"] == f"adda-{variant}" and spec["discriminator"] is None
    assert {domain[c] for c in spec["target_cases"]} == {"B"}
    assert {domain[c] for c in spec["train_cases"]} == {"A"}
    assert_roles_disjoint(spec, read_json(tiny_experiment["preprocessed"] / "dataset.json"))
    auc_file = read_json(tmp_path / variant / "domain_auc.json")
    assert 0 <= auc_file["before"] <= 1 and 0 <= auc_file["after"] <= 1
    log = (tmp_path / variant / "training_log.tsv").read_text().splitlines()
    assert log[0].startswith("epoch\tloss_d") and len(log) == 3
    # a complete model folder: what evaluate and predict read
    assert read_fold(tmp_path / variant).segmentor() is not None
    assert (tmp_path / variant / "learning_curves.png").stat().st_size > 5000


def test_target_labels_are_never_used_for_training(tiny_experiment, source_model, tmp_path):
    """Every target label replaced by noise: the same adapted weights and diagnostic."""
    changed = tmp_path / "preprocessed"
    shutil.copytree(tiny_experiment["preprocessed"], changed)
    rng = np.random.default_rng(0)
    targets = [c for c, d in _domains(tiny_experiment).items() if d == "B"]
    assert targets
    for case_id in targets:
        path = changed / "labelsTr" / f"{case_id}.nii.gz"
        img = nib.load(path)
        noise = rng.integers(0, 2, img.shape).astype(np.uint8)
        assert not np.array_equal(noise, np.asarray(img.dataobj))
        nib.save(nib.Nifti1Image(noise, img.affine, img.header), path)
    rewrite_arrays(changed, targets)  # what training and validation read of the cases
    for variant in ("feature", "output"):
        _adapt(tiny_experiment, source_model, tmp_path / f"{variant}-a", variant)
        _adapt(tiny_experiment, source_model, tmp_path / f"{variant}-b", variant, changed)
        a, b = _weights(tmp_path / f"{variant}-a"), _weights(tmp_path / f"{variant}-b")
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (variant, key)
        assert read_json(tmp_path / f"{variant}-a" / "domain_auc.json") == read_json(
            tmp_path / f"{variant}-b" / "domain_auc.json"
        )
        assert any(not torch.equal(a[k], v) for k, v in _weights(source_model).items())


def test_interrupted_adaptation_resumes_to_the_same_weights(
    tiny_experiment, source_model, tmp_path, monkeypatch
):
    import adseg.training.engine

    straight, split = tmp_path / "straight", tmp_path / "split"
    config = _config(tiny_experiment, adda={"epochs": 3})
    prep, splits = tiny_experiment["preprocessed"], tiny_experiment["splits"]
    args = ("feature", FOLD, prep, splits, source_model)
    adapt_fold(config, *args, straight, "no", False)
    save, saved = adseg.training.engine.save_checkpoint, []

    def interrupted(obj, path):
        save(obj, path)
        saved.append(path.name)
        if saved.count("checkpoint_last.pt") == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(adseg.training.engine, "save_checkpoint", interrupted)
    with pytest.raises(KeyboardInterrupt):
        adapt_fold(config, *args, split, "no", False)
    monkeypatch.setattr(adseg.training.engine, "save_checkpoint", save)
    adapt_fold(config, *args, split, "yes", False)
    a, b = _weights(straight), _weights(split)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    rows = (split / "training_log.tsv").read_text().splitlines()[1:]
    assert [r.split("\t")[0] for r in rows] == ["1", "2", "3"]


def test_bad_inputs_are_reported_before_any_work(tiny_experiment, source_model, tmp_path):
    config = _config(tiny_experiment)
    prep, splits = tiny_experiment["preprocessed"], tiny_experiment["splits"]
    with pytest.raises(ValueError, match="is fold 1, not fold 0"):
        AddaJob(config, "feature", 0, prep, splits, source_model, tmp_path)
    other = deep_merge(config, {"adda": {"source": "B", "target": "A"}})
    with pytest.raises(ValueError, match="trained on domains \\['A'\\], not on the source"):
        AddaJob(other, "feature", FOLD, prep, splits, source_model, tmp_path)
    unet = tmp_path / "unet"
    train_fold(tiny_experiment["config"], "ce", FOLD, prep, splits, unet, show_progress=False)
    cmd = [sys.executable, "-m", "adseg", "adda", "--variant", "output", "--fold", str(FOLD)]
    cmd += ["--preprocessed", str(prep), "--splits", str(splits), "--source-model", str(unet)]
    cmd += ["-o", str(tmp_path / "out"), "--set", json.dumps(ADDA_TRAIN), "--no-progress"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1
    assert "network UNet has no explicit encoder/decoder split" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists()


def test_auc_on_hand_computed_rankings():
    assert auc(np.array([1.0, 2, 3, 4]), np.array([0, 0, 1, 1])) == 1.0
    assert auc(np.array([4.0, 3, 2, 1]), np.array([0, 0, 1, 1])) == 0.0
    assert auc(np.array([1.0, 1, 1, 1]), np.array([0, 1, 0, 1])) == 0.5
    # one of the four (positive, negative) pairs ranked wrongly
    assert auc(np.array([1.0, 3, 2, 4]), np.array([0, 0, 1, 1])) == 0.75


def test_domain_classifier_sees_a_shift_and_not_its_absence():
    rng = np.random.default_rng(0)

    def cases(shift, n, prefix):
        return {f"{prefix}{i}": rng.normal(shift, 1, (200, 8)) for i in range(n)}

    train = {"source": ["s0", "s1", "s2"], "target": ["t0", "t1", "t2"]}
    test = {"source": ["s3", "s4"], "target": ["t3", "t4"]}
    shifted = {"source": cases(0, 5, "s"), "target": cases(1.5, 5, "t")}
    alike = {"source": cases(0, 5, "s"), "target": cases(0, 5, "t")}
    assert domain_auc(shifted, train, test) > 0.95
    assert abs(domain_auc(alike, train, test) - 0.5) < 0.05


def _metric_rows(model, fold, patient, domain, dice):
    row = {c: 0 for c in METRIC_COLUMNS}
    row |= {"scheme": model, "fold": fold, "case_id": patient, "patient_id": patient}
    row |= {"domain": domain, "label": "lesion", "dice": dice, "sensitivity": dice}
    row |= {"specificity": 0.99, "precision": dice, "hd95_mm": 1.0, "volume_true_ml": 1.0}
    row |= {"volume_pred_ml": 1.0, "lesion_tp": 1, "lesion_fn": 0, "lesion_fp": 0}
    return row


def test_study_table_reports_every_model_by_domain(tmp_path):
    from adseg.adda.summary import summarize_adda

    dice = {"source-only": 0.3, "adda-feature": 0.5, "adda-output": 0.45, "oracle": 0.7}
    files, aucs = [], []
    for model, base in dice.items():
        for fold in (0, 1):
            folder = tmp_path / model / f"fold_{fold}"
            rows = [
                _metric_rows(model, fold, f"p{fold}{i}{d}", d, base + 0.01 * i + (d == "A") * 0.2)
                for i in range(3)
                for d in ("A", "B")
            ]
            write_tsv(folder / "metrics.tsv", rows, METRIC_COLUMNS)
            files.append(folder / "metrics.tsv")
            if model.startswith("adda"):
                after = 0.6 if model == "adda-feature" else 0.7
                write_json(folder / "domain_auc.json", {"before": 0.9, "after": after})
                aucs.append(folder / "domain_auc.json")
    path = summarize_adda(files, aucs, tmp_path, "A", "B", "study")
    text = path.read_text()
    # target domain B: mean of base + (0, 0.01, 0.02) over 6 patients
    assert "| source only | A labelled | 0.31 ± 0.01 (n=6)" in text
    assert "| ADDA, feature level | A labelled + B unlabelled | 0.51 ± 0.01 (n=6)" in text
    assert "| target oracle (upper bound) | B labelled | 0.71 ± 0.01 (n=6)" in text
    assert "| 0.90 ± 0.00 |" in text and "| 0.60 ± 0.00 |" in text
    assert "| source-only | A | 0.51 ± 0.01 (n=6)" in text
    assert "| dice | source-only | adda-feature | 6 | -0.200 |" in text
    tsv = (tmp_path / "summary.tsv").read_text()
    assert tsv.startswith("domain\tlabel\tscheme\tmetric")
    assert (tmp_path / "plots" / "B_lesion_dice.png").is_file()
    assert (tmp_path / "domain_auc.tsv").read_text().count("source-only") == 2


def test_config_asks_for_a_splittable_network_and_both_domains_in_folds():
    with pytest.raises(ConfigError, match="train.network.name UNet has no such split"):
        resolve_config({"adda": {"enabled": True}})
    with pytest.raises(ConfigError, match="folds.stratify must include domain"):
        resolve_config(
            {
                "adda": {"enabled": True},
                "train": {"network": {"name": "SegResNet"}},
                "folds": {"stratify": ["lesion"]},
            }
        )
    config = load_config("config/adda.yaml")
    assert config["adda"]["enabled"] and config["schemes"] == []


def test_workflow_runs_the_study_only_when_asked(tmp_path):
    def jobs(*configs):
        args = ["--dry-run", "--quiet", "rules", "--cores", "2"]
        run = snakemake(*args, "--configfile", *configs, "--config", f"results_dir={tmp_path}")
        assert run.returncode == 0, run.stderr[-2000:]
        return run.stdout

    study = jobs("config/tiny-adda.yaml")
    for rule, n in (("adda_train", 4), ("adda_adapt", 4), ("adda_evaluate", 8)):
        assert any(line.split() == [rule, str(n)] for line in study.splitlines()), study
    assert "adda_summarize" in study and "\ntrain " not in study
    assert "adda_" not in jobs("config/tiny.yaml")
