"""adseg: adversarial segmentation of multi-parametric MRI.

The package is split by concern: :mod:`adseg.synth` builds the synthetic cohort from the
phantom of :mod:`adseg.phantom`, :mod:`adseg.cohort` discovers nnU-Net/MSD folders (their file
layouts in :mod:`adseg.layouts`), :mod:`adseg.validate` checks them,
:mod:`adseg.preprocess` puts cases on one grid, :mod:`adseg.splits` makes patient-level
folds, and :mod:`adseg.cli` exposes all of it as ``adseg <command>``.
"""

from __future__ import annotations

__version__ = "0.1.0"
