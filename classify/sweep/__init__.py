"""`make sweep`: Optuna over head designs and settings on the cache; each trial is stage 2's training."""
