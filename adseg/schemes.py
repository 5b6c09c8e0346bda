"""The training schemes, by name (Kohl et al. 2017, plus Dice + CE).

A module of its own so the workflow's rule files can name them without importing torch and
MONAI: every Slurm job parses the Snakefile again, and those imports cost seconds a job.
"""

from __future__ import annotations

SCHEMES = ("ce", "dicece", "adversarial", "hybrid")
ADVERSARIAL_SCHEMES = ("adversarial", "hybrid")
