"""Tiny ONNX models built with onnx.helper for the ONNX tests (no checked-in binaries)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

OPSET = 13


def _init(name: str, arr: np.ndarray):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(arr, np.float32), name)


def _save(graph, path: Path, **save_kw) -> Path:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgepack-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path), **save_kw)
    return path


def classifier(path: Path, *, batch: int | str = "N", size: int = 8, classes: int = 10,
               hw: tuple[int | str, int | str] | None = None, external: bool = False) -> Path:
    """Conv -> Relu -> MaxPool -> Flatten -> Gemm on a 3-channel NCHW image (a PyTorch-style export).

    The Gemm has 8*(size/2)^2*classes >= 1024 weights so that dynamic-range quantization applies.
    """
    from onnx import TensorProto, helper

    rng = np.random.default_rng(1)
    h, w = hw or (size, size)
    feat = 8 * (size // 2) ** 2
    nodes = [
        helper.make_node("Conv", ["image", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        helper.make_node("MaxPool", ["relu"], ["pool"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, h, w])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])],
        [_init("conv_w", rng.normal(0, 0.4, (8, 3, 3, 3))), _init("conv_b", rng.normal(0, 0.1, 8)),
         _init("fc_w", rng.normal(0, 0.3, (feat, classes))), _init("fc_b", np.zeros(classes))])
    kw = {"save_as_external_data": True, "all_tensors_to_one_file": True, "location": "weights.bin",
          "size_threshold": 0} if external else {}
    return _save(graph, path, **kw)


def two_in_two_out(path: Path) -> Path:
    """Inputs (``tokens`` 2-D, ``image`` 4-D NCHW), outputs (``score`` 2-D, ``feature_map`` 4-D),
    declared in an order that is not alphabetical, to check ONNX order survives."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(2)
    nodes = [
        helper.make_node("Conv", ["image", "cw"], ["feature_map"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("ReduceMean", ["feature_map"], ["pooled"], axes=[2, 3], keepdims=0, name="gap"),
        helper.make_node("MatMul", ["tokens", "tw"], ["proj"], name="proj"),
        helper.make_node("Add", ["pooled", "proj"], ["score"], name="add"),
    ]
    graph = helper.make_graph(
        nodes, "two_in_two_out",
        [helper.make_tensor_value_info("tokens", TensorProto.FLOAT, [1, 6]),
         helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 2, 6, 6])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [1, 5]),
         helper.make_tensor_value_info("feature_map", TensorProto.FLOAT, [1, 5, 6, 6])],
        [_init("cw", rng.normal(0, 0.5, (5, 2, 3, 3))), _init("tw", rng.normal(0, 0.5, (6, 5)))])
    return _save(graph, path)


