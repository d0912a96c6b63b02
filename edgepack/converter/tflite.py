"""The TFLite converter call, for every quantize mode.

Every source is turned into something TensorFlow's converter reads with our own signature, so the
signature's input and output names are the source model's names:
Keras 3 models are exported with ``keras.export.ExportArchive``, tf_keras models go through a
concrete function, SavedModels are read directly.

Calibrating modes (int8, int8-float-io, int16x8) run TensorFlow's calibration step in a child
process (:mod:`edgepack.converter.isolate`): it executes the model natively over every sample and
can die with a segmentation fault on real graphs. Everything else stays in this process.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from edgepack._native import capture_native_output
from edgepack.calibration import Dataset
from edgepack.errors import ConversionError
from edgepack.formats.base import LoadedModel, ModelFormat, call_keras, signature_name
from edgepack.request import QuantizeMode

log = logging.getLogger(__name__)


def _tensor_specs(loaded: LoadedModel, batch: int | None = None):
    """Input signature; ``batch`` None keeps the batch dimension dynamic."""
    import tensorflow as tf

    return [tf.TensorSpec(spec.tensor_shape(batch), tf.as_dtype(spec.dtype), name=signature_name(spec.name))
            for spec in loaded.inputs]


def _keras_fn(loaded: LoadedModel) -> Callable:
    model = loaded.model
    out_names = [signature_name(n) for n in loaded.output_names]

    def fn(*args):
        return dict(zip(out_names, call_keras(model, args, loaded.output_names)))

    return fn


def _fixed_batch_saved_model(loaded: LoadedModel, batch: int):
    """The SavedModel's signature re-traced with a static batch (its own signature is dynamic)."""
    import tensorflow as tf

    obj, sig = loaded.model
    names = [signature_name(s.name) for s in loaded.inputs]
    fn = tf.function(lambda *args: sig(**dict(zip(names, args))), input_signature=_tensor_specs(loaded, batch))
    return tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], obj)


def _make_converter(loaded: LoadedModel, workdir: Path, batch: int | None = None):
    import tensorflow as tf

    if loaded.format is ModelFormat.SAVED_MODEL:
        if batch is not None:
            return _fixed_batch_saved_model(loaded, batch)
        return tf.lite.TFLiteConverter.from_saved_model(str(loaded.path), signature_keys=["serving_default"])
    fn = _keras_fn(loaded)
    if loaded.uses_keras3:
        import keras

        archive = keras.export.ExportArchive()
        archive.track(loaded.model)
        archive.add_endpoint(name="serving_default", fn=fn, input_signature=_tensor_specs(loaded, batch))
        archive.write_out(str(workdir / "saved_model"), verbose=False)
        return tf.lite.TFLiteConverter.from_saved_model(str(workdir / "saved_model"),
                                                        signature_keys=["serving_default"])
    concrete = tf.function(fn, input_signature=_tensor_specs(loaded, batch)).get_concrete_function()
    return tf.lite.TFLiteConverter.from_concrete_functions([concrete], loaded.model)


class Representative:
    """The representative dataset TensorFlow's converter takes (called: one ``{signature name: array}`` per
    sample, read lazily); :meth:`take` gives the samples at some positions, reading those alone."""

    def __init__(self, loaded: LoadedModel, data: Dataset) -> None:
        self.loaded, self.data = loaded, data
        self.dtypes = {spec.name: spec.dtype for spec in loaded.inputs}
        self.whole = {spec.name: spec.shape for spec in loaded.inputs if spec.sample_axis is None}

    def __len__(self) -> int:
        return len(self.data)

    def __call__(self) -> Iterator[dict]:
        for sample in self.data.samples(self.dtypes):  # an input without a sample axis takes one sample as the tensor
            yield {signature_name(k): v.reshape(self.whole[k]) if k in self.whole else v for k, v in sample.items()}

    def take(self, positions) -> Representative:
        return Representative(self.loaded, self.data.take(positions))


class _Ordered:
    """The calibration samples as arrays in the model's input-tensor order (called: all, lazily); :meth:`take`
    reads only the samples at ``positions`` (ascending)."""

    def __init__(self, rep: Representative, order: list[str]) -> None:
        self.rep, self.order = rep, order

    def __len__(self) -> int:
        return len(self.rep)

    def __call__(self) -> Iterator[list]:
        return ([s[n] for n in self.order] if self.order else list(s.values()) for s in self.rep())

    def take(self, positions) -> list[list]:
        return list(_Ordered(self.rep.take(positions), self.order)()) if len(positions) else []


