"""A trial's hooks into the pipeline: per-epoch held-out scores for the pruner, and stopping a conversion."""

from __future__ import annotations

import pytest

from edgepack import api
from edgepack.errors import StopRequested, TargetConstraintError
from edgepack.targets import load_target
from edgepack.targets.checks import ModelFacts, run_checks
from edgepack.tune.trial import Limits, TrialOutcome, _from_facts


def test_fine_tuning_reports_every_epoch_and_a_hook_can_stop_it(tmp_path, keras3_model, calib_npy, labelled_npz):
    heard = []

    def on_epoch(phase, epoch, metric, value):
        heard.append((phase, epoch, metric, value))
        if epoch == 1:
            raise StopRequested("enough")

    with pytest.raises(StopRequested, match="enough"):  # passes through the pipeline, not an internal error
        api.convert(model=keras3_model, output=tmp_path / "b", calibration=calib_npy, prune="channels:0.5",
                    train_data=labelled_npz, epochs=3, on_epoch=on_epoch)
    assert [(p, e, m) for p, e, m, _ in heard] == [("prune", 0, "accuracy"), ("prune", 1, "accuracy")]
    assert all(0 <= v <= 100 for *_, v in heard)
    assert not (tmp_path / "b").exists()  # nothing written


def test_a_target_miss_keeps_its_numbers():
    spec = load_target("cortex-m4")
    facts = ModelFacts(mode="int8", size=spec.flash_bytes * 2, op_counts={"CONV_2D": 1}, arena_bytes=1000)
    with pytest.raises(TargetConstraintError) as err:
        run_checks(spec, facts)
    out = TrialOutcome(status="infeasible")
    _from_facts(out, err.value.facts, Limits(spec))
    assert out.bytes == spec.flash_bytes * 2 and out.arena_bytes == 1000
    assert out.constraints[0] == pytest.approx(1.0) and out.constraints[1] == 0.0  # flash missed by 100%, RAM fits
