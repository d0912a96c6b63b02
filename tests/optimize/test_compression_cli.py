"""`edgepack convert --cluster K / --low-rank` end to end on Keras 3 and tf_keras models, read back from
the .tflite, and their one-line usage errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from edgepack.cli import main


def convert(model, out, calib, *args):
    res = CliRunner().invoke(main, ["convert", str(model), "-o", str(out), "--calibration", str(calib), *args])
    assert res.exit_code == 0, res.output
    return json.loads((out / "manifest.json").read_text())["extras"]["optimize"]


def weights(tflite) -> dict[str, np.ndarray]:
    """Every constant tensor with a kernel's rank (2-D and up), read back from the .tflite with LiteRT."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(tflite))
    out = {}
    for t in interp.get_tensor_details():
        if len(t["shape"]) >= 2 and t["name"] and not t["shape_signature"].tolist().count(-1):
            try:
                value = interp.get_tensor(t["index"])
            except ValueError:
                continue
            if value.size >= 16 and t["index"] not in [d["index"] for d in interp.get_input_details()]:
                out[t["name"]] = value
    return out


def test_cluster_float_keeps_at_most_k_values_per_kernel(tmp_path, keras3_model, calib_npy):
    unlabelled = tmp_path / "x.npz"
    np.savez(unlabelled, x=np.load(calib_npy)[:80])
    opt = convert(keras3_model, tmp_path / "b", calib_npy, "--cluster", "8", "--quantize", "none",
                  "--train-data", str(unlabelled), "--epochs", "1")
    assert [la["clusters_after"] for la in opt["cluster"]["layers"]] == [8, 8, 8]
    assert opt["cluster"]["finetune"]["target"] == "teacher"  # no labels: distilled from the original
    assert opt["keras_bridge"]["from"] == "keras3"
    kernels = weights(tmp_path / "b" / "model.tflite")
    assert len(kernels) == 3, list(kernels)
    assert all(len(np.unique(w)) <= 8 for w in kernels.values()), {k: len(np.unique(w)) for k, w in kernels.items()}
    assert opt["after"]["zip_bytes"] < opt["before"]["zip_bytes"]


def test_cluster_preserving_qat_keeps_clusters_through_int8(tmp_path, tf_keras_model, calib_npy, labelled_npz):
    opt = convert(tf_keras_model, tmp_path / "b", calib_npy, "--cluster", "8", "--qat",
                  "--train-data", str(labelled_npz), "--epochs", "2")
    assert opt["qat"]["scheme"] == "default_8bit_cluster_preserve" and "keras_bridge" not in opt
    kernels = weights(tmp_path / "b" / "model.tflite")
    assert len(kernels) == 3 and all(w.dtype == np.int8 for w in kernels.values())
    for name, w in kernels.items():  # per output channel (axis 0 in TFLite), at most K int8 values
        assert max(len(np.unique(w[c])) for c in range(w.shape[0])) <= 8, name
    # a trained kernel that was not clustered has far more (the check can fail)
    assert len(np.unique(next(iter(weights_of_plain_int8(tmp_path, tf_keras_model, calib_npy).values())))) > 8


def weights_of_plain_int8(tmp_path, model, calib):
    res = CliRunner().invoke(main, ["convert", str(model), "-o", str(tmp_path / "plain"), "--calibration", str(calib)])
    assert res.exit_code == 0, res.output
    return weights(tmp_path / "plain" / "model.tflite")


def test_sparsity_clustering_and_qat_compose(tmp_path, tf_keras_model, calib_npy, labelled_npz):
    opt = convert(tf_keras_model, tmp_path / "b", calib_npy, "--prune", "sparsity:0.5", "--cluster", "8", "--qat",
                  "--train-data", str(labelled_npz), "--epochs", "1")
    assert opt["cluster"]["preserve_sparsity"] is True
    assert opt["qat"]["scheme"] == "default_8bit_cluster_preserve_sparsity"
    kernels = weights(tmp_path / "b" / "model.tflite")
    dense = max(kernels.values(), key=lambda w: w.size)  # 16×128 hidden Dense
    assert np.mean(dense == 0) >= 0.45  # the zeros survived clustering and QAT
    assert max(len(np.unique(dense[c])) for c in range(dense.shape[0])) <= 8


