"""Stopping hopeless trials from their per-epoch fine-tuning score, compared like with like.

Optuna's median rule compares a trial with every finished one; under a size limit that stops exactly
the small models (less accurate than big ones the target cannot take). Here the median is over
*feasible* finished trials only. Hyperband is Optuna's own.
"""

from __future__ import annotations

import statistics

import optuna
from optuna.trial import TrialState


class FeasibleMedianPruner(optuna.pruners.BasePruner):
    """Prune when the trial's score at an epoch is below the median of feasible finished trials' at that epoch."""

    def __init__(self, n_startup_trials: int = 2, n_warmup_steps: int = 1) -> None:
        self.n_startup_trials = n_startup_trials
        self.n_warmup_steps = n_warmup_steps

    def prune(self, study: optuna.study.Study, trial: optuna.trial.FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self.n_warmup_steps:
            return False
        others = [t.intermediate_values[step] for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                  if t.user_attrs.get("status") == "feasible" and step in t.intermediate_values]
        if len(others) < self.n_startup_trials:
            return False
        return trial.intermediate_values[step] < statistics.median(others)
