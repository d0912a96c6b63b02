"""A budgeted, validated bundle of the tiny classifier whose labels and file names carry markup, and a
two-trial tune study: the pages the report tests render."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edgepack import api

HOSTILE_LABEL = "<img src=x onerror=alert(1)>"
HOSTILE_FILE = "<b onmouseover=alert(2)>tiny"
LABELS = ["cat", HOSTILE_LABEL, "a & b", "</td></tr></table><b>bold</b>"]


@pytest.fixture(scope="session")
def hostile_bundle(tmp_path_factory, keras3_model, calib_npy, labelled_npz) -> Path:
    """Pruned and fine-tuned (per-layer records, curves), converted with an accuracy budget (sensitivity
    chart, candidates) and validated (confusion matrix); the model file is named with markup too."""
    work = tmp_path_factory.mktemp("report")
    model = work / f"{HOSTILE_FILE}.keras"
    shutil.copy(keras3_model, model)
    labels = work / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    out = work / "bundle"
    api.convert(model=model, output=out, calibration=calib_npy, labels=labels, min_sqnr=40.0, keep_best=True,
                eval_data=labelled_npz, prune="channels:0.5", train_data=labelled_npz, epochs=2)
    api.validate(bundle=out, data=labelled_npz, check=False)
    return out


@pytest.fixture(scope="session")
def study_dir(tmp_path_factory, keras3_model, calib_npy, labelled_npz) -> Path:
    """Two grid trials (per-tensor or per-channel), one over a --max-bytes limit: feasible and infeasible."""
    work = tmp_path_factory.mktemp("study")
    space = work / "space.toml"
    space.write_text("per_tensor = [false, true]\n")
    per_tensor = api.convert(model=keras3_model, output=work / "pt", calibration=calib_npy, per_tensor=True)
    out = work / "tuned"
    api.tune(model=keras3_model, output=out, eval_data=labelled_npz, calibration=calib_npy, space=space,
             sampler="grid", max_bytes=per_tensor.manifest.artifact("model").bytes)
    return out
