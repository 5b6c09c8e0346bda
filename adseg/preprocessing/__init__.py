"""One grid for every case: the per-case plan, the cohort run and its QC figures."""