@pytest.mark.parametrize("fixture, spec", [("keras3_model", "rank:2"), ("tf_keras_model", "0.6")])
def test_low_rank_through_the_cli(request, tmp_path, calib_npy, labelled_npz, fixture, spec):
    from edgepack.tflite_model import read_tflite

    model = request.getfixturevalue(fixture)
    opt = convert(model, tmp_path / "b", calib_npy, "--low-rank", spec, "--train-data", str(labelled_npz),
                  "--epochs", "1")
    lr = opt["low_rank"]
    assert lr["spec"] == spec and lr["factorized"] >= 1
    done = [la for la in lr["layers"] if la["factorized"]]
    assert all(la["macs_after"] < la["macs_before"] and la["rank_after"] < la["rank_before"] for la in done)
    cut = sum(la["macs_before"] - la["macs_after"] for la in done)
    assert opt["after"]["macs"] == opt["before"]["macs"] - cut
    assert lr["finetune"]["target"] == "labels"
    ops = read_tflite(tmp_path / "b" / "model.tflite").op_counts
    assert ops.get("FULLY_CONNECTED", 0) + ops.get("CONV_2D", 0) == 3 + len(done)  # one extra layer per pair


@pytest.mark.parametrize("args, message", [
    (["--cluster", "1"], "invalid value 1 for --cluster"),
    (["--cluster", "300"], "invalid value 300 for --cluster"),
    (["--cluster", "many"], "'many' is not a valid integer"),
    (["--low-rank", "0"], "invalid value '0' for --low-rank"),
    (["--low-rank", "1.5"], "invalid value '1.5' for --low-rank"),
    (["--low-rank", "rank:0"], "invalid value 'rank:0' for --low-rank"),
    (["--cluster", "8"], "--cluster 8 needs training data"),
    (["--cluster", "8", "--qat", "--per-tensor", "--train-data", "{labelled}"],
     "--cluster 8 --qat --per-tensor is not supported"),
    (["--cluster", "8", "--cluster-layers", "nothing*", "--train-data", "{labelled}"], "no layer to cluster"),
])
def test_bad_values_are_one_line_usage_errors(tmp_path, keras3_model, calib_npy, labelled_npz, args, message):
    args = [a.replace("{labelled}", str(labelled_npz)) for a in args]
    res = CliRunner().invoke(main, ["convert", str(keras3_model), "-o", str(tmp_path / "b"), "--calibration",
                                    str(calib_npy), *args])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], res.output
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("fmt, args", [("saved_model", ["--low-rank", "0.9"]),
                                       ("onnx", ["--cluster", "16", "--train-data", "{labelled}"])])
def test_formats_without_a_keras_graph_are_refused(tmp_path, calib_npy, labelled_npz, fmt, args):
    if fmt == "onnx":
        from tests.converter.onnx_builders import classifier

        model = tmp_path / "model.onnx"
        classifier(model)
    else:
        from tests.conftest import save_model

        model = save_model("saved_model", tmp_path / "sm")
    args = [a.replace("{labelled}", str(labelled_npz)) for a in args]
    res = CliRunner().invoke(main, ["convert", str(model), "-o", str(tmp_path / "b"), "--calibration",
                                    str(calib_npy), *args])
    assert res.exit_code == 2, res.output
    assert f"{args[0]} {args[1]} not supported for this format" in res.output and fmt in res.output
    assert not (tmp_path / "b").exists()


def test_recipe_and_api_take_the_same_options(tmp_path, keras3_model, labelled_npz):
    from edgepack import api

    recipe = tmp_path / "r.toml"
    recipe.write_text(f'model = "{keras3_model}"\n[optimize]\ncluster = 4\nlow_rank = 0.5\n'
                      f'cluster_layers = ["dense*"]\ntrain_data = "{labelled_npz}"\n')
    req = api.convert_request(recipe=recipe, output=tmp_path / "b", low_rank="rank:3")
    assert (req.optimize.cluster, req.optimize.low_rank, req.optimize.cluster_layers) == (4, "rank:3", ("dense*",))
    assert api.convert_request(recipe=recipe, output=tmp_path / "b").optimize.low_rank == "0.5"