def _configure(conv, mode: QuantizeMode, rep: Representative | None, per_tensor: bool, verbose: bool = False,
               keep: Callable | None = None) -> None:
    import tensorflow as tf

    if mode is QuantizeMode.NONE:
        return
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode is QuantizeMode.FLOAT16:
        conv.target_spec.supported_types = [tf.float16]
    elif mode in (QuantizeMode.INT8, QuantizeMode.INT8_FLOAT_IO, QuantizeMode.UINT8):
        conv.representative_dataset = rep
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if mode is not QuantizeMode.INT8_FLOAT_IO:
            conv.inference_input_type = tf.uint8 if mode is QuantizeMode.UINT8 else tf.int8
            conv.inference_output_type = conv.inference_input_type
    elif mode is QuantizeMode.INT16X8:
        conv.representative_dataset = rep
        conv.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    if per_tensor:
        conv._experimental_disable_per_channel = True
    if rep is not None and mode.needs_calibration:
        conv._quantize = _isolated_quantize(conv, rep, mode, verbose, keep)


def _isolated_quantize(conv, rep: Representative, mode: QuantizeMode, verbose: bool, keep: Callable | None) -> Callable:
    """TFLiteConverter._quantize (TF 2.19) with the calibration run in a child process: the same
    calibrate-then-quantize steps, the same arguments. ``keep`` receives the calibrated model
    (:class:`~edgepack.converter.requantize.Calibrated`) so it can be quantized again, differently."""

    def quantize(result, input_type, output_type, activations_type, bias_type, allow_float,
                 enable_variable_quantization, debug_options):
        import tensorflow as tf
        from tensorflow.lite.python.convert import mlir_quantize

        from edgepack.converter import isolate
        from edgepack.converter.copy_scales import requantize_copies

        order = _input_order(result)
        samples = _Ordered(rep, order)

        per_channel_off = bool(conv._experimental_disable_per_channel)
        dense_off = bool(conv._experimental_disable_per_channel_quantization_for_dense_layers)
        if not conv.experimental_new_quantizer or activations_type == tf.int16:  # the old quantizer, in the child
            if activations_type == tf.int16:  # TFLite has no int16 HARD_SWISH / RELU_0_TO_1: other ops instead
                result = _unfused_for_int16(result)
            q = {"input": _dtype_num(input_type), "output": _dtype_num(output_type), "allow_float": allow_float,
                 "activations": _dtype_num(activations_type), "bias": _dtype_num(bias_type),
                 "disable_per_channel": per_channel_off, "disable_per_channel_dense": dense_off}
            return requantize_copies(bytes(_crash_hint(result, mode, lambda: isolate.calibrate(
                result, samples(), quantize=q, verbose=verbose, stage=f"{mode} calibration"))))[0]
        start = time.perf_counter()
        out, repaired, how = _crash_hint(result, mode, lambda: _calibrated(bytes(result), samples, mode, verbose))
        how = {**how, "seconds": round(time.perf_counter() - start, 3)}
        log.info("calibration: %s", how)
        if keep is not None:
            from edgepack.converter.requantize import Calibrated

            cal = Calibrated(bytes(out), input_type=input_type, output_type=output_type,
                             disable_per_channel=per_channel_off, disable_per_channel_dense=dense_off,
                             enable_variable_quantization=enable_variable_quantization,
                             debug_options=debug_options.SerializeToString(), samples=samples, repaired=repaired,
                             calibration=how)
            keep(cal)
            if {input_type, output_type} <= {tf.int8, tf.float32}:
                # the same quantizer call, through the kept model: its result is remembered, and the ranges
                # stage's first trial (this quantization) is not computed again
                return cal.quantize()
        # byte-copying ops the quantizer gave another grid than their input's: a requantize after them
        return requantize_copies(bytes(mlir_quantize(
            out, per_channel_off, input_data_type=input_type, output_data_type=output_type,
            enable_variable_quantization=enable_variable_quantization,
            disable_per_channel_for_dense_layers=dense_off,
            debug_options_str=debug_options.SerializeToString())))[0]

    return quantize


def _unfused_for_int16(model) -> bytes:
    from edgepack.converter.unfuse import unfuse_for_int16

    out, counts = unfuse_for_int16(bytes(model))
    if counts:
        log.info("int16x8: written as ops with int16 kernels (TFLite has none for these): %s", counts)
    return out


def _crash_hint(model, mode: QuantizeMode, run: Callable):
    """``run()``; a native crash in the child gets the hint naming the graph's risky ops."""
    from edgepack.converter import isolate

    try:
        return run()
    except isolate.NativeCrash as crash:
        from edgepack.tflite_model import read_tflite

        raise isolate.NativeCrash(crash.message, signal_name=crash.signal_name,
                                  hint=isolate.crash_hint(read_tflite(bytes(model)).op_counts, mode.value)) from None