def shape_flatten(path: Path) -> Path:
    """A dynamic-batch export that flattens through Shape/Gather/Concat/Reshape (as torch.flatten
    exports do); onnx2tf needs onnx-simplifier to fold it."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Shape", ["c"], ["shape"], name="shape"),
        helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0, name="gather"),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"], name="unsqueeze"),
        helper.make_node("Concat", ["n1", "minus_one"], ["target"], axis=0, name="concat"),
        helper.make_node("Reshape", ["c", "target"], ["flat"], name="reshape"),
        helper.make_node("MatMul", ["flat", "fc"], ["y"], name="fc"),
    ]
    from onnx import numpy_helper

    graph = helper.make_graph(
        nodes, "shape_flatten",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [_init("w", rng.normal(0, 0.5, (2, 3, 3, 3))), _init("fc", rng.normal(0, 0.5, (32, 3))),
         numpy_helper.from_array(np.array(0, np.int64), "zero"),
         numpy_helper.from_array(np.array([0], np.int64), "axes0"),
         numpy_helper.from_array(np.array([-1], np.int64), "minus_one")])
    return _save(graph, path)


def custom_op(path: Path) -> Path:
    """A graph with an op from a custom domain that no converter knows."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("FancyActivation", ["r"], ["y"], domain="com.example", name="fancy_1")]
    graph = helper.make_graph(nodes, "custom", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    import onnx

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid("com.example", 1)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def separable_images(n: int, classes: int, seed: int, *, size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """NCHW images in [0, 1]: a class-specific pattern plus noise, so logits have clear winners."""
    rng = np.random.default_rng(seed)
    patterns = rng.random((classes, 3, size, size)).astype(np.float32)
    y = rng.integers(0, classes, n)
    x = 0.7 * patterns[y] + 0.3 * rng.random((n, 3, size, size), dtype=np.float32)
    return x.astype(np.float32), y


def time_major(path: Path, *, steps: int = 6, features: int = 8, classes: int = 5) -> Path:
    """A CTC-style recognizer head with a time-major output: ``x`` [1, steps, features] ->
    Transpose -> [steps, 1, features] -> MatMul -> Softmax -> ``probs`` [steps, 1, classes] (batch on
    axis 1, as ddddocr's recognizer gives it)."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Transpose", ["x"], ["tmaj"], perm=[1, 0, 2], name="to_time_major"),
        helper.make_node("MatMul", ["tmaj", "w"], ["logits"], name="proj"),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=2, name="softmax"),
    ]
    graph = helper.make_graph(
        nodes, "time_major",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, steps, features])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [steps, 1, classes])],
        [_init("w", rng.normal(0, 1.5, (features, classes)))])
    return _save(graph, path)


def split_gates(path: Path) -> Path:
    """``x`` [1, 8] -> MatMul -> Split into three [1, 2] "gates" -> a * b + c -> ``y`` [1, 2]: an op with
    several outputs in the middle (an LSTM cell's gate split)."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(4)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="proj"),
        helper.make_node("Split", ["h"], ["a", "b", "c"], axis=1, name="gates"),
        helper.make_node("Mul", ["a", "b"], ["ab"], name="mul"),
        helper.make_node("Add", ["ab", "c"], ["y"], name="add"),
    ]
    graph = helper.make_graph(
        nodes, "split_gates",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [_init("w", rng.normal(0, 1.0, (8, 6)))])
    return _save(graph, path)


def ort_per_sample(path: Path, x: np.ndarray, *, as_written: bool = False) -> np.ndarray:
    """onnxruntime on a model with one input "x", one sample per call (the batch axis is 1). ``as_written``:
    no graph optimization, so a QDQ model's DequantizeLinear -> op -> QuantizeLinear run as written (float
    ops on the dequantized values) instead of fused into QLinear kernels, whose int8 arithmetic differs between
    CPUs (on an AVX2 CPU without VNNI onnxruntime's u8s8 kernels read a QDQ CNN 2.7 dB below its own
    unfused run)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if as_written:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))])


def ort_integer_gemm_is_exact() -> bool:
    """Whether onnxruntime's uint8 x int8 integer GEMM (MatMulInteger, DynamicQuantizeLSTM's gates) computes
    exact int32 sums on this CPU. Its AVX2 kernel (no VNNI) adds pairs of u8*s8 products in int16 with
    saturation (vpmaddubsw): 64 x 255 x 127 reads 1,048,544 (32,767 x 32) there instead of 2,072,640."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    b = helper.make_tensor("b", TensorProto.INT8, [64, 1], np.full((64, 1), 127, np.int8).tobytes(), raw=True)
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "probe",
                              [helper.make_tensor_value_info("a", TensorProto.UINT8, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 1])], [b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return int(sess.run(None, {"a": np.full((1, 64), 255, np.uint8)})[0][0, 0]) == 64 * 255 * 127


def bundle_nchw(bundle: Path, x: np.ndarray) -> np.ndarray:
    """A bundle's first output on LiteRT for NCHW inputs "x" (transposed to the bundle's NHWC)."""
    from edgepack.packaging.manifest import read_manifest
    from edgepack.runtimes.isolated import IsolatedRunner

    m = read_manifest(bundle)
    with IsolatedRunner("litert", bundle / "model.tflite", m.inputs, m.outputs) as run:
        return run({"x": np.transpose(x, (0, 2, 3, 1))})[0]


def small_cnn(path: Path, weights: dict[str, np.ndarray], name: str = "small_cnn") -> Path:
    """x [1, 3, 12, 12] -> Conv(w1, b1) -> Relu -> Conv(w2, b2) -> Relu -> GlobalAveragePool -> Flatten ->
    MatMul(wf): what onnxruntime's quantizers quantize (weights given in ONNX layouts)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"]), helper.make_node("Flatten", ["p"], ["fl"]),
             helper.make_node("MatMul", ["fl", "wf"], ["y"])]
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, weights["wf"].shape[1]])],
        [numpy_helper.from_array(np.asarray(weights[k], np.float32), k) for k in ("w1", "b1", "w2", "b2", "wf")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def calibration_reader(calib: np.ndarray, name: str = "x"):
    """onnxruntime's CalibrationDataReader over ``calib``, one sample per batch."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{name: calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.it, None)

    return Reader()
