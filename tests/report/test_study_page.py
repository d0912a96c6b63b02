"""The study page's parts that a two-trial study cannot show: parameter importances and long tables."""

from __future__ import annotations

from edgepack.report.study import write_study_report
from edgepack.tune.report import importances


def _study():
    import optuna
    from optuna.distributions import CategoricalDistribution, IntDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    dists = {"calibration_samples": IntDistribution(40, 400), "per_tensor": CategoricalDistribution([False, True])}
    for i in range(12):
        samples, per_tensor = 40 + 30 * i, bool(i % 2)
        study.add_trial(optuna.trial.create_trial(params={"calibration_samples": samples, "per_tensor": per_tensor},
                                                  distributions=dists, value=0.5 + samples / 1000))
    return study


def test_importances_name_the_knob_that_moved_the_objective():
    found = importances(_study())
    assert found is not None and max(found, key=found.get) == "calibration_samples"


def test_study_page_shows_importances_and_escapes_reasons(tmp_path):
    page = write_study_report(tmp_path / "report.html", title="t <i>x</i>", columns=["trial", "bytes"],
                              rows=[[0, 10], [1, 20]], best={"trial": 1}, importances={"a": 0.8, "b<": 0.2},
                              infeasible=[{"trial": 0, "status": "infeasible", "reason": "<script>x</script>"}],
                              counts={"feasible": 1, "infeasible": 1}, picture=None, best_link=None)
    html = page.read_text("utf-8")
    assert 'id="importances"' in html and "b&lt;" in html and 'width="200.0"' in html and 'width="50.0"' in html
    assert "<script>x</script>" not in html and "&lt;script&gt;x&lt;/script&gt;" in html and "<i>x</i>" not in html
