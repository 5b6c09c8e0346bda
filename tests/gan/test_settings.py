"""The gan config section: recipes with defaults, contradictions refused, per-job settings."""

from __future__ import annotations

import pytest

from adseg.config import ConfigError, resolve_config
from adseg.gan.settings import job_settings, model_names, recipe, split_name


def test_default_recipes_follow_dcgan_and_wgan_gp():
    config = resolve_config(None)
    dcgan = recipe(config, "synthesis", "dcgan")
    assert (dcgan["loss"], dcgan["g_lr"], dcgan["betas"]) == ("nonsaturating", 2e-4, [0.5, 0.999])
    assert dcgan["d_norm"] == "batch"  # auto
    wgan = recipe(config, "synthesis", "wgan-gp")
    assert (wgan["d_steps"], wgan["gp_weight"], wgan["betas"]) == (5, 10.0, [0.0, 0.9])
    assert wgan["d_norm"] == "layer"  # auto: no batch norm in a WGAN-GP critic
    assert model_names(config, "translation") == ["translation-pix2pix", "translation-l1"]


def test_a_user_recipe_gets_every_default():
    config = resolve_config({"gan": {"synthesis": {"models": {"mine": {"loss": "hinge"}}}}})
    assert list(config["gan"]["synthesis"]["models"]) == ["mine"]
    mine = recipe(config, "synthesis", "mine")
    assert mine["loss"] == "hinge" and mine["d_steps"] == 1 and mine["real_label"] == 1.0


def test_unknown_recipe_key_lists_the_allowed_ones():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) 'lr'; allowed: adv_weight"):
        resolve_config({"gan": {"synthesis": {"models": {"x": {"lr": 0.1}}}}})


def test_contradictions_are_reported_together():
    bad = {
        "gan": {
            "synthesis": {"models": {"x": {"loss": "wgan-gp", "d_norm": "batch"}}},
            "translation": {
                "source": "ADC",
                "target": "ADC",
                "patch_size": [60, 64],
                "models": {"y": {"adv_weight": 0.0, "l1_weight": 0.0}},
            },
        }
    }
    with pytest.raises(ConfigError) as err:
        resolve_config(bad)
    text = str(err.value)
    assert "gan.synthesis.models.x.d_norm batch with loss wgan-gp" in text
    assert "gan.translation.source and target are both 'ADC'" in text
    assert "patch_size [60, 64]: a U-Net of 4 levels needs multiples of 8" in text
    assert "gan.translation.models.y: adv_weight and l1_weight are both 0" in text


def test_patchgan_depth_must_fit_the_patch():
    with pytest.raises(ConfigError, match="PatchGAN needs patches of at least 24 voxels"):
        resolve_config({"gan": {"translation": {"patch_size": [16, 16], "levels": 3}}})


def test_job_settings_hold_only_the_jobs_model():
    config = resolve_config(None)
    settings = job_settings(config, "synthesis", "wgan-gp")
    assert list(settings["synthesis"]["models"]) == ["wgan-gp"]
    assert "translation" not in settings and settings["seed"] == 0


def test_adding_a_fold_changes_no_jobs_settings():
    # the workflow passes these settings as params: a change reruns the job
    one = resolve_config({"gan": {"synthesis": {"folds": [0]}}})
    two = resolve_config({"gan": {"synthesis": {"folds": [0, 1]}}})
    assert job_settings(one, "synthesis", "dcgan") == job_settings(two, "synthesis", "dcgan")


def test_gan_folds_must_exist():
    with pytest.raises(ConfigError, match=r"gan.synthesis.folds \[0, 4\]: folds.n is 4"):
        resolve_config({"gan": {"synthesis": {"folds": [0, 4]}}})


def test_model_names_split_back():
    assert split_name("synthesis-wgan-gp") == ("synthesis", "wgan-gp")
    with pytest.raises(ValueError, match="names are <task>-<model>"):
        split_name("hybrid")
    with pytest.raises(ValueError, match="has no 'nope'; it has dcgan, wgan-gp"):
        recipe(resolve_config(None), "synthesis", "nope")
