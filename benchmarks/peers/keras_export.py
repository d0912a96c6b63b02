"""A Keras model to ONNX with tf2onnx (opset 13), run with the peers venv's python (``venv.py``):
the onnxruntime and NNCF peers quantize this export of the project's Keras nets.

    build/peers-venv/bin/python benchmarks/peers/keras_export.py MODEL.keras OUT.onnx
"""

from __future__ import annotations

import sys


def main() -> None:
    import keras
    import tensorflow as tf
    import tf2onnx

    src, out = sys.argv[1:3]
    model = keras.saving.load_model(src)
    spec = [tf.TensorSpec((1, *t.shape[1:]), t.dtype, name=t.name.split(":")[0]) for t in model.inputs]
    fn = tf.function(lambda *xs: model(list(xs) if len(xs) > 1 else xs[0], training=False))
    tf2onnx.convert.from_function(fn, input_signature=spec, opset=13, output_path=out)


if __name__ == "__main__":
    main()
