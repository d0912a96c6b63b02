"""Trials whose options convert refuses together are counted as ``refused``, apart from failed ones
(issue 20 item 15): in the run's counts and in trials.csv."""

from __future__ import annotations

import csv

from edgepack import api


def test_a_refused_combination_is_its_own_status(tmp_path, keras3_model, calib_npy, labelled_npz):
    # --qat for every trial, and a space of int16x8 only: convert refuses QAT with int16x8 in its checks
    space = tmp_path / "space.toml"
    space.write_text('quantize = ["int16x8"]\n')
    out = tmp_path / "tuned"
    result = api.tune(model=keras3_model, output=out, eval_data=labelled_npz, space=space, sampler="grid",
                      calibration=calib_npy, train_data=labelled_npz, qat=True)
    assert result["counts"] == {"refused": 1}
    with (out / "trials.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["refused"] and "--qat trains for integer inference" in rows[0]["reason"]
