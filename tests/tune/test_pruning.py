"""The median rule among feasible trials: a small model is not stopped for losing to ones too big to ship."""

from __future__ import annotations

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from edgepack.tune.pruning import FeasibleMedianPruner


def _trial(status: str, scores: list[float], state=TrialState.COMPLETE):
    return create_trial(state=state, value=scores[-1] if state == TrialState.COMPLETE else None,
                        params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
                        intermediate_values=dict(enumerate(scores)), user_attrs={"status": status})


def test_median_over_feasible_trials_only():
    study = optuna.create_study(direction="maximize")
    for scores in ([99.0, 99.5], [98.5, 99.4]):  # accurate but over the flash limit
        study.add_trial(_trial("infeasible", scores))
    pruner = FeasibleMedianPruner(n_startup_trials=2, n_warmup_steps=1)
    small = _trial("", [90.0, 93.0], state=TrialState.RUNNING)
    assert not pruner.prune(study, small)  # no feasible trials to compare with yet
    for scores in ([91.0, 94.0], [90.5, 92.0]):
        study.add_trial(_trial("feasible", scores))
    assert not pruner.prune(study, small)  # 93.0 >= median(94.0, 92.0)
    assert pruner.prune(study, _trial("", [90.0, 91.0], state=TrialState.RUNNING))
    assert not pruner.prune(study, _trial("", [10.0], state=TrialState.RUNNING))  # the first epoch is warm-up
