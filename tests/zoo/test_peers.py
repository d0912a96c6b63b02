"""benchmarks/peers: the NNCF import patch, the memory watch that turns an out-of-memory peer into a row,
and the calibration hand-over to the children."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from benchmarks.peers import child, venv

# the pattern of NNCF 3.4's two failing modules: a dataclass annotation with protobuf classes and `|`
MODULE = """# Copyright (c) someone
# licensed

from dataclasses import dataclass

import numpy as np
import onnx


@dataclass
class Params:
    tensor_type: onnx.TensorProto.DataType | np.dtype
    edge: onnx.ValueInfoProto | onnx.TensorProto = None
"""


def _imports(site) -> subprocess.CompletedProcess:
    code = ("import numpy as np; import nncf.onnx.quantization.quantizer_parameters as m; "
            "print(m.Params(np.dtype('int8')))")
    return subprocess.run([sys.executable, "-c", code], cwd=site, capture_output=True, text=True)


def test_patch_makes_the_failing_annotations_import(tmp_path):
    for rel in venv.PATCHED:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(MODULE)
    before = _imports(tmp_path)
    assert before.returncode != 0 and "unsupported operand type(s) for |" in before.stderr
    assert venv.patch(tmp_path) == venv.PATCHED
    after = _imports(tmp_path)
    assert after.returncode == 0, after.stderr
    text = (tmp_path / venv.PATCHED[0]).read_text()
    assert text.index(venv.FUTURE) > text.index("# licensed") and text.count(venv.FUTURE) == 1
    assert venv.patch(tmp_path) == []  # once only


def test_a_child_past_the_memory_limit_is_a_row(tmp_path):
    grab = "import numpy as np, time; a = np.ones(400 * 2**20 // 8); time.sleep(30)"
    res = child.run([sys.executable, "-c", grab], limit_gb=0.25, log=tmp_path / "log")
    assert not res.ok and res.message.startswith("out of memory at ") and res.seconds < 20
    assert res.peak_gb > 0.25
    ok = child.run([sys.executable, "-c", "print(1)"], limit_gb=0.25)
    assert ok.ok and ok.message == ""
    failed = child.run([sys.executable, "-c", "raise SystemExit('bad model')"], limit_gb=0.25, log=tmp_path / "f")
    assert not failed.ok and "bad model" in failed.message


def test_calibration_feeds_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.random((1, 3, 4, 4), dtype=np.float32), "s": rng.random((1, 2), dtype=np.float32)}
             for _ in range(5)]
    back = child.feeds(child.save_feeds(feeds, tmp_path / "c.npz"))
    assert len(back) == 5 and all(np.array_equal(a[k], b[k]) for a, b in zip(feeds, back) for k in a)


def test_float_match_requantizes_elementwise_ops_float(tmp_path):
    """The "at NNCF's precision" row: the default int8 bundle quantized again with its elementwise ops float,
    still readable through its (re-indexed) manifest."""
    import keras

    from benchmarks.peers import float_match
    from benchmarks.ptq_peers import tflite_float_ops
    from benchmarks.zoo.measure import run_bundle
    from edgepack import api

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,), name="x"), keras.layers.Dense(8), keras.layers.Activation("sigmoid"),
                              keras.layers.Dense(3, name="y")])
    model.save(tmp_path / "m.keras")
    calib = np.random.default_rng(0).normal(size=(100, 6)).astype(np.float32)
    np.save(tmp_path / "c.npy", calib)
    with float_match.catch_calibrated() as caught:
        api.convert(model=tmp_path / "m.keras", output=tmp_path / "int8", calibration=tmp_path / "c.npy", force=True)
    assert len(caught) == 1 and tflite_float_ops(tmp_path / "int8" / "model.tflite")[0] == 0
    # the final calibrated model (after the ptq stages): quantized again, the bundle's scales
    from edgepack.tflite_model import read_tflite

    again, bundle = (read_tflite(m) for m in (caught[0].calibrated.quantize(),
                                              (tmp_path / "int8" / "model.tflite").read_bytes()))
    assert sorted(t.scale for t in again.tensors if t.scale) == sorted(t.scale for t in bundle.tensors if t.scale)
    assert float_match.elementwise_float(caught[0].calibrated, tmp_path / "int8", tmp_path / "match") == 1  # LOGISTIC
    assert tflite_float_ops(tmp_path / "match" / "model.tflite")[0] >= 1
    feeds = [{"x": calib[i:i + 1]} for i in range(4)]
    ref = model.predict(calib[:4], verbose=0)
    out = run_bundle(tmp_path / "match", feeds)[0].reshape(ref.shape)
    assert np.abs(out - ref).max() < 0.1 * np.abs(ref).max()


def test_over_seeds_gives_each_quantizers_mean_lowest_and_draws_above_edgepack():
    from benchmarks.ptq_peers import DEFAULT, over_seeds

    def row(q, seed, whole, worst, task):
        return {"model": "det", "quantizer": q, "calib_seed": seed, "whole": whole, "worst": worst, "task": task}

    rows = [row(DEFAULT, 0, 21.0, 20.5, 0.99), row("onnxruntime Percentile [strided by 10]", 0, 22.0, 20.0, 0.99),
            row(DEFAULT, 1, 23.0, 21.5, 0.98), row("onnxruntime Percentile", 1, 20.0, 19.0, 0.985),
            {"model": "det", "quantizer": "NNCF", "absent": "not installed"}]
    lines = over_seeds(rows).splitlines()
    assert len(lines) == 4  # header, rule, one row per quantizer (the strided note does not split a peer)
    assert lines[2] == f"| det | {DEFAULT} | 2 | 22.00 (21.00) | 21.00 (20.50) | 0.985 (0.980) |  |"
    assert lines[3] == ("| det | onnxruntime Percentile | 2 | 21.00 (20.00) | 19.50 (19.00) | 0.988 (0.985) "
                        "| 1 / 0 / 1 of 2 |")



def test_over_seeds_and_paired_table_compare_with_the_pivot_row():
    """``--pivot``: another edgepack row (learned rounding) is the one every row is counted and paired against."""
    from benchmarks.ptq_peers import DEFAULT, over_seeds, paired_table

    lr = "edgepack default +learned-rounding"

    def row(q, seed, whole, worst, task):
        return {"model": "det", "quantizer": q, "calib_seed": seed, "whole": whole, "worst": worst, "task": task}

    rows = [row(DEFAULT, 0, 21.0, 20.5, 0.99), row(lr, 0, 24.0, 21.0, 0.98), row("onnxruntime Percentile", 0,
                                                                                  22.0, 20.9, 0.99)]
    lines = over_seeds(rows, lr).splitlines()
    assert f"draws above {lr} (whole / worst / task)" in lines[0]
    assert lines[2].endswith("| 0 / 0 / 1 of 1 |") and lines[3].endswith("|  |")  # the default: above on task
    assert lines[4].endswith("| 0 / 0 / 1 of 1 |")
    paired = [{**rows[2], "default_minus": {"whole": [2.0, 1.5, 2.5], "worst": [0.1, -0.2, 0.4],
                                            "task": [-0.01, -0.02, 0.0]}}]
    table = paired_table(paired, lr).splitlines()
    assert table[0].startswith(f"| model | draw | {lr} minus |")
    assert table[2] == ("| det | 0 | onnxruntime Percentile | +2.00 [+1.50, +2.50] | +0.10 [-0.20, +0.40] | "
                        "-0.010 [-0.020, +0.000] |")

def test_a_peers_row_is_kept_and_read_back_for_the_same_draw_only(tmp_path):
    """``--peer-cache``: a peer's row and held-out outputs come back as stored for the same model, draw,
    held-out count and stride; another draw, count or stride is another key (not found)."""
    from benchmarks.ptq_peers import Case, cached_peer, peer_key, store_peer

    def case(seed, held):
        return Case("det", "yolox_f1", tmp_path / "m.onnx", tmp_path / "c.npz", tmp_path / "c.npz",
                    [{"images": None}] * held, [], None, seed=seed)

    outs = [np.arange(12, dtype=np.float32).reshape(3, 4), np.ones((3, 2), np.float32)]
    row = {"label": "onnxruntime Percentile [strided by 10]", "seconds": 681.2, "float_ops": [6, 277], "peak_gb": 3.1}
    key = peer_key(case(3, 300), "onnxruntime Percentile", True, 10)
    assert cached_peer(tmp_path / "cache", key) is None
    store_peer(tmp_path / "cache", key, row, outs)
    got_row, got = cached_peer(tmp_path / "cache", key)
    assert got_row == row and len(got) == 2 and all(np.array_equal(a, b) for a, b in zip(got, outs))
    others = {peer_key(case(4, 300), "onnxruntime Percentile", True, 10),
              peer_key(case(3, 32), "onnxruntime Percentile", True, 10),
              peer_key(case(3, 300), "onnxruntime Percentile", False, 10),
              peer_key(case(3, 300), "onnxruntime MinMax", True, 10)}
    assert key not in others and len(others) == 4
    assert all(cached_peer(tmp_path / "cache", k) is None for k in others)
    assert cached_peer(None, key) is None


def test_paired_figures_of_edgepack_against_a_peer_and_their_table():
    from benchmarks.ptq_peers import DEFAULT, paired, paired_table

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(300, 12)).astype(np.float32)
    noise = rng.normal(size=ref.shape).astype(np.float32)
    ours, peer = ref + 0.01 * noise, ref + 0.04 * noise
    top = ref.argmax(1)
    peer[np.arange(15), (top[:15] + 1) % 12] += 10.0  # the peer flips 15 of 300 top-1 answers
    d = paired("top1", [ref], [ours], [peer])
    assert 5.0 < d["worst"][1] <= d["worst"][0] <= d["worst"][2]  # noise 4x: ~12 dB, minus the flipped samples
    assert d["whole"][1] <= d["whole"][0] <= d["whole"][2]
    assert d["task"][0] >= 0.05 and d["task"][1] > 0  # 15 flips and the near-ties its noise moves: shown above 0
    rows = [{"model": "m", "quantizer": "onnxruntime MinMax", "calib_seed": 0, "default_minus": d},
            {"model": "m", "quantizer": DEFAULT, "calib_seed": 0}]
    lines = paired_table(rows).splitlines()
    assert len(lines) == 3 and lines[2].startswith("| m | 0 | onnxruntime MinMax | +")
    assert f"{d['task'][0]:+.3f} [+0." in lines[2]
