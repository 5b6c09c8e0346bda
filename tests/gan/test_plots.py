"""The GAN tasks' learning curves: named axes, D's scores as what they are."""

from __future__ import annotations

from adseg.gan.plots import gan_panels


def test_translation_curves_show_held_out_errors_and_a_logit_ds_probabilities():
    history = [{"epoch": 1, "loss_d": 1.0, "val_mae": 0.2, "val_ssim": 0.6}]
    losses, scores, third = gan_panels(history, "feature-matching")
    assert [p.ylabel for p in (losses, scores)] == ["loss", "sigmoid(mean logit)"]
    assert scores.transform(0.0) == 0.5 and scores.reference == (0.5, "chance (0.5)")
    assert [key for key, _ in third.series] == ["val_mae", "val_ssim"]


def test_synthesis_curves_show_the_spread_against_the_real_ones():
    _, scores, third = gan_panels([{"epoch": 1, "std_ratio": 0.8}], "lsgan")
    assert scores.transform is None and scores.ylabel.startswith("mean D score (LSGAN")
    assert third.series == (("std_ratio", "spread ratio"),) and third.reference[0] == 1.0
