"""The accuracy budget (--min-sqnr / --min-agreement / --max-drop): tiny models where one known
layer is made sensitive; the search must find it, keep only it out of int8 and meet the budget."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgepack.cli import main


def _outlier_model(folder: Path, hard_swish: bool = False) -> Path:
    """x -> d1 (unit 0 always dead) -> "outlier" (its weights from that dead unit are 200, so one
    per-channel int8 scale per output covers 200 and the real weights round to zero) -> ReLU (``hard_swish``:
    a hard-swish of built-in layers, which the converter fuses into HARD_SWISH) -> head.
    Float: exact; full int8: ruined; the outlier layer kept float: fine."""
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((16,), name="x")
    h = keras.layers.Dense(16, activation="relu", name="d1")(inp)
    o = keras.layers.Dense(8, name="outlier")(h)
    if hard_swish:  # on a sum (after a dense layer, TF's converter folds the + 3 into a copy of the layer)
        o = keras.layers.Add()([o, keras.layers.Dense(8, name="side")(h)])
        a = keras.layers.ReLU(max_value=6.0)(keras.layers.Rescaling(1.0, offset=3.0)(o))
        act = keras.layers.Rescaling(1.0 / 6.0)(keras.layers.Multiply()([o, a]))
    else:
        act = keras.layers.ReLU()(o)
    out = keras.layers.Dense(4, name="head")(act)
    m = keras.Model(inp, out)
    w1, b1 = m.get_layer("d1").get_weights()
    w1[:, 0], b1[0] = 0.0, -1.0
    m.get_layer("d1").set_weights([w1, b1])
    w, b = m.get_layer("outlier").get_weights()
    w[0, :] = 200.0
    m.get_layer("outlier").set_weights([w, b])
    path = folder / ("outlier_hard_swish.h5" if hard_swish else "outlier.h5")
    m.save(path)
    return path


def _mixed_head_model(folder: Path) -> Path:
    """A detector-style head: (N, 4 + 2) = box coordinates (0..640) ++ scores (0..0.02)."""
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((16,), name="x")
    h = keras.layers.Dense(16, activation="relu", name="trunk")(inp)
    box = keras.layers.Rescaling(640.0, name="box")(keras.layers.Dense(4, activation="sigmoid", name="box_fc")(h))
    score = keras.layers.Rescaling(0.02, name="score")(keras.layers.Dense(2, activation="sigmoid", name="cls")(h))
    m = keras.Model(inp, keras.layers.Concatenate(name="det")([box, score]))
    path = folder / "mixed.h5"
    m.save(path)
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("budget")
    rng = np.random.default_rng(0)
    np.save(folder / "x16.npy", rng.normal(size=(300, 16)).astype(np.float32))
    _outlier_model(folder)
    _mixed_head_model(folder)
    from tests.conftest import INPUT_SHAPE, build_tf_keras

    build_tf_keras().save(folder / "tiny.h5")  # TFLite Micro runs it
    np.save(folder / "img.npy", rng.random((300, *INPUT_SHAPE)).astype(np.float32))
    return folder


def _convert(args: list[str]):
    return CliRunner().invoke(main, ["convert", *args])


def _budget(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())["budget"]


def _calibrated(path: Path, x: np.ndarray):
    """The int8 conversion of ``path`` on x[:200] (its calibrated model kept) and x[200:] as evaluation set."""
    from edgepack.calibration import Dataset
    from edgepack.converter.tflite import convert_to_tflite
    from edgepack.formats.detect import load_model
    from edgepack.pipeline import budget as B
    from edgepack.request import QuantizeMode

    loaded = load_model(path)
    kept = []
    base = convert_to_tflite(loaded, QuantizeMode.INT8, Dataset({"x": x[:200]}), keep_calibrated=kept.append)
    ev = B.EvalSet({"x": x[200:]}, [loaded.run({"x": x[200:]})[0]], list(loaded.output_names), [None], [None])
    return kept[0], base, ev


def _deep_tanh_net(path: Path) -> tuple[Path, np.ndarray]:
    """Nine dense layers that each add a little int8 error (tf_keras .h5), and 300 inputs for it."""
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((16,), name="x")
    h = inp
    for i in range(8):
        h = keras.layers.Dense(16, activation="tanh", name=f"d{i}")(h)
    keras.Model(inp, keras.layers.Dense(4, name="head")(h)).save(path)
    return path, np.random.default_rng(0).normal(size=(300, 16)).astype(np.float32)


def _search(cal, base: bytes, ev, min_sqnr: float):
    from edgepack.pipeline import budget as B
    from edgepack.request import BudgetOptions

    return B.Search(cal, base, ev, BudgetOptions(min_sqnr=min_sqnr), allow_float=True, allow_int16=False,
                    latency=False)


def test_finds_the_one_sensitive_layer_and_keeps_only_it_float(work):
    out = work / "outlier_bundle"
    res = _convert([str(work / "outlier.h5"), "-o", str(out), "--calibration", str(work / "x16.npy"),
                    "--min-sqnr", "25"])
    assert res.exit_code == 0, res.output
    b = _budget(out)
    assert b["budget_met"] is True
    assert b["candidates"][0]["step"] == "int8" and not b["candidates"][0]["met"]
    assert b["candidates"][0]["metric"]["sqnr_db"]["head"] < 10  # full int8 is ruined
    chosen = b["chosen"]
    assert chosen["step"] == "fallback"
    assert len(chosen["float_ops"]) == 1 and "outlier" in chosen["float_ops"][0]
    # candidates spliced, the choice quantized again by the quantizer (and meeting the budget so)
    assert any(c["built"] == "splice" for c in b["candidates"]) and chosen["built"] == "quantizer"
    assert chosen["name"].endswith("quantized again") and b["candidates"][-1]["built"] == "quantizer"
    assert min(chosen["metric"]["sqnr_db"].values()) >= 25
    assert b["eval_data"]["source"] == "held-out calibration samples" and b["eval_data"]["samples"] == 100
    # every candidate is recorded with its cost
    assert all({"bytes", "float_ops", "metric"} <= set(c) for c in b["candidates"])
    # latency for the two a reader compares: full int8 and the chosen one
    assert b["candidates"][0]["litert_p50_ms"] > 0
    assert any(c.get("litert_p50_ms", 0) > 0 for c in b["candidates"] if c["name"] == chosen["name"])
    # the picture and the table are in the bundle
    assert (out / "sensitivity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = json.loads((out / "sensitivity.json").read_text())["rows"]
    kept = [r["node"] for r in rows if r["kept"] == "float"]
    assert kept == chosen["float_ops"]
    layers = CliRunner().invoke(main, ["inspect", str(out), "--layers"])
    assert layers.exit_code == 0 and "outlier" in layers.output and "float" in layers.output
    assert "budget met" in res.output
    # validate reports the worst slice beside the whole tensor, and the budget's metric
    val = CliRunner().invoke(main, ["validate", str(out), "--data", str(work / "x16.npy"), "--json"])
    assert val.exit_code == 0, val.output
    rep = json.loads(val.output)
    o = rep["outputs"][0]
    assert o["slice_axis"] == 1 and o["worst_slice_sqnr_db"] <= o["sqnr_db"]
    assert rep["budget"]["budget"] == {"min_sqnr_db": 25.0}
    assert rep["budget"]["values"]["worst_slice_sqnr_db"] > 20


def test_mixed_output_is_judged_per_slice_and_made_float(work):
    out = work / "mixed_bundle"
    res = _convert([str(work / "mixed.h5"), "-o", str(out), "--calibration", str(work / "x16.npy"),
                    "--min-sqnr", "30"])
    assert res.exit_code == 0, res.output
    b = _budget(out)
    first = b["candidates"][0]["metric"]
    # the whole tensor reads fine, the score slices are ruined: the worst slice counts
    assert first["sqnr_db_whole"]["det"] > 30 and first["sqnr_db"]["det"] < 10
    assert first["worst_slice"]["det"] in (4, 5)
    assert b["sqnr_axes"] == {"det": 1}
    assert b["chosen"]["float_output"] is True and b["budget_met"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["outputs"][0]["dtype"] == "float32"
    assert manifest["inputs"][0]["dtype"] == "int8"
    assert "outputs are float32" in res.output


def test_integer_only_target_fails_with_the_table_and_writes_nothing(work):
    # 80 dB: beyond what 8-bit activations can reach, and float is not allowed (cortex-m33: int8 only;
    # cortex-m4 allows int16x8 too)
    out = work / "mcu_bundle"
    res = _convert([str(work / "tiny.h5"), "-o", str(out), "--calibration", str(work / "img.npy"),
                    "--min-sqnr", "80", "--target", "cortex-m33"])
    assert res.exit_code == 1
    assert "no candidate meets the budget" in res.output and "integer-only" in res.output
    assert "RMSE/scale" in res.output  # the sensitivity table
    assert not out.exists()


def test_keep_best_writes_the_best_candidate(work):
    out = work / "mcu_best"
    res = _convert([str(work / "tiny.h5"), "-o", str(out), "--calibration", str(work / "img.npy"),
                    "--min-sqnr", "80", "--target", "cortex-m33", "--keep-best"])
    assert res.exit_code == 0, res.output
    b = _budget(out)
    assert b["budget_met"] is False and b["chosen"]["float_ops"] == [] and not b["chosen"]["float_output"]
    assert json.loads((out / "manifest.json").read_text())["quantization"]["mode"] == "int8"
    assert any("integer-only" in n for n in b["notes"])
    assert {c["step"] for c in b["candidates"]} <= {"int8", "ranges"}


@pytest.mark.parametrize("args, needle", [
    (["--min-agreement", "1.5"], "--min-agreement"),
    (["--max-drop", "-1"], "--max-drop"),
    (["--min-sqnr", "nan"], "--min-sqnr"),
    (["--min-sqnr", "30", "--sqnr-axis", "det"], "--sqnr-axis"),
    (["--min-sqnr", "30", "--sqnr-axis", "det:0"], "--sqnr-axis"),
    (["--keep-best"], "--keep-best needs a budget"),
    (["--min-sqnr", "30", "--quantize", "float16"], "searches from int8"),
    (["--max-drop", "1"], "--max-drop needs labelled --eval-data"),
    (["--min-sqnr", "30", "--sqnr-axis", "nope:1"], "no such output"),
])
def test_bad_budget_values_are_usage_errors(work, args, needle):
    res = _convert([str(work / "mixed.h5"), "-o", str(work / "never"), "--calibration", str(work / "x16.npy"), *args])
    assert res.exit_code == 2, res.output
    assert needle in res.output
    assert not (work / "never").exists()


def test_max_drop_with_labelled_eval_data_and_agreement(work):
    from tests.conftest import INPUT_SHAPE

    rng = np.random.default_rng(1)
    x = rng.random((80, *INPUT_SHAPE)).astype(np.float32)
    np.savez(work / "eval.npz", x=x, y=rng.integers(0, 4, 80))
    out = work / "drop_bundle"
    res = _convert([str(work / "tiny.h5"), "-o", str(out), "--calibration", str(work / "img.npy"),
                    "--eval-data", str(work / "eval.npz"), "--max-drop", "5", "--min-agreement", "0.9"])
    assert res.exit_code == 0, res.output
    b = _budget(out)
    assert b["budget"] == {"max_drop_pp": 5.0, "min_agreement": 0.9}
    assert b["eval_data"]["samples"] == 80 and b["eval_data"]["source"].endswith("eval.npz")
    m = b["chosen"]["metric"]
    assert m["accuracy_drop_pp"] <= 5 and m["agreement"]["logits"] >= 0.9
    assert b["budget_met"] and b["chosen"]["step"] == "int8"  # the cheapest candidate that meets it
    settings = json.loads((out / "manifest.json").read_text())["request"]
    assert settings["settings"]["budget"]["max_drop"] == 5.0 and "eval_data" in settings["files"]


def test_inspect_layers_needs_a_budget_bundle(work):
    out = work / "plain_bundle"
    res = _convert([str(work / "tiny.h5"), "-o", str(out), "--calibration", str(work / "img.npy")])
    assert res.exit_code == 0, res.output
    assert "budget" not in json.loads((out / "manifest.json").read_text()) or \
        json.loads((out / "manifest.json").read_text())["budget"] is None
    layers = CliRunner().invoke(main, ["inspect", str(out), "--layers"])
    assert layers.exit_code == 1 and "no sensitivity table" in layers.output


METRIC = '''
import numpy as np


def score_f1(outputs, references, labels):
    """Detections = (sample, class) pairs whose score passes 0.01; F1 against the source's."""
    got, ref = outputs[0][:, 4:] > 0.01, references[0][:, 4:] > 0.01
    tp = np.sum(got & ref)
    return 2 * tp / max(2 * tp + np.sum(got & ~ref) + np.sum(~got & ref), 1)


