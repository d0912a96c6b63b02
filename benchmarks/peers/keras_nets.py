"""The project's own Keras nets as peer-table models, trained here on scikit-learn's bundled digits
(nothing downloaded): the demo's digits CNN (``examples/digits_demo.py``) and the MobileNet-style net of
``benchmarks/pruning.py`` (depthwise-separable blocks, BatchNorm, ReLU6).

Calibration: the first 200 training digits; held-out: the 360 test digits; the reference is the Keras
model's own float output. edgepack converts the ``.keras`` file; onnxruntime and NNCF quantize its
tf2onnx export (``keras_export.py``, in the peers venv); TF's own converter is a peer too, with its
default full-integer PTQ (``Optimize.DEFAULT``, the same 200 samples as representative dataset, int8
builtins, int8 I/O, what ``edgepack --quantize int8`` asks of it).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
NETS = ("keras_digits_cnn", "keras_mobilenet_style")
EPOCHS = {"keras_digits_cnn": 15, "keras_mobilenet_style": 30}


@dataclass
class KerasNet:
    name: str
    path: Path
    calib: np.ndarray  # (200, 8, 8, 1)
    held: np.ndarray  # (360, 8, 8, 1)
    refs: list[np.ndarray]  # the float model's outputs on held


def prepare(name: str, work: Path) -> KerasNet:
    """Train (seeded) and save the net, once per work folder."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.pruning import mobilenet_style
    from edgepack._native import quiet_tensorflow
    from examples.digits_demo import digits_cnn, digits_split

    quiet_tensorflow(False)
    import keras

    x_train, x_test, y_train, _ = digits_split(0)
    path = work / f"{name}.keras"
    if not path.exists():
        model = digits_cnn(0) if name == "keras_digits_cnn" else mobilenet_style(0)
        model.fit(x_train, y_train, epochs=EPOCHS[name], batch_size=32, verbose=0, validation_split=0.1)
        model.save(path)
    model = keras.saving.load_model(path)
    return KerasNet(name, path, x_train[:200], x_test, [np.asarray(model.predict(x_test, verbose=0))])


def tf_default_ptq(net: KerasNet, out: Path) -> float:
    """TF's converter with its default full-integer PTQ; returns its wall seconds."""
    import tempfile

    import keras
    import tensorflow as tf

    from edgepack._native import capture_native_output

    start = time.perf_counter()
    model = keras.saving.load_model(net.path)
    with tempfile.TemporaryDirectory() as tmp, capture_native_output():
        model.export(tmp, verbose=False, input_signature=[tf.TensorSpec((1, *net.calib.shape[1:]), tf.float32)])
        conv = tf.lite.TFLiteConverter.from_saved_model(tmp)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([net.calib[i:i + 1]] for i in range(len(net.calib)))
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = conv.inference_output_type = tf.int8
        out.write_bytes(conv.convert())
    return time.perf_counter() - start


def run_tflite(path: Path, x: np.ndarray) -> list[np.ndarray]:
    """One sample at a time, (de)quantizing int8 I/O with the tensors' own scale and zero point."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    (inp,), outs = interp.get_input_details(), interp.get_output_details()
    results: list[list[np.ndarray]] = [[] for _ in outs]
    for i in range(len(x)):
        v = x[i:i + 1]
        if inp["dtype"] != np.float32:
            s, z = inp["quantization"]
            v = np.clip(np.round(v / s + z), -128, 127).astype(inp["dtype"])
        interp.set_tensor(inp["index"], v)
        interp.invoke()
        for r, o in zip(results, outs):
            y = interp.get_tensor(o["index"])
            if o["dtype"] != np.float32:
                s, z = o["quantization"]
                y = (y.astype(np.float32) - z) * s
            r.append(y)
    return [np.concatenate(r) for r in results]
