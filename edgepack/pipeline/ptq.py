"""The ptq stage (between calibrate and convert): full-integer PTQ algorithms on the float model.

Each algorithm (``edgepack.optimize.ptq``) rewrites the model the converter gets; the source model
stays ``st.loaded``, the reference every comparison (validate, the accuracy budget) is made against.
Each records what it changed in the manifest's ``extras.ptq``; ``--ptq NAME`` turns one on,
``--no-ptq NAME`` off.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from edgepack.formats.base import ModelFormat
from edgepack.request import QuantizeMode

if TYPE_CHECKING:
    from edgepack.pipeline.state import PipelineState

log = logging.getLogger(__name__)

_INTEGER = (QuantizeMode.INT8, QuantizeMode.INT8_FLOAT_IO, QuantizeMode.INT16X8)
LSTM_FLOAT = "lstm-float"
STFT_MAGNITUDE = "stft-magnitude"  # a graph-stage rewrite (pipeline/graph.py), not one of this stage's
AFTER_CONVERT = ("ranges", "int8-bias-correction", LSTM_FLOAT)  # these run on the converted model


def stage_ptq(st: PipelineState) -> dict | None:
    req = st.request
    if req.quantize.mode not in _INTEGER or st.calibration is None:
        return None
    wanted = [a for a in req.quantize.ptq_algorithms if a not in (*AFTER_CONVERT, STFT_MAGNITUDE)]  # run elsewhere
    if not wanted:
        return None
    if req.optimize.qat:  # the model learned its int8 weights and ranges: nothing here to correct
        st.ptq = {a: {"skipped": "--qat: the model was trained for int8"} for a in wanted}
        return {a: "skipped" for a in wanted}
    if st.loaded.format is ModelFormat.ONNX:
        model, record = _onnx(st, wanted)
    elif st.loaded.is_keras:
        model, record = _keras(st, wanted)
    else:
        model, record = None, {a: {"skipped": f"no {st.loaded.format.value} face yet"} for a in wanted}
    st.ptq = record
    if model is not None:
        st.quantize_source = model
    return {name: _summary(r) for name, r in record.items()}


def _summary(record: dict[str, Any]) -> Any:
    if "skipped" in record:
        return "skipped"
    return {k: v for k, v in record.items() if isinstance(v, (int, float))}


def _onnx(st: PipelineState, wanted: list[str]):
    from edgepack.formats.onnx import OnnxModel
    from edgepack.optimize.ptq import onnx_face

    loaded = st.loaded
    model: OnnxModel = loaded.model
    proto, record = onnx_face.apply(model, wanted, st.calibration, per_tensor=st.request.quantize.per_tensor)
    if proto is model.proto:
        return None, record
    new = dataclasses.replace(model, proto=proto, _session=None)
    return dataclasses.replace(loaded, model=new), record


def _keras(st: PipelineState, wanted: list[str]):
    from edgepack.optimize.ptq import keras_face
    from edgepack.optimize.ptq.onnx_face import SAMPLES

    loaded = st.loaded
    batch = next(st.calibration.batches(SAMPLES, {s.name: s.dtype for s in loaded.inputs}))
    model, record = keras_face.apply(loaded.model, wanted, [batch[s.name] for s in loaded.inputs],
                                     per_tensor=st.request.quantize.per_tensor)
    return (None if model is None else dataclasses.replace(loaded, model=model)), record



def stage_calibrated(st: PipelineState) -> dict | None:
    """Algorithms that edit the calibrated model the converter kept (``edgepack.optimize.ptq.ranges``:
    activation ranges; ``int8_bias``: biases measured on the int8 model's activations), each checked
    on the int8 model's outputs; the edited model is quantized again and kept for the budget's search."""
    req = st.request
    wanted = [a for a in AFTER_CONVERT[:2] if a in req.quantize.ptq_algorithms]
    if not wanted or st.calibrated is None or req.quantize.mode not in (QuantizeMode.INT8, QuantizeMode.INT8_FLOAT_IO):
        return None
    if req.optimize.qat:
        st.ptq = {**(st.ptq or {}), **{a: {"skipped": "--qat: the model was trained for int8"} for a in wanted}}
        return {a: "skipped" for a in wanted}
    if any(r.name == "convert" and "source_ranges" in r.detail for r in st.stages):
        st.ptq = {**(st.ptq or {}), **{a: {"skipped": "the source model's own QDQ ranges are kept"} for a in wanted}}
        return {a: "skipped" for a in wanted}
    from edgepack.optimize.ptq import int8_bias, ranges

    samples, confirm = ranges.spaced_apart(st.calibrated.samples)
    record: dict[str, Any] = {}
    skip = _ranges_skipped(st, len(samples), len(confirm)) if "ranges" in wanted else None
    if skip:
        wanted.remove("ranges")
        record["ranges"] = {"skipped": skip}
    run = {"ranges": lambda cal: ranges.choose_ranges(cal, samples, confirm=confirm),
           "int8-bias-correction": lambda cal: int8_bias.correct_biases(cal, samples)}
    for name in wanted:
        # ops the lstm-float stage keeps float (it ran first) are float in every quantization: the
        # algorithms judge the model as it will be and leave the cells' own ranges and biases alone
        try:
            model, record[name] = run[name](st.calibrated)
        except Exception as err:  # noqa: BLE001 - a default-on refinement must not cost the conversion
            from edgepack.errors import EdgepackError

            if isinstance(err, EdgepackError) or name in req.quantize.ptq or "all" in req.quantize.ptq:
                raise
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            log.warning("%s (on by default) failed, the bundle is made without it: %s", name, first)
            log.debug("%s failed", name, exc_info=True)  # the traceback goes to the log file
            record[name] = {"skipped": f"failed: {type(err).__name__}: {first}"}
            continue
        if model is not st.calibrated.model:
            st.calibrated = st.calibrated.with_model(model)
            st.tflite = _final(st.calibrated)[0]
    # the manifest's extras hold what changed; how long it took is the stage's (``stages``): two runs of the same
    # conversion give the same extras (a reproducible bundle)
    st.ptq = {**(st.ptq or {}), **{n: {k: v for k, v in r.items() if k != "seconds"} for n, r in record.items()}}
    return {name: _summary(r) for name, r in record.items()}


def _ranges_skipped(st: PipelineState, chosen_on: int, confirm_on: int) -> str | None:
    """Why ``ranges`` keeps the recorded ranges of this conversion, or None when it runs."""
    from edgepack.optimize.ptq.ranges import MIN_CONFIRM

    if confirm_on < MIN_CONFIRM:  # a pick only the samples it was chosen on can judge is a bet on the next inputs
        return (f"{chosen_on + confirm_on} calibration samples: choosing ranges takes {chosen_on + MIN_CONFIRM} or "
                f"more ({chosen_on} to choose on, at least {MIN_CONFIRM} others to confirm the pick)")
    if st.calibrated.calibration.get("method") != "one pass":
        # several subgraphs, LSTM kernels or custom ops: TensorFlow's calibrator ran, in its child; the
        # histograms and trials run the model in this process, which such graphs have crashed
        return ("the graph needed TensorFlow's calibrator (several subgraphs, LSTM kernels or custom ops): its "
                "recorded ranges stay")
    state_float = bool(((st.ptq or {}).get(LSTM_FLOAT) or {}).get("state_path_ops"))
    if (st.graph or {}).get("state_pairs") and "ranges" not in st.request.quantize.ptq and not state_float:
        # a streaming model whose state is int8: each call's state output is the next call's input, and a range
        # clipped for single calibration calls is not judged on the stream (silero VAD's streamed decisions:
        # 98.1 % -> 96.5 %). With the state float (lstm-float, float I/O) ranges run: 95.7 % -> 97.3 %.
        return ("the model carries int8 recurrent state between calls: ranges chosen on single calls are not "
                "judged on the stream (--ptq ranges to choose them anyway)")
    return None


def _final(calibrated) -> tuple[bytes, int]:
    """The bundle's model from ``calibrated``: quantized, and where the lstm-float stage kept cells float,
    their input and recurrent projections hybrid (int8 weights, float activations); and how many weight
    tensors were made hybrid."""
    from edgepack.converter.recurrent import hybrid_projections

    model, hybrid = calibrated.quantize(), 0
    if calibrated.keep_float:  # set by the lstm-float stage only
        model, hybrid = hybrid_projections(model, list(calibrated.keep_float))
        if calibrated.weight_grids:  # the hybrid weights on an already-quantized source's grid too
            model = calibrated.weight_grids.apply(model)[0]
    return model, hybrid


def stage_lstm_float(st: PipelineState) -> dict | None:
    """The converted int8 model quantized again with its recurrent cells' ops float
    (:mod:`edgepack.converter.recurrent`): as onnxruntime's static quantization runs an LSTM's gates
    and cell. Int8 modes on targets with float kernels; integer-only targets keep full int8 and the
    manifest says so. Recorded in ``extras.ptq["lstm-float"]``."""
    from edgepack.pipeline.budget.stage import integer_only

    req = st.request
    if (LSTM_FLOAT not in req.quantize.ptq_algorithms or st.calibrated is None
            or req.quantize.mode not in (QuantizeMode.INT8, QuantizeMode.INT8_FLOAT_IO)):
        return None
    from edgepack.converter.copy_scales import scale_mismatches
    from edgepack.converter.recurrent import cell_nodes

    ops = st.calibrated.ops()
    nodes = cell_nodes(ops)
    if not nodes:
        return None
    state_path: list[str] = []
    if req.quantize.mode == QuantizeMode.INT8_FLOAT_IO:  # float I/O: the state stays float from input to output
        from edgepack.converter.recurrent import state_path_nodes
        from edgepack.tflite_model import read_tflite

        info = read_tflite(st.calibrated.model, verify=False)
        state_path = state_path_nodes(ops, info.inputs, info.outputs, nodes)
    if integer_only(st.target):
        record: dict[str, Any] = {"skipped": f"target {st.target.name} runs integer ops only: "
                                             f"{len(nodes)} recurrent-cell ops stay int8"}
    else:
        # kept on the calibrated model: the ranges / int8-bias stages and the accuracy budget's candidates
        # keep them float as well
        st.calibrated = dataclasses.replace(st.calibrated, keep_float=tuple(nodes + state_path))
        record = {"float_ops": len(nodes) + len(state_path)}
        if state_path:
            record["state_path_ops"] = len(state_path)
        st.tflite, hybrid = _final(st.calibrated)
        # byte-copying ops given a scale not their input's: quantize() requantizes them (copy_scales); counted
        record.update(scale_mismatches=len(scale_mismatches(st.tflite)), hybrid_weights=hybrid)
        from edgepack.converter import own_grids

        if own_grids.count(st.tflite):  # a concatenated float output's other readers on its own grid
            record["own_grid_tensors"] = own_grids.count(st.tflite)
        log.info("lstm-float: %d recurrent-cell ops kept float", len(nodes))
    st.ptq = {**(st.ptq or {}), LSTM_FLOAT: record}
    return dict(record)
