"""Per-patient metrics, per-fold evaluation, and the statistics and tables of every study."""
