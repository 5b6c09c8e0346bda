"""The training schemes, by name (Kohl et al. 2017, plus Dice + CE).

A module of its own so the workflow's rule files can name them without importing torch and
MONAI: every Slurm job parses the Snakefile again, and those imports cost seconds a job.
"""

from __future__ import annotations

SCHEMES = ("ce", "dicece", "adversarial", "hybrid")
ADVERSARIAL_SCHEMES = ("adversarial", "hybrid")

# ADDA (Tzeng et al. 2017): the models of its study, by name (each a folder under
# <experiment>/adda/), and the networks that have an explicit encoder/decoder split
ADDA_VARIANTS = ("feature", "output")
ADDA_MODELS = ("source-only", "adda-feature", "adda-output", "oracle")
SPLITTABLE_NETWORKS = ("BasicUNet", "SegResNet")
