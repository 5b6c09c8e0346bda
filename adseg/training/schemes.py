"""The training schemes, by name: one entry each (Kohl et al. 2017, plus Dice + CE).

An entry says what the segmentor S minimises, as data, and how tables name it; the update
that reads it is :class:`adseg.training.segmentor.SegmentorTrainer`. Adding a scheme is one
entry here plus its test (tests/training/test_schemes.py checks the config schema's choices
against this registry).

A module of its own, without torch or MONAI, so the workflow's rule files can name the
schemes: every Slurm job parses the Snakefile again, and those imports cost seconds a job.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scheme:
    """One training scheme.

    Attributes:
        label: the scheme's name in tables and figures.
        loss: what S minimises (and D, for adversarial schemes), as tables write it.
        supervised: the supervised loss, ``ce`` (L_mce), ``wce`` (L_mce with class weights
            from the training patients' label frequencies) or ``dicece`` (L_dice + L_mce); an
            adversarial scheme without ``hybrid`` logs it but does not minimise it.
        adversarial: a discriminator D of label maps is trained against S.
        hybrid: S minimises λ·supervised + L_S (λ = ``adversarial.hybrid_weight``).
        frozen_discriminator: D keeps its random initial weights (a control: what the
            adversarial term does without a D that learns).
        fitted: ``gradient`` (a network trained epoch by epoch) or ``rule`` (a baseline fitted
            in one pass, :mod:`adseg.training.threshold`; the fields above do not apply).
    """

    label: str
    loss: str
    supervised: str = "ce"
    adversarial: bool = False
    hybrid: bool = False
    frozen_discriminator: bool = False
    fitted: str = "gradient"


SCHEMES: dict[str, Scheme] = {
    "ce": Scheme("cross-entropy", "L_mce"),
    "dicece": Scheme("Dice + cross-entropy", "L_dice + L_mce", supervised="dicece"),
    "wce": Scheme("class-weighted cross-entropy", "L_wce", supervised="wce"),
    "adversarial": Scheme("adversarial", "L_S & L_D", adversarial=True),
    "hybrid": Scheme("hybrid", "λ·L_mce + L_S & L_D", adversarial=True, hybrid=True),
    # the control of hybrid: the same game against a D that never learns
    "hybrid-frozen": Scheme(
        "hybrid, frozen random D",
        "λ·L_mce + L_S, D fixed",
        adversarial=True,
        hybrid=True,
        frozen_discriminator=True,
    ),
    # a non-learned baseline: per-channel thresholds and a least lesion size, fitted per fold
    "threshold": Scheme("threshold rule", "z-score thresholds + min component size", fitted="rule"),
}
ADVERSARIAL_SCHEMES = tuple(name for name, s in SCHEMES.items() if s.adversarial)

# ADDA (Tzeng et al. 2017): the models of its study, by name (each a folder under
# <experiment>/adda/), and the networks that have an explicit encoder/decoder split
ADDA_VARIANTS = ("feature", "output")
ADDA_MODELS = ("source-only", "adda-feature", "adda-output", "oracle")
SPLITTABLE_NETWORKS = ("BasicUNet", "SegResNet")