def broken(outputs, references, labels):
    raise ValueError("no boxes here")
'''


def test_task_metric_budget_without_labels(work):
    (work / "task.py").write_text(METRIC)
    out = work / "task_bundle"
    res = _convert([str(work / "mixed.h5"), "-o", str(out), "--calibration", str(work / "x16.npy"),
                    "--max-drop", "2", "--metric", f"{work / 'task.py'}:score_f1"])
    assert res.exit_code == 0, res.output
    b = _budget(out)
    assert b["budget"] == {"max_drop_pp": 2.0, "metric": f"{work / 'task.py'}:score_f1"}
    first, chosen = b["candidates"][0]["metric"], b["chosen"]["metric"]
    assert first["task_metric_reference"] == 1.0 and first["task_metric_drop_pp"] > 2  # int8 loses the scores
    assert b["budget_met"] and chosen["task_metric_drop_pp"] <= 2 and b["chosen"]["float_output"]
    assert "task metric" in res.output
    # validate measures the same task metric (with --metric: the manifest never names code to run)
    spec = f"{work / 'task.py'}:score_f1"
    plain = CliRunner().invoke(main, ["validate", str(out), "--data", str(work / "x16.npy"), "--json"])
    assert plain.exit_code == 0 and "pass --metric to measure it" in plain.output
    val = CliRunner().invoke(main, ["validate", str(out), "--data", str(work / "x16.npy"), "--json",
                                    "--metric", spec, "--max-drop", "2"])
    assert val.exit_code == 0, val.output
    rep = json.loads(val.output)
    assert rep["task_metric"]["reference"] == 1.0 and rep["task_metric"]["drop_pp"] <= 2
    assert rep["budget"]["values"]["task_metric_drop_pp"] == rep["task_metric"]["drop_pp"]
    # the full-int8 bundle fails the same check in one line
    plain_int8 = work / "task_int8"
    assert _convert([str(work / "mixed.h5"), "-o", str(plain_int8), "--calibration", str(work / "x16.npy")]).exit_code == 0
    bad = CliRunner().invoke(main, ["validate", str(plain_int8), "--data", str(work / "x16.npy"),
                                    "--metric", spec, "--max-drop", "2"])
    assert bad.exit_code == 1 and "task metric" in bad.output and "over --max-drop 2" in bad.output


@pytest.mark.parametrize("metric, code, needle", [
    ("{w}/task.py:score_f1", 2, "--metric needs --max-drop"),  # no --max-drop
    ("{w}/nope.py:score_f1", 2, "is not a file"),
    ("{w}/task.py:missing", 2, "has no function missing"),
    ("{w}/task.py", 2, "FILE.py:FUNCTION"),
    ("{w}/task.py:broken", 1, "raised ValueError: no boxes here"),
])
def test_task_metric_mistakes_are_one_line(work, metric, code, needle):
    (work / "task.py").write_text(METRIC)
    budget = [] if "needs" in needle else ["--max-drop", "2"]
    res = _convert([str(work / "mixed.h5"), "-o", str(work / "never"), "--calibration", str(work / "x16.npy"),
                    *budget, "--metric", metric.format(w=work)])
    assert res.exit_code == code, res.output
    assert needle in res.output and "Traceback" not in res.output
    assert not (work / "never").exists()


def test_time_major_output_is_judged_per_sample_in_convert_and_validate(tmp_path):
    """An output with the batch on axis 1 ([steps, 1, classes], a CTC recognizer's): the task metric
    sees one row per sample, the same in convert's search and in validate."""
    from tests.converter.onnx_builders import time_major

    model = time_major(tmp_path / "tm.onnx")
    rng = np.random.default_rng(0)
    np.save(tmp_path / "calib.npy", rng.normal(size=(100, 6, 8)).astype(np.float32))
    np.save(tmp_path / "held.npy", rng.normal(size=(30, 6, 8)).astype(np.float32))
    metric = f"{Path(__file__).resolve().parents[2] / 'examples' / 'task_metrics.py'}:ctc_string_accuracy"
    out = tmp_path / "bundle"
    res = _convert([str(model), "-o", str(out), "--calibration", str(tmp_path / "calib.npy"),
                    "--eval-data", str(tmp_path / "held.npy"), "--max-drop", "100", "--metric", metric])
    assert res.exit_code == 0, res.output
    b = _budget(out)
    assert b["eval_data"]["samples"] == 30 and b["chosen"]["step"] == "int8"
    at_convert = b["chosen"]["metric"]["task_metric"]
    assert 0.5 < at_convert <= 1.0 and at_convert * 30 == pytest.approx(round(at_convert * 30), abs=0.01)  # whole strings
    val = CliRunner().invoke(main, ["validate", str(out), "--data", str(tmp_path / "held.npy"), "--json",
                                    "--metric", metric])
    assert val.exit_code == 0, val.output
    assert json.loads(val.output)["task_metric"]["bundle"] == pytest.approx(at_convert, abs=1e-4)


def test_top_down_gives_stretches_back_to_int8_while_the_budget_holds(work):
    """Everything float meets 35 dB (the int8 input caps it near 40); giving stretches back to int8
    while the budget holds leaves fewer float ops, each with its reason."""
    cal, base, ev = _calibrated(work / "outlier.h5", np.load(work / "x16.npy"))
    search = _search(cal, base, ev, 35)
    full = search._make("int8", "full int8", model=base)
    assert not full.met
    down = search._top_down(full)
    assert down.met and min(down.score.sqnr.values()) >= 35
    ops = [n for k, n, _, _ in cal.ops() if k not in ("QUANTIZE", "DEQUANTIZE")]
    assert 0 < len(down.denylist) < len(ops) and set(down.why) == set(down.denylist)
    assert search.tried[1].name.startswith("every op float") and any("int8 again" in c.name for c in search.tried)


def test_ops_kept_float_by_every_quantization_are_not_searched_again(work):
    """Ops the lstm-float stage keeps float (``Calibrated.keep_float``) are float in every candidate:
    the search neither probes them nor gives them back to int8 (each such candidate would be the
    same model again, scored again: most of the OCR recognizer's search)."""
    import dataclasses

    plain, base, ev = _calibrated(work / "outlier.h5", np.load(work / "x16.npy"))
    ops = [n for k, n, _, _ in plain.ops() if k not in ("QUANTIZE", "DEQUANTIZE")]
    outlier = next(n for n in ops if "outlier" in n)
    cal = dataclasses.replace(plain, keep_float=tuple(n for n in ops if n != outlier))
    search = _search(cal, base, ev, 35)
    down = search._top_down(search._make("int8", "full int8", model=base))
    assert down.met and down.denylist == (outlier,)
    # full int8, every op float (int8 outputs, then float ones), and the one stretch left to give back (the
    # outlier alone), once: nothing else
    names = [c.name.split(":")[0] for c in search.tried]
    assert names[0] == "full int8" and names[-1] == "int8 again" and names.count("int8 again") == 1
    assert all(n.startswith("every op float") for n in names[1:-1])


def test_float_fallback_op_by_op_stops_when_its_pace_cannot_reach_the_budget(work, caplog):
    """60 dB is out of reach (the int8 input alone caps the model near 40 dB): once a round's gain,
    repeated every round left, falls short of the gap, the op-by-op rounds stop (on ddddocr's
    detector at 30 dB: 5 rounds of 21 probes each spent for 2 dB, before the top-down pass met it)."""
    import logging

    from edgepack.pipeline.budget.greedy import MAX_ROUNDS

    cal, base, ev = _calibrated(work / "outlier.h5", np.load(work / "x16.npy"))
    search = _search(cal, base, ev, 60)
    full = search._make("int8", "full int8", model=base)
    with caplog.at_level(logging.INFO, logger="edgepack.pipeline.budget.greedy"):
        kept_float = search._fallback(full)
    stop = [r.getMessage() for r in caplog.records if "stopped after round" in r.getMessage()]
    assert len(stop) == 1, [r.getMessage() for r in caplog.records]
    rounds = int(stop[0].split("stopped after round ")[1].split(":")[0])
    taken = [c for c in search.tried if c.name.startswith("+ float")]
    assert 1 <= rounds < MAX_ROUNDS and len(taken) == rounds
    assert kept_float is not None and not kept_float.met and "outlier" in " ".join(kept_float.denylist)


def test_top_down_gives_back_the_cheapest_stretches_first(tmp_path):
    """Nine dense layers that each add a little error: every stretch is measured given back to int8
    alone, then they are given back cheapest first (the run bisected, then one by one): the budget
    holds with part of the graph in int8, and the stretch that cost least alone is among them."""
    import math
    import re

    from edgepack.pipeline.budget.topdown import STRETCHES

    cal, base, ev = _calibrated(*_deep_tanh_net(tmp_path / "deep.h5"))
    search = _search(cal, base, ev, 30)
    full = search._make("int8", "full int8", model=base)
    assert not full.met
    down = search._top_down(full)
    ops = [n for k, n, _, _ in cal.ops() if k not in ("QUANTIZE", "DEQUANTIZE")]
    assert down.met and min(down.score.sqnr.values()) >= 30 and 0 < len(down.denylist) < len(ops)
    size = math.ceil(len(ops) / STRETCHES)
    first = next(i for i, c in enumerate(search.tried) if c.name.startswith("int8 again"))
    alone = search.tried[first:first + math.ceil(len(ops) / size)]  # each stretch alone, from every op float
    assert all(re.match(r"int8 again: ops \d+\.\.\d+ \(", c.name) and len(c.denylist) >= len(ops) - size
               for c in alone)
    met = [c for c in alone if c.met]
    assert len(met) >= 2 and any(c.name.startswith("int8 again: the ") for c in search.tried)
    cheapest = max(met, key=lambda c: c.score.margin(search.budget))
    given_back = set(ops) - set(cheapest.denylist)
    assert given_back and not given_back & set(down.denylist)


def test_single_op_probes_stop_when_none_moves_a_decision_count(work, caplog):
    """A metric that counts decisions (here: outputs bit-identical to the source's, never true in int8) is not
    moved by keeping one op float: after PROBE_PATIENCE single ops in a row leave it exactly where it was, the
    round probes no more single ops (the OCR recognizer's strings budget spent 15 probes, every gain 0.00), but
    still probes the stretches of ops."""
    import dataclasses
    import logging

    from edgepack.pipeline import budget as B
    from edgepack.pipeline.budget.greedy import PROBE_PATIENCE
    from edgepack.request import BudgetOptions

    def identical(outputs, references, labels):
        return float(np.mean([np.array_equal(o, r) for o, r in zip(outputs[0], references[0])]))

    (work / "exact.py").write_text("def identical(o, r, labels):\n    return 0.0\n")
    cal, base, ev = _calibrated(*_deep_tanh_net(work / "deep_exact.h5"))
    ev = dataclasses.replace(ev, task=identical)
    search = B.Search(cal, base, ev, BudgetOptions(max_drop=2.0, metric=f"{work / 'exact.py'}:identical"),
                      allow_float=True, allow_int16=False, latency=False)
    full = search._make("int8", "full int8", model=base)
    assert not full.met and full.score.drop_pp == pytest.approx(100.0)
    with caplog.at_level(logging.INFO, logger="edgepack.pipeline.budget.greedy"):
        search._fallback(full)
    probes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("budget: probe ")]
    single = [p for p in probes if not p.startswith("budget: probe ops ") and "float output" not in p]
    assert len(single) == PROBE_PATIENCE and all(p.endswith("gain 0.00 on the ranking samples") for p in single)
    assert any(p.startswith("budget: probe ops ") for p in probes)  # the stretches are still probed
    assert len(search._options(full)) > PROBE_PATIENCE + 1  # there were more single ops to probe
    assert any("left the budget's figure unchanged" in r.getMessage() for r in caplog.records)


def test_a_splice_that_does_not_run_is_quantized_instead(work, monkeypatch):
    """Candidates are spliced (converter/splice.py); one LiteRT refuses is made by the quantizer, and the
    search finds what it finds with splices: the one outlier layer float."""
    from edgepack.converter import splice

    cal, base, ev = _calibrated(work / "outlier.h5", np.load(work / "x16.npy"))
    found = _search(cal, base, ev, 25.0).run()
    assert found.met and any(c["built"] == "splice" for c in found.trace)
    monkeypatch.setattr(splice.Splicer, "build", lambda self, nodes: b"TFL3 is not a model")
    again = _search(cal, base, ev, 25.0).run()
    assert again.met and {c["built"] for c in again.trace} == {"quantizer"}
    assert again.chosen.denylist == found.chosen.denylist and any("outlier" in n for n in found.chosen.denylist)


@pytest.mark.parametrize("axis", [None, 1, 2, 3, 0, 7])
def test_figures_from_per_sample_sums_are_the_running_ones(axis):
    """The budget's figures come from one pass of per-sample, per-slice sums: the worst slice, its index,
    the whole tensor and the ranking error equal the running (validate's) computation on any axis."""
    from edgepack.pipeline import budget as B
    from edgepack.pipeline.budget.scoring import score_outputs
    from edgepack.validation.metrics import RunningSliceSqnr

    rng = np.random.default_rng(4)
    ref = rng.normal(size=(12, 5, 3, 6)).astype(np.float32)
    ref[:, :, 1] = 0.0  # a slice without signal along axis 2
    out = (ref + rng.normal(scale=0.05, size=ref.shape) * np.arange(1, 7)).astype(np.float32)
    ev = B.EvalSet({"x": np.zeros((12, 1), np.float32)}, [ref], ["y"], [None], [axis])
    sc = score_outputs([out], ev)
    s, w = RunningSliceSqnr(axis), RunningSliceSqnr(None)
    s.update(ref, out)
    w.update(ref, out)
    assert sc.sqnr["y"] == pytest.approx(s.worst[0], abs=1e-9) and sc.worst_slice["y"] == s.worst[1]
    assert sc.sqnr_whole["y"] == pytest.approx(w.worst[0], abs=1e-9)
    r = ref.reshape(12, -1).astype(np.float64)
    d = r - out.reshape(12, -1)
    assert sc.sample_error == pytest.approx(np.sum(d * d, axis=1) / (np.sum(r * r) / 12), rel=1e-9)


def test_fallback_int16_keeps_float_only_what_int16_cannot_carry(work):
    """--fallback int16: int16x8 first; its int8 weights still ruin the outlier layer, so the top-down pass over
    the int16x8 quantization (spliced) keeps a few ops float and gives the rest back to int16: met, far fewer
    float ops than ops, every other op int16. A target without int16x8 refuses the option in one line."""
    out = work / "outlier_int16"
    res = _convert([str(work / "outlier.h5"), "-o", str(out), "--calibration", str(work / "x16.npy"),
                    "--min-sqnr", "25", "--fallback", "int16"])
    assert res.exit_code == 0, res.output
    b = _budget(out)
    steps = [c["step"] for c in b["candidates"]]
    assert b["budget_met"] is True and "int16x8" in steps and not b["candidates"][steps.index("int16x8")]["met"]
    assert steps.count("fallback") >= 2 and not any(s == "fallback" for s in steps[:steps.index("int16x8")])
    chosen = b["chosen"]
    assert chosen["step"] == "fallback" and chosen["built"] == "splice" and chosen["name"].startswith("int16 again")
    assert any("outlier" in n for n in chosen["float_ops"]) and len(chosen["int16_ops"]) >= 2
    assert len(chosen["float_ops"]) < len(chosen["float_ops"]) + len(chosen["int16_ops"]) - 1
    assert min(chosen["metric"]["sqnr_db"].values()) >= 25
    ok = CliRunner().invoke(main, ["validate", str(out), "--data", str(work / "x16.npy")])
    assert ok.exit_code == 0, ok.output
    refused = _convert([str(work / "outlier.h5"), "-o", str(work / "phone_int16"), "--calibration",
                        str(work / "x16.npy"), "--min-sqnr", "25", "--fallback", "int16", "--target", "android-arm64"])
    assert refused.exit_code == 2 and "--fallback" in refused.output and "int16x8" in refused.output
    assert "Traceback" not in refused.output and not (work / "phone_int16").exists()


def test_fallback_int16_gives_the_always_float_ops_to_int16_too(work):
    """The ops every int8 quantization keeps float (lstm-float's cells) are int16 in the int16x8 quantization: the
    int16 top-down pass makes them float in its every-op-float candidate and gives them back to int16 like any
    other op, so only the outlier layer stays float."""
    import dataclasses

    from edgepack.pipeline import budget as B
    from edgepack.request import BudgetOptions

    plain, base, ev = _calibrated(work / "outlier.h5", np.load(work / "x16.npy"))
    ops = [n for k, n, _, _ in plain.ops() if k not in ("QUANTIZE", "DEQUANTIZE")]
    outlier = next(n for n in ops if "outlier" in n)
    cal = dataclasses.replace(plain, keep_float=tuple(n for n in ops if n != outlier))
    search = B.Search(cal, base, ev, BudgetOptions(min_sqnr=25, fallback="int16"), allow_float=True,
                      allow_int16=True, latency=False)
    found = search.run()
    assert found.met and found.chosen.int16 and found.chosen.spliced and found.chosen.denylist == (outlier,)
    every = next(c for c in search.tried if c.name.startswith("every op float"))
    assert set(every.denylist) == set(ops)  # the always-float ops too
    record = found.chosen.record(search.budget, latency=False)
    assert record["int16_ops"] == len(ops) - 1 and record["float_ops"] == 1


def test_fallback_int16_writes_hard_swish_as_int16_ops(work):
    """TFLite has no int16 HARD_SWISH kernel: int16x8 would leave each hard-swish float (layout_cdla: 170 of 518
    ops). The int16 path writes it as ADD(+3, RELU6) / MUL / MUL, int16 like the rest, so the only float op the
    search keeps is the outlier layer, and the candidates splice over that written-out graph."""
    from edgepack.pipeline import budget as B
    from edgepack.request import BudgetOptions
    from edgepack.tflite_model import read_tflite

    path = _outlier_model(work, hard_swish=True)
    cal, base, ev = _calibrated(path, np.load(work / "x16.npy"))
    assert "HARD_SWISH" in read_tflite(cal.model).op_counts
    search = B.Search(cal, base, ev, BudgetOptions(min_sqnr=25, fallback="int16"), allow_float=True,
                      allow_int16=True, latency=False)
    found = search.run()
    assert found.met and found.chosen.int16 and found.chosen.spliced
    assert [n for n in found.chosen.denylist if "outlier" not in n] == []
    counts = read_tflite(found.chosen.model).op_counts
    assert "HARD_SWISH" not in counts and counts["MUL"] >= 2
    record = found.chosen.record(search.budget, latency=False)
    assert record["float_ops"] == 1 and record["int16_ops"] >= 6
    assert min(found.chosen.score.sqnr.values()) >= 25
