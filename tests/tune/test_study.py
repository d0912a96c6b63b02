"""edgepack tune end to end on the tiny classifier: grid coverage, infeasible trials, report, resume,
and two worker processes sharing one study on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgepack import api
from edgepack.cli import main

GRID = set(itertools.product(["False", "True"], ["40", "80"]))


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "trials.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _points(rows) -> list[tuple[str, str]]:
    return [(r["per_tensor"], r["calibration_samples"]) for r in rows]


@pytest.fixture(scope="module")
def per_tensor_bytes(tmp_path_factory, keras3_model, calib_npy) -> int:
    out = tmp_path_factory.mktemp("pt") / "b"
    res = api.convert(model=keras3_model, output=out, calibration=calib_npy, per_tensor=True)
    return res.manifest.artifact("model").bytes


def test_grid_covers_its_grid_records_infeasible_and_reports(tmp_path, keras3_model, calib_npy, labelled_npz,
                                                             small_space, per_tensor_bytes):
    out = tmp_path / "tuned"
    args = ["tune", str(keras3_model), "-o", str(out), "--eval-data", str(labelled_npz), "--calibration",
            str(calib_npy), "--space", str(small_space), "--sampler", "grid", "--max-bytes", str(per_tensor_bytes)]
    res = CliRunner().invoke(main, [*args, "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["trials"] == 4 and result["counts"] == {"feasible": 2, "infeasible": 2}
    rows = _rows(out)
    assert sorted(_points(rows)) == sorted(GRID)  # every grid point exactly once
    for r in rows:
        if r["per_tensor"] == "False":  # per-channel scales make the model bigger than the limit
            assert r["status"] == "infeasible" and r["feasible"] == "False"
            assert int(r["bytes"]) > per_tensor_bytes and "--max-bytes" in r["reason"]
            assert float(r["objective"]) >= 0  # measured all the same, not dropped
        else:
            assert r["status"] == "feasible" and int(r["bytes"]) <= per_tensor_bytes
    best = json.loads((out / "best.json").read_text())
    assert best["params"]["per_tensor"] is True
    manifest = json.loads((out / "best" / "manifest.json").read_text())
    assert manifest["quantization"]["granularity"] == "per-tensor"
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "trials").exists()  # trial bundles are scratch; best/ is what is kept

    (out / "trials.csv").unlink()
    (out / "pareto.png").unlink()
    res = CliRunner().invoke(main, [*args, "--report", "--json"])
    assert res.exit_code == 0, res.output
    assert _rows(out) == rows and (out / "pareto.png").is_file()


def test_resume_after_interrupt(tmp_path, keras3_model, calib_npy, labelled_npz, small_space):
    from edgepack.request import TuneOptions
    from edgepack.tune.job import make_job
    from edgepack.tune.run import run_tune

    out = tmp_path / "tuned"
    calls = []

    def convert_then_ctrl_c(**kwargs):
        calls.append(kwargs)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return api.convert(**kwargs)

    job = make_job(model=keras3_model, output=out, flags={"calibration": calib_npy},
                   options=TuneOptions(eval_data=labelled_npz, space=small_space, sampler="grid"))
    first = run_tune(job, convert=convert_then_ctrl_c, validate=api.validate)
    assert first["interrupted"] and first["trials"] == 1
    assert len(_rows(out)) == 1 and (out / "best").is_dir()  # the finished trial is kept and reported

    second = api.tune(model=keras3_model, output=out, eval_data=labelled_npz, calibration=calib_npy,
                      space=small_space, sampler="grid")
    assert not second["interrupted"] and second["trials"] == 4
    rows = _rows(out)
    assert sorted(_points(rows)) == sorted(GRID)
    assert [int(r["trial"]) for r in rows] == [0, 2, 3, 4]  # trial 1 was interrupted, its point ran again as 4


def _two_workers(out: Path, storage: str | None, keras3_model, calib_npy, labelled_npz, small_space) -> list[dict]:
    result = api.tune(model=keras3_model, output=out, eval_data=labelled_npz, calibration=calib_npy,
                      space=small_space, sampler="random", trials=3, workers=2, storage=storage, study="shared")
    assert result["trials"] == 3 and not result["interrupted"]
    rows = _rows(out)
    numbers = [int(r["trial"]) for r in rows]
    assert sorted(numbers) == [0, 1, 2]  # none lost, none twice, none beyond the budget
    assert all(r["status"] == "feasible" for r in rows)
    return rows


def _left_over(storage: str, study: str) -> int:
    import optuna
    from optuna.trial import TrialState

    from edgepack.tune.study import open_storage, storage_url

    s = optuna.load_study(study_name=study, storage=open_storage(storage_url(storage, Path("."))))
    return len(s.get_trials(states=(TrialState.WAITING, TrialState.RUNNING, TrialState.FAIL)))


def test_two_workers_share_one_sqlite_study(tmp_path, keras3_model, calib_npy, labelled_npz, small_space):
    out = tmp_path / "tuned"
    rows = _two_workers(out, None, keras3_model, calib_npy, labelled_npz, small_space)
    assert {r["worker"] for r in rows} == {"0", "1"}  # the two processes split the trials
    assert _left_over(f"sqlite:///{out / 'study.db'}", "shared") == 0


def test_two_workers_share_one_postgresql_study(tmp_path, postgres_url, keras3_model, calib_npy, labelled_npz,
                                                small_space):
    out = tmp_path / "tuned"
    rows = _two_workers(out, postgres_url, keras3_model, calib_npy, labelled_npz, small_space)
    assert {r["worker"] for r in rows} == {"0", "1"}
    assert _left_over(postgres_url, "shared") == 0
    # a second machine (here: another output folder) reports the same study from the database
    other = tmp_path / "elsewhere"
    report = api.tune(model=keras3_model, output=other, eval_data=labelled_npz, calibration=calib_npy,
                      space=small_space, sampler="grid", storage=postgres_url, study="shared", report=True)
    assert report["trials"] == 3 and [r["trial"] for r in _rows(other)] == [r["trial"] for r in rows]


def test_a_repeated_point_takes_its_twins_result():
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState, create_trial

    from edgepack.tune.study import _same_point

    study = optuna.create_study(direction="maximize")
    dist = {"per_tensor": CategoricalDistribution([False, True])}
    study.add_trial(create_trial(state=TrialState.PRUNED, params={"per_tensor": False}, distributions=dist,
                                 user_attrs={"status": "pruned"}))
    assert _same_point(study, {"per_tensor": False}, 5) is None  # a pruned twin is no result: run it
    study.add_trial(create_trial(value=97.5, params={"per_tensor": True}, distributions=dist,
                                 user_attrs={"status": "feasible", "objective": 97.5, "bytes": 1234, "seconds": 9.0,
                                             "bundle": "/x/trial-0001"}))
    out = _same_point(study, {"per_tensor": True}, 5)
    assert out.same_as == 1 and out.status == "feasible" and out.objective == 97.5 and out.bytes == 1234
    assert out.seconds == 0.0 and out.bundle is None and "same settings as trial 1" in out.reason


def test_agreement_objective_and_latency_limit(tmp_path, keras3_model, calib_npy, labelled_npz):
    space = tmp_path / "one.toml"
    space.write_text("per_tensor = [true]\n")
    out = tmp_path / "tuned"
    result = api.tune(model=keras3_model, output=out, eval_data=labelled_npz, calibration=calib_npy, space=space,
                      sampler="grid", objective="agreement", max_latency_ms=1e-6)
    assert result["trials"] == 1 and result["best_trial"] is None and not (out / "best").exists()
    (row,) = _rows(out)
    assert row["metric"] == "agreement" and 90 <= float(row["objective"]) <= 100  # int8 vs the float source
    assert row["status"] == "infeasible" and "--max-latency-ms" in row["reason"]
    assert row["latency_source"] == "litert p50" and float(row["latency_ms"]) > 1e-6
