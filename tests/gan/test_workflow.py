"""The GAN rules in the real Snakemake workflow (dry runs: which jobs, and what a change
reruns). The tiny GAN study itself runs end to end in CI (.ci/run)."""

from __future__ import annotations

import yaml
from conftest import snakemake

from adseg.config import load_config


def jobs(tmp_path, *configs) -> dict[str, int]:
    args = ["--dry-run", "--quiet", "rules", "--cores", "2", "--configfile", *configs]
    run = snakemake(*args, "--config", f"results_dir={tmp_path}")
    assert run.returncode == 0, run.stderr[-2000:]
    counts = {}
    for line in run.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    return counts


def test_gan_study_jobs(tmp_path):
    study = jobs(tmp_path, "config/tiny-gan.yaml")
    # 2 synthesis models on fold 0, 2 translation models on both folds; translation evaluated
    assert study["gan_train"] == 2 + 4 and study["gan_evaluate"] == 4
    assert study["gan_summary"] == 1 and "train" not in study
    # the modes study: a job per loss, then its table
    assert study["gan_modes"] == 2 and study["gan_modes_summary"] == 1
    assert not any(rule.startswith("gan_") for rule in jobs(tmp_path, "config/tiny.yaml"))


def test_one_task_only(tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"gan": {"tasks": ["synthesis"]}}))
    study = jobs(tmp_path, "config/tiny-gan.yaml", str(overlay))
    assert study["gan_train"] == 2 and "gan_evaluate" not in study and "gan_modes" not in study
    overlay.write_text(yaml.safe_dump({"gan": {"tasks": ["modes"]}}))
    study = jobs(tmp_path, "config/tiny-gan.yaml", str(overlay))
    assert "gan_train" not in study and "gan_summary" not in study and study["gan_modes"] == 2


def test_shipped_gan_configs_resolve():
    for path in ("config/gan.yaml", "config/tiny-gan.yaml"):
        config = load_config(path)
        assert config["gan"]["enabled"] and config["schemes"] == []
