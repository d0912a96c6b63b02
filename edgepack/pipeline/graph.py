"""The graph stage: an ONNX graph made ready for translation (frozen inputs, If inlining, names,
folding: :mod:`edgepack.converter.onnx.prepare`), checked against onnxruntime on the original
graph, and the model's recurrent state pairs found. Both are recorded in the manifest
(``extras.graph``), where ``validate`` reads them back."""

from __future__ import annotations

import logging

import numpy as np

from edgepack.calibration.layout import find_state_pairs
from edgepack.errors import ConversionError, UsageError
from edgepack.formats.detect import ModelFormat
from edgepack.pipeline.state import PipelineState

log = logging.getLogger(__name__)

# The prepared graph against the original (both onnxruntime): beyond this, preparation changed the model.
PREPARE_MISMATCH = 1e-4


def stage_graph(st: PipelineState) -> dict | None:
    req = st.request.model
    if req.input_values and st.loaded.format is not ModelFormat.ONNX:
        raise UsageError("--input-value applies to ONNX models only")
    pairs = find_state_pairs([s.name for s in st.loaded.inputs], st.loaded.output_names, req.state_pairs)
    if st.loaded.format is not ModelFormat.ONNX:
        if pairs:
            st.graph = {"state_pairs": pairs}
        return st.graph
    from edgepack.converter.onnx.translate import (
        conversion_shapes,
        emulates_rounding,
        prepare,
        refuse_unhandled_quantization,
    )
    from edgepack.formats.onnx import with_input_values

    refuse_unhandled_quantization(st.loaded.model.proto)  # before the shapes: --input-shape would not help
    if req.input_values:
        st.loaded = with_input_values(st.loaded, dict(req.input_values))
        pairs = {k: v for k, v in pairs.items() if k not in dict(req.input_values)}
    model = st.loaded.model
    shapes = conversion_shapes(model, st.target.batch)
    st.loaded = _whole_inputs(st.loaded, shapes)
    st.prepared_onnx = prepare(model, shapes, lower_lstm=bool(pairs),
                               emulate_rounding=emulates_rounding(st.request.quantize.mode))
    record = st.prepared_onnx[2].to_dict()
    dequantized = st.prepared_onnx[2].dequantized is not None and st.prepared_onnx[2].dequantized.changed
    record["max_rel_error_vs_original"] = _check_prepared(model, st.prepared_onnx[0], shapes, strict=not dequantized)
    st.prepared_onnx = integer_forms(st.prepared_onnx, st.request.quantize, st.target)
    if st.prepared_onnx[2].integer_forms:  # the magnitude form changes the float function a little: measured
        record["integer_forms"] = {**st.prepared_onnx[2].integer_forms,
                                   "max_rel_change": _check_prepared(model, st.prepared_onnx[0], shapes, strict=False)}
        log.info("integer forms: %s", record["integer_forms"])
    st.graph = {**record, "state_pairs": pairs,
                "frozen_inputs": {k: np.asarray(v).tolist() for k, v in model.fixed_values.items()}}
    return st.graph


def integer_forms(prepared: tuple, quantize, target) -> tuple:
    """The prepared graph with the rewrites of :mod:`edgepack.converter.onnx.integer_forms` a quantize
    mode wants (an STFT magnitude as a max over rotations; int16x8: int16-kernel forms), recorded."""
    from edgepack.converter.onnx import integer_forms as forms
    from edgepack.converter.onnx.ready import name_nodes

    proto, names, record = prepared
    from edgepack.pipeline.budget.stage import integer_only

    done = forms.apply(proto, quantize.mode.value, magnitude="stft-magnitude" in quantize.ptq_algorithms,
                       integer_only=integer_only(target))
    if not done:
        return prepared
    record.integer_forms = done
    record.nodes_after = len(proto.graph.node)
    return proto, name_nodes(proto), record


def _whole_inputs(loaded, shapes: dict[str, tuple[int, ...]]):
    """Inputs whose first axis is 2 or more have no sample axis (a [2, batch, 128] state, 8 frames of a
    sequence model): each sample of the data is one whole tensor, as the model takes it."""
    import dataclasses

    from edgepack.calibration import InputSpec

    specs = [InputSpec(s.name, shapes[s.name], s.dtype, sample_axis=None)
             if shapes.get(s.name) and shapes[s.name][0] > 1 else s for s in loaded.inputs]
    return dataclasses.replace(loaded, inputs=specs)


def _check_prepared(model, proto, shapes: dict[str, tuple[int, ...]], strict: bool = True) -> float | None:
    """The prepared graph and the original (its frozen inputs fed) on one seeded random input. A
    dequantized graph differs by the activation rounding it no longer does: recorded, not refused."""
    import onnxruntime as ort

    from edgepack._native import capture_native_output
    from edgepack.converter.onnx.translate import probe_inputs

    feeds, _ = probe_inputs(model, shapes)
    try:  # onnxruntime logs a failing kernel natively (random indices out of range): captured
        with capture_native_output():
            want = model(feeds)
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            got = sess.run(None, feeds)
    except Exception as err:  # noqa: BLE001 — onnxruntime may refuse random data (indices): no check then
        log.info("prepared-graph check skipped: %s", (str(err).strip().splitlines() or [""])[0][:200])
        return None
    worst = 0.0
    for g, w in zip(got, want):
        g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
        if g.shape != w.shape:
            raise ConversionError(f"preparing the ONNX graph changed an output's shape {w.shape} -> {g.shape}")
        if w.size:
            worst = max(worst, float(np.max(np.abs(g - w))) / max(1.0, float(np.max(np.abs(w)))))
    if strict and worst > PREPARE_MISMATCH:
        raise ConversionError(f"the prepared ONNX graph differs from the original by {worst:.3g} (relative)",
                              hint="check the --input-value values; report the model if they are right")
    return round(worst, 10)
