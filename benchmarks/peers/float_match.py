"""edgepack at a peer's float precision: "at the same number of float ops as a peer (counted the same
way), edgepack >= that peer" (issue 21).

NNCF's default leaves elementwise activations float (every hard-swish Add/Clip/Mul/Div of layout_cdla,
ReLU6's Clip, sigmoid...) and quantizes the inputs of convolutions, matmuls and pooling. The same choice
in edgepack: its default int8 conversion (fusion, equalization) quantized again from the calibrated model
the converter keeps (:class:`edgepack.converter.requantize.Calibrated`, as the accuracy budget's search
does) with every elementwise arithmetic / activation op of the ``.tflite`` denylisted (float). The float
ops are then counted as for every other row; the table shows both counts side by side.

The pipeline state is caught through the pipeline's ``_keeper`` (the hook through which the convert stage
hands the calibrated model to the budget search); its final ``calibrated`` is read after the conversion;
nothing in edgepack changes.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

# TFLite op types NNCF's default leaves float in its ONNX form: elementwise arithmetic and activations
ELEMENTWISE = {"ADD", "SUB", "MUL", "DIV", "HARD_SWISH", "LOGISTIC", "TANH", "RELU", "RELU6", "RELU_N1_TO_1",
               "RELU_0_TO_1", "LEAKY_RELU", "PRELU", "MINIMUM", "MAXIMUM", "EXP", "LOG", "SQRT", "RSQRT",
               "SQUARE", "SQUARED_DIFFERENCE", "POW", "ABS", "NEG", "SOFTMAX", "LOG_SOFTMAX", "GELU", "ELU",
               "FLOOR", "CEIL", "ROUND", "SIN", "COS", "SIGN"}


@contextlib.contextmanager
def catch_calibrated():
    """Within: every conversion's pipeline state is appended to the yielded list; after the conversion its
    ``.calibrated`` is the final calibrated model (the ptq stages after conversion — the activation ranges
    chosen, lstm-float's cells — replace the one the converter kept: quantizing that one again lost the
    ranges, and this row read below edgepack's own full int8)."""
    from edgepack.pipeline import stages

    caught: list = []
    original = stages._keeper

    def keeper(st):
        keep = original(st)

        def both(calibrated) -> None:
            caught.append(st)
            keep(calibrated)

        return both

    stages._keeper = keeper
    try:
        yield caught
    finally:
        stages._keeper = original


def elementwise_float(calibrated, bundle: Path, out: Path) -> int:
    """``bundle`` copied to ``out`` with its model quantized again, elementwise ops float; returns how
    many ops were denylisted."""
    nodes = [node for kind, node, _, _ in calibrated.ops() if kind in ELEMENTWISE]
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(bundle, out)
    (out / "model.tflite").write_bytes(calibrated.quantize(denylist=nodes))
    _reindex(out)
    return len(nodes)


def _reindex(bundle: Path) -> None:
    """The requantized model's I/O tensors keep their names, not their indices: the copied manifest's
    ``index`` fields are set again from ``tflite_name`` (what ``zoo.measure.run_bundle`` reads)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(bundle / "model.tflite"))
    by_name = {d["name"]: d["index"] for d in interp.get_input_details() + interp.get_output_details()}
    manifest = json.loads((bundle / "manifest.json").read_text())
    for t in manifest["inputs"] + manifest["outputs"]:
        t["index"] = by_name[t["tflite_name"]]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
