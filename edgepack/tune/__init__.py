"""``edgepack tune``: search optimization and quantization settings for the most accurate model that fits a target.

space (the knobs, as TOML data) → study (Optuna storage, sampler, pruner, budget, workers) → trial
(a real convert + validate through :mod:`edgepack.api`, measured and judged against the target's
limits) → report (trials.csv, pareto.png, the kept bundles). :mod:`edgepack.tune.run` ties them up.
"""