def _calibrated(model: bytes, samples: Callable, mode: QuantizeMode, verbose: bool) -> tuple[bytes, dict, dict]:
    """The float model with every activation's min/max recorded, the ranges repaired after
    TensorFlow's calibrator (``{}`` when it was not used), and how the ranges were recorded. One pass
    over the samples with every tensor in its own buffer (:mod:`~edgepack.converter.minmax`) where the
    graph allows; else TensorFlow's calibrator, then the range check (a second pass, only when some
    ranges look too wide)."""
    from edgepack.converter import isolate
    from edgepack.converter.minmax import calibration_tensors, derived_tensors, with_calibration, with_derived

    tensors = calibration_tensors(model)
    if tensors is not None:
        derived = derived_tensors(model, tensors)  # ranges that follow from others': not read in the pass
        ranges = isolate.observe(model, samples(), [t for t in tensors if t not in derived], verbose=verbose,
                                 stage=f"{mode} calibration")
        ranges = with_derived(ranges, derived)
        return with_calibration(model, ranges), {}, {"method": "one pass", "tensors": len(ranges),
                                                     "derived": len(derived)}
    out = isolate.calibrate(model, samples(), verbose=verbose, stage=f"{mode} calibration")
    fixed, repaired = _repair(bytes(out), samples, verbose)
    return fixed, repaired, {"method": "tensorflow calibrator, then the range check", "repaired": len(repaired)}


def _repair(model: bytes, samples: Callable, verbose: bool) -> tuple[bytes, dict]:
    """The calibrated model with ranges the calibrator recorded too wide repaired
    (:func:`~edgepack.converter.requantize.repair_ranges`); if the check itself fails, the model as
    calibrated, with a warning."""
    from edgepack.converter.requantize import repair_ranges

    try:
        fixed, repaired = repair_ranges(model, samples, verbose=verbose)
    except ConversionError as err:
        log.warning("calibration range check skipped: %s", err.message)
        return model, {}
    if repaired:
        log.info("calibration: %d activation range(s) recorded wider than their values were, repaired", len(repaired))
    return fixed, repaired


def _dtype_num(dtype) -> int:
    import numpy as np

    return int(np.dtype(dtype.as_numpy_dtype()).num)


def _input_order(model: bytes) -> list[str]:
    """The signature's input names in input-tensor order: how TF's calibrator orders a dict sample."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=bytes(model))
    sigs = interp.get_signature_list()
    if not sigs:
        return []
    details = interp.get_signature_runner(next(iter(sigs))).get_input_details()
    return [name for name, _ in sorted(details.items(), key=lambda item: item[1]["index"])]


def _converter_error(err: Exception, captured: str) -> ConversionError:
    text = f"{err}\n{captured}"
    lines = [ln.strip() for ln in text.splitlines() if "error:" in ln.lower()]
    ops = sorted(set(re.findall(r"'(tf\.[A-Za-z0-9_]+|tfl\.[A-Za-z0-9_]+)' op", text)))
    detail = lines[0].split("error:", 1)[-1].strip() if lines else (str(err).strip().splitlines() or ["?"])[0]
    msg = f"TFLite converter failed: {detail[:300]}"
    if ops:
        msg += f" (ops involved: {', '.join(ops[:10])})"
    return ConversionError(msg, hint="try another --quantize mode, or run with -v for the converter log")


def convert_to_tflite(loaded: LoadedModel, mode: QuantizeMode, calibration: Dataset | None, *,
                      per_tensor: bool = False, verbose: bool = False, batch: int | None = None,
                      keep_calibrated: Callable | None = None) -> bytes:
    """Run TensorFlow's converter; returns the flatbuffer. ``batch`` fixes the batch dimension
    (microcontroller runtimes plan memory for static shapes); None keeps it dynamic.
    ``keep_calibrated`` (int8 modes) receives the calibrated float model, to quantize it again."""
    import tensorflow as tf  # noqa: F401  (imported before capture so import noise is captured too)

    with tempfile.TemporaryDirectory(prefix="edgepack-convert-") as tmp, \
            capture_native_output(not verbose) as cap:
        try:
            conv = _make_converter(loaded, Path(tmp), batch)
            rep = Representative(loaded, calibration) if calibration is not None else None
            _configure(conv, mode, rep, per_tensor, verbose, keep_calibrated)
            return bytes(conv.convert())
        except (KeyboardInterrupt, ConversionError):
            raise
        except Exception as err:  # the converter raises ConverterError, ValueError, RuntimeError...
            raise_from = err
        # outside the capture, so the captured text is complete
    raise _converter_error(raise_from, cap.text) from raise_from
