"""Cohorts on disk: layouts, discovery, validation, the synthetic cohort and its phantom, folds."""
