"""The TFLite converter call, for every quantize mode.

Every source is turned into something TensorFlow's converter reads with our own signature, so the
signature's input and output names are the source model's names:
Keras 3 models are exported with ``keras.export.ExportArchive``, tf_keras models go through a
concrete function, SavedModels are read directly.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from edgepack._native import capture_native_output
from edgepack.calibration import Dataset
from edgepack.converter.formats.base import LoadedModel, ModelFormat, call_keras, signature_name
from edgepack.errors import ConversionError
from edgepack.request import QuantizeMode

log = logging.getLogger(__name__)


def _tensor_specs(loaded: LoadedModel, batch: int | None = None):
    """Input signature; ``batch`` None keeps the batch dimension dynamic."""
    import tensorflow as tf

    return [tf.TensorSpec((batch, *spec.shape), tf.as_dtype(spec.dtype), name=signature_name(spec.name))
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


def representative_dataset(loaded: LoadedModel, data: Dataset) -> Callable[[], Iterator[dict]]:
    dtypes = {spec.name: spec.dtype for spec in loaded.inputs}

    def gen():
        for sample in data.samples(dtypes):
            yield {signature_name(k): v for k, v in sample.items()}

    return gen


def _configure(conv, mode: QuantizeMode, rep: Callable | None, per_tensor: bool) -> None:
    import tensorflow as tf

    if mode is QuantizeMode.NONE:
        return
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode is QuantizeMode.FLOAT16:
        conv.target_spec.supported_types = [tf.float16]
    elif mode in (QuantizeMode.INT8, QuantizeMode.INT8_FLOAT_IO):
        conv.representative_dataset = rep
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if mode is QuantizeMode.INT8:
            conv.inference_input_type = tf.int8
            conv.inference_output_type = tf.int8
    elif mode is QuantizeMode.INT16X8:
        conv.representative_dataset = rep
        conv.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    if per_tensor:
        conv._experimental_disable_per_channel = True


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
                      per_tensor: bool = False, verbose: bool = False, batch: int | None = None) -> bytes:
    """Run TensorFlow's converter; returns the flatbuffer. ``batch`` fixes the batch dimension
    (microcontroller runtimes plan memory for static shapes); None keeps it dynamic."""
    import tensorflow as tf  # noqa: F401  (imported before capture so import noise is captured too)

    with tempfile.TemporaryDirectory(prefix="edgepack-convert-") as tmp, \
            capture_native_output(not verbose) as cap:
        try:
            conv = _make_converter(loaded, Path(tmp), batch)
            rep = representative_dataset(loaded, calibration) if calibration is not None else None
            _configure(conv, mode, rep, per_tensor)
            return bytes(conv.convert())
        except (KeyboardInterrupt, ConversionError):
            raise
        except Exception as err:  # the converter raises ConverterError, ValueError, RuntimeError...
            raise_from = err
        # outside the capture, so the captured text is complete
    raise _converter_error(raise_from, cap.text) from raise_from
