"""Recipes and bundles are data, never permission (issue 20, items 1-4 and 14's recipe types).

Every payload writes a marker file when it runs: a Lambda layer in a model, a task metric's module
body. Each case runs ``python -m edgepack`` in a child under the case budget (run_limited) and
asserts the exit code, one line naming the option or key, no marker, nothing left behind.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from edgepack import api
from edgepack.errors import UsageError
from tests.faults.conftest import assert_contained, assert_error, leftovers, run_cli, run_limited, snapshot


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _report(case: str, result) -> None:
    print(f"\nCASE {case}: exit {result.code}, {result.peak_rss / 2**20:.0f} MiB, {result.seconds:.1f} s: "
          f"{result.stderr.strip()[:160]}")


@pytest.fixture()
def marker(tmp_path) -> Path:
    return tmp_path / "PAYLOAD_RAN"


def _lambda_model(path: Path, marker: Path) -> Path:
    """A Keras 3 model whose Lambda layer writes ``marker`` when it runs (as it would on load)."""
    import keras

    fn = eval(f"lambda x: (__import__('pathlib').Path({str(marker)!r}).write_text('ran'), x)[1]")  # noqa: S307
    model = keras.Sequential([keras.Input((4,), name="x"), keras.layers.Lambda(fn), keras.layers.Dense(2)])
    model.save(path)
    marker.unlink(missing_ok=True)  # building the model ran the lambda once
    return path


def _metric_payload(path: Path, marker: Path) -> Path:
    path.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n\n"
                    "def f(outputs, references, labels):\n    return 1.0\n")
    return path


# -- recipes -------------------------------------------------------------------------------------------
def test_recipe_cannot_turn_on_trust(tmp_path, marker):
    """Item 1: ``[model] trust = true`` in a recipe loaded a Lambda model with safe mode off."""
    model = _lambda_model(tmp_path / "lambda.keras", marker)
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f'target = "generic"\n[model]\npath = "{model.name}"\ntrust = true\n'
                      '[quantize]\nmode = "none"\n')
    result = run_limited(["convert", "--recipe", recipe, "-o", tmp_path / "out"], cwd=tmp_path)
    _report("recipe trust", result)
    assert_contained(result, 2, "model.trust", "--trust-model", str(recipe))
    assert not marker.exists() and not (tmp_path / "out").exists() and not leftovers(tmp_path)
    # the person at the command line may say the same: the recorded request then matches the flag
    req = api.convert_request(recipe=recipe, output=tmp_path / "out", trust_model=True)
    assert req.model.trust is True


def test_recipe_cannot_name_a_metric(tmp_path, marker, keras3_model):
    """Item 2: ``[budget] metric = "m.py:f"`` imported and ran m.py although the command line never named it."""
    _metric_payload(tmp_path / "m.py", marker)
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f'model = "{keras3_model}"\n[quantize]\nmode = "none"\n'
                      '[budget]\nmetric = "m.py:f"\nmax_drop = 1\n')
    result = run_limited(["convert", "--recipe", recipe, "-o", tmp_path / "out"], cwd=tmp_path)
    _report("recipe metric", result)
    assert_contained(result, 2, "budget.metric", "--metric")
    assert not marker.exists() and not (tmp_path / "out").exists() and not leftovers(tmp_path)


def test_recipe_value_of_the_wrong_type_is_one_line(tmp_path):
    """Item 14: ``model = ["a.keras"]`` was a TypeError (an internal error)."""
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('model = ["a.keras"]\n')
    result = run_limited(["convert", "--recipe", recipe, "-o", tmp_path / "out"])
    _report("recipe type", result)
    assert_contained(result, 2, "'model' must be a path (string), not a list")
    assert not (tmp_path / "out").exists()
    for text, key, kind in (('samples = "many"', "calibration.samples", "a whole number"),
                            ("per_tensor = 3", "quantize.per_tensor", "true or false"),
                            ("prune_layers = [1]", "optimize.prune_layers", "a name pattern")):
        table = key.split(".")[0]
        recipe.write_text(f'model = "m.keras"\n[{table}]\n{text}\n')
        with pytest.raises(UsageError, match=f"'{key}' must be {kind}"):
            api.convert_request(recipe=recipe, output=tmp_path / "out")


# -- --metric on the command line, and reproduce ------------------------------------------------------
@pytest.fixture(scope="module")
def metric_bundle(tmp_path_factory, keras3_model, calib_npy):
    """A bundle converted with ``--metric metric.py:f`` given relative to the working folder."""
    import os

    work = tmp_path_factory.mktemp("metric")
    (work / "metric.py").write_text("def f(outputs, references, labels):\n    return 1.0\n")
    cwd = os.getcwd()
    os.chdir(work)
    try:
        api.convert(model=keras3_model, output=work / "bundle", calibration=calib_npy, max_drop=100,
                    metric="metric.py:f")
    finally:
        os.chdir(cwd)
    return work / "bundle"


def test_command_line_metric_is_resolved_and_hashed(metric_bundle):
    """Item 2: the metric file is resolved against the working folder as given, its sha256 recorded."""
    request = json.loads((metric_bundle / "manifest.json").read_text())["request"]
    metric_file = metric_bundle.parent / "metric.py"
    assert request["settings"]["budget"]["metric"] == f"{metric_file}:f"
    assert request["files"]["metric"] == {"path": str(metric_file), "sha256": _sha(metric_file)}


def _edit_manifest(bundle: Path, edit) -> None:
    path = bundle / "manifest.json"
    d = json.loads(path.read_text())
    edit(d)
    path.write_text(json.dumps(d))


def test_reproduce_refuses_a_recorded_trust(bundle_copy, tmp_path, marker):
    """Item 3: ``model.trust = true`` in a manifest loaded a Lambda model shipped inside the bundle."""
    model = _lambda_model(bundle_copy / "lambda.keras", marker)

    def edit(d):
        d["request"]["settings"]["model"].update(path=str(model), trust=True)
        d["request"]["files"]["model"] = {"path": str(model), "sha256": _sha(model)}

    _edit_manifest(bundle_copy, edit)
    before = snapshot(bundle_copy)
    result = run_limited(["reproduce", bundle_copy, "-o", tmp_path / "again", "--check"])
    _report("reproduce trust", result)
    assert_contained(result, 2, "model.trust", "--trust-model")
    assert not marker.exists() and not (tmp_path / "again").exists()
    assert snapshot(bundle_copy) == before and not leftovers(bundle_copy.parent, tmp_path)


def test_reproduce_refuses_a_recorded_metric(bundle_copy, tmp_path, marker):
    """Item 3: a ``budget.metric`` naming a .py shipped inside the bundle was imported."""
    payload = _metric_payload(bundle_copy / "m.py", marker)

    def edit(d):
        d["request"]["settings"]["budget"].update(metric=f"{payload}:f", max_drop=1.0)
        d["request"]["files"]["metric"] = {"path": str(payload), "sha256": _sha(payload)}

    _edit_manifest(bundle_copy, edit)
    result = run_limited(["reproduce", bundle_copy, "-o", tmp_path / "again"])
    _report("reproduce metric", result)
    assert_contained(result, 2, "budget.metric", "--metric")
    assert not marker.exists() and not (tmp_path / "again").exists()
    # a metric file the person names, but not the recorded one: refused before it is imported
    other = _metric_payload(tmp_path / "other.py", marker)
    other.write_text(other.read_text() + "# another file\n")
    res = run_cli(["reproduce", bundle_copy, "-o", tmp_path / "again", "--metric", f"{other}:f"])
    assert_error(res, 2, "--metric", "sha256 differs")
    assert not marker.exists() and not (tmp_path / "again").exists()


def test_reproduce_runs_the_metric_the_person_names(metric_bundle, tmp_path):
    """Positive control: with ``--metric FILE`` (the recorded file) the request runs and matches."""
    res = run_cli(["reproduce", metric_bundle, "-o", tmp_path / "again"])
    assert_error(res, 2, "budget.metric", "--metric")
    res = run_cli(["reproduce", metric_bundle, "-o", tmp_path / "again", "--metric",
                   metric_bundle.parent / "metric.py", "--check"])
    assert res.code == 0, res.stderr
    assert "byte-identical" in res.stdout


def test_reproduce_refuses_artifacts_outside_the_bundle(bundle_copy, tmp_path):
    """Item 4: an artifact at ../../etc/passwd made --check compare /etc/passwd with itself."""
    _edit_manifest(bundle_copy, lambda d: d["artifacts"][0].update(path="../../../../../../../../etc/passwd"))
    result = run_limited(["reproduce", bundle_copy, "-o", tmp_path / "again", "--check"])
    _report("reproduce ../ artifact", result)
    assert_contained(result, 1, "artifacts/0/path")
    assert not (tmp_path / "again").exists()


@pytest.mark.parametrize("edit, fragments", [
    (lambda d: d["request"].update(files={}), ("model file", "no sha256 recorded")),
    (lambda d: d["request"]["files"]["calibration"].update(path="/etc/hostname"), ("not the recorded location",)),
    (lambda d: d["request"]["files"]["model"].update(sha256="0" * 64), ("model file", "sha256 differs")),
    (lambda d: d["artifacts"][0].update(sha256="0" * 64), ("model.tflite", "does not match the sha256")),
], ids=["empty-files", "moved-input", "changed-model", "changed-artifact"])
def test_reproduce_verifies_every_input_and_artifact(bundle_copy, tmp_path, edit, fragments):
    """Item 3: an empty ``files: {}`` passed; every input needs its recorded hash, every artifact its own."""
    _edit_manifest(bundle_copy, edit)
    res = run_cli(["reproduce", bundle_copy, "-o", tmp_path / "again", "--check"])
    assert_error(res, 1, *fragments)
    assert not (tmp_path / "again").exists()


def test_validate_trusts_only_a_reference_the_person_names(bundle_copy, labelled_npz):
    """``validate --trust-model`` without ``--reference`` loaded the manifest's recorded source path with
    safe mode off: trust went to a file the person never named (security review)."""
    before = snapshot(bundle_copy)
    res = run_cli(["validate", bundle_copy, "--data", labelled_npz, "--trust-model"])
    assert_error(res, 2, "--trust-model", "--reference")
    assert snapshot(bundle_copy) == before  # nothing validated, nothing written
