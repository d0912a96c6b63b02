"""The bundle on TFLite Micro beside LiteRT: accuracy, and how far TFLM's outputs are from LiteRT's."""

from __future__ import annotations

import numpy as np

from edgepack.calibration import Dataset
from edgepack.runtimes.tflm import measure_arena, run_tflm


def compare_with_litert(model_path, manifest, data: Dataset, litert_outs: list[np.ndarray],
                        notes: list[str]) -> dict:
    """Run the bundle's model on TFLM over ``data``: accuracy, and how far it is from LiteRT's outputs.

    For Ethos-U targets this is the plain int8 model (the host has no Ethos-U kernel), and a note
    says so.
    """
    from edgepack.tflite_model import read_tflite
    from edgepack.validation import metrics

    model = model_path.read_bytes()
    info = read_tflite(model)
    arena = measure_arena(model, len(info.inputs))
    outs = run_tflm(model, info.inputs, info.outputs, manifest.inputs, manifest.outputs, data)
    diff = max(metrics.max_abs_error(a, b) for a, b in zip(litert_outs, outs))
    step = manifest.outputs[0].scale
    section = {"accuracy": metrics.accuracy(outs[0], data.labels) if data.labels is not None else None,
               "max_abs_diff_vs_litert": diff,
               "max_diff_steps_vs_litert": round(diff / step) if step else None,
               "top1_agreement_vs_litert": metrics.top1_agreement(litert_outs[0], outs[0]),
               **arena.to_dict()}
    if "vela" in manifest.extras:
        notes.append("validated the plain int8 model.tflite on LiteRT and TFLM: the host cannot run the "
                     f"Ethos-U custom op in {manifest.extras['vela'].get('model', 'the Vela model')}")
    return section
