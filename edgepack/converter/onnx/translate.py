"""ONNX -> TFLite: onnx2tf builds the TensorFlow graph, TensorFlow's converter (``tflite.py``) does
every quantize mode with edgepack's calibration data.

onnx2tf is kept on a short leash:

- it runs in a temporary working directory that is removed afterwards;
- it never goes online: the sample images it would download for 3-channel 4-D inputs are written
  into that directory beforehand, and its download function is swapped for a local read;
- edgepack fixes input shapes and runs onnx-simplifier itself, through its Python API (onnx2tf
  would shell out to an ``onnxsim`` command, which an unactivated venv does not have on PATH);
- its console output is captured, and its ``sys.exit`` calls and exceptions become one
  :class:`ConversionError` naming the op types and nodes that failed (``onnx2tf_run.py``);
- when it fails, or its graph disagrees with onnxruntime, the option sets of
  ``onnx_fallbacks.py`` are tried in order, and the one kept is recorded in the manifest.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgepack._native import capture_native_output
from edgepack.calibration import Dataset, InputSpec, layout
from edgepack.converter.isolate import NativeCrash
from edgepack.converter.onnx import fallbacks
from edgepack.converter.onnx.iomap import IoMap, map_io

# SAMPLE_FILE and write_sample_images are re-exported: benchmarks and tests use them from here
from edgepack.converter.onnx.onnx2tf_run import (  # noqa: F401
    SAMPLE_FILE,
    TranslationTimeout,
    ops_message,
    run_onnx2tf,
    write_sample_images,
)
from edgepack.converter.onnx.prepare import run_proto

# the graph stage's functions, used from here by the pipeline and the tests
from edgepack.converter.onnx.ready import (  # noqa: F401
    conversion_shapes,
    emulates_rounding,
    expanded_copy,
    name_nodes,
    prepare,
    quantized_ops,
    refuse_unhandled_quantization,
)
from edgepack.errors import ConversionError
from edgepack.formats.detect import LoadedModel, ModelFormat
from edgepack.formats.onnx import OnnxModel
from edgepack.request import QuantizeMode

log = logging.getLogger(__name__)


@dataclass
class OnnxConversion:
    tflite: bytes
    inputs: list[IoMap]
    outputs: list[IoMap]
    detail: dict[str, Any] = field(default_factory=dict)


def probe_inputs(model: OnnxModel, shapes: dict[str, tuple[int, ...]],
                 calibration: Dataset | None = None) -> tuple[dict[str, np.ndarray], str]:
    """One batch for comparing onnx2tf's graph with onnxruntime: the first calibration sample when
    it is in the ONNX layout (real data exposes what random data hides), else seeded random data."""
    rng = np.random.default_rng(0)
    first = next(calibration.samples({t.name: t.dtype for t in model.inputs}), None) if calibration else None
    if first is not None and all(np.shape(first.get(t.name)) == shapes[t.name] for t in model.inputs):
        return {t.name: np.asarray(first[t.name], t.dtype) for t in model.inputs}, "calibration"
    feeds = {}
    for t in model.inputs:
        if np.dtype(t.dtype).kind == "f":
            feeds[t.name] = rng.random(shapes[t.name]).astype(t.dtype)
        elif t.dtype == "bool":
            feeds[t.name] = rng.random(shapes[t.name]) > 0.5
        else:  # ones, not zeros: an integer Div/Mod by zero kills the process (SIGFPE) inside onnxruntime
            feeds[t.name] = np.ones(shapes[t.name], dtype=t.dtype)
    return feeds, "random"


# -- the TensorFlow side ---------------------------------------------------------------------------
def save_signature(tf_model, inputs: list[IoMap], outputs: list[IoMap], path: Path) -> Path:
    """A SavedModel whose serving signature uses the ONNX names, static shapes, ONNX order."""
    import tensorflow as tf

    from edgepack.converter.tflite import signature_name

    specs = [tf.TensorSpec(m.tflite_shape, tf.as_dtype(m.dtype), name=signature_name(m.name)) for m in inputs]
    out_names = [signature_name(m.name) for m in outputs]

    def serve(*args):
        out = tf_model(list(args) if len(args) > 1 else args[0], training=False)
        outs = out if isinstance(out, (list, tuple)) else [out]
        # state outputs go back to the ONNX layout, the layout the next frame's state input takes
        outs = [tf.transpose(o, layout.inverse(m.restore)) if m.restore else o for o, m in zip(outs, outputs)]
        return dict(zip(out_names, outs))

    concrete = tf.function(serve, input_signature=specs).get_concrete_function()
    # The module tracks exactly the variables the function captures, not the Keras model: saving a
    # Keras model makes tf_keras serialize every layer's config and metadata (60% of DenseNet-121's
    # conversion time), none of which the TFLite converter reads. Tracking the captured variables
    # also covers those some onnx2tf layers never assign to an attribute (grouped and depthwise
    # convolutions of paddle2onnx exports: "untracked resource p2o.Conv.3/kernel").
    module = tf.Module()
    module.captured = list(concrete.variables)
    tf.saved_model.save(module, str(path), signatures={"serving_default": concrete})
    return path


def calibration_for_tflite(calibration: Dataset, loaded: LoadedModel, inputs: list[IoMap]) -> Dataset:
    """Calibration samples in the TFLite layout, whichever layout they were given in."""
    specs = tflite_specs(loaded, inputs)
    perms = {m.name: m.perm for m in inputs}
    _, tflite = layout.to_layouts(calibration, loaded.inputs, {s.name: s.shape for s in specs}, perms)
    tflite.check(specs)
    return tflite


def tflite_specs(loaded: LoadedModel, inputs: list[IoMap]) -> list[InputSpec]:
    """The TFLite model's inputs as calibration specs (an input without a sample axis keeps its whole shape)."""
    out = []
    for s, m in zip(loaded.inputs, inputs):
        whole = s.sample_axis is None
        out.append(InputSpec(m.name, tuple(m.tflite_shape if whole else m.tflite_shape[1:]), s.dtype,
                             None if whole else 0))
    return out


# Relative difference (to the output's magnitude) from onnxruntime beyond which a translation is
# wrong, not rounded differently: the candidate fails and the next option set is tried.
MISMATCH = 1e-2
MISMATCH_ROUNDED = 0.1


def convert_onnx(loaded: LoadedModel, mode: QuantizeMode, calibration: Dataset | None, *,
                 per_tensor: bool = False, verbose: bool = False, batch: int | None = None,
                 onnx2tf_options: dict[str, Any] | None = None, keep_calibrated: Any = None,
                 prepared: tuple | None = None, state_pairs: dict[str, str] | None = None) -> OnnxConversion:
    """onnx2tf, then TensorFlow's converter; everything onnx2tf writes stays in a temp dir.
    ``batch`` (a target's static batch) replaces the inputs' batch size. When onnx2tf or the
    converter fails, or onnx2tf's graph disagrees with onnxruntime, the option sets of
    :mod:`onnx_fallbacks` are tried in order; ``onnx2tf_options`` forces one set instead.
    ``prepared``: what :func:`prepare` returned for the same shapes (the pipeline's graph stage).
    ``state_pairs`` (input -> output): recurrent state, kept in the ONNX layout on both ends."""
    model: OnnxModel = loaded.model
    if onnx2tf_options:
        fallbacks.check_known(onnx2tf_options)
    shapes = conversion_shapes(model, batch)
    with tempfile.TemporaryDirectory(prefix="edgepack-onnx2tf-") as tmp:
        work = Path(tmp)
        proto, names, record = prepared if prepared is not None else prepare(
            model, shapes, emulate_rounding=emulates_rounding(mode))
        feeds, probe_source = probe_inputs(model, shapes, calibration)
        # a dequantized graph, or one rewritten into integer forms, is checked against its own float graph
        refs = _probe_references(proto, model, feeds, verbose, record.dequantized.changed or bool(record.integer_forms))
        # Integer inputs are probed with ones (indices, lengths, flags), which can send a correct graph
        # down paths real data never takes (node-suite MaxUnpool): a mismatch then only warns.
        strict = probe_source == "calibration" or all(np.dtype(t.dtype).kind == "f" for t in model.inputs)
        # a graph that rounds activations to 8 bits at run time (emulated dynamic quantization) turns
        # an ulp of difference into a rounding step now and then: its outputs move by a few steps
        tolerance = (MISMATCH_ROUNDED if record.dequantized.rounding_emulated else MISMATCH) if strict else None

        def translate(graph, node_names: dict[str, str]) -> tuple:
            onnx_path = work / "model.onnx"
            _save_onnx(graph, onnx_path)
            return _try_option_sets(
                loaded, work, onnx_path, node_names, shapes, feeds, refs, mode, calibration, onnx2tf_options,
                per_tensor=per_tensor, verbose=verbose, tolerance=tolerance, keep=keep_calibrated,
                state_pairs=state_pairs, source_ranges=(graph, record.dequantized.ranges),
                weight_grids=_grids(record.dequantized.grids, mode))

        result, cand, options, failures = _translate_or_expand(translate, proto, names, record)
    probe = result.detail["probe_max_rel_error"]
    if probe is not None and probe > 1e-3:
        log.warning("onnx2tf's TensorFlow graph differs from onnxruntime by %.3g (relative) on a %s input; "
                    "check the bundle with 'edgepack validate --reference'", probe, probe_source)
    result.detail.update({"onnx_nodes": len(model.proto.graph.node), "simplified_nodes": len(proto.graph.node),
                          "graph": record.to_dict(),
                          "probe_input": probe_source, "onnx2tf_option_set": cand.name, "onnx2tf_options": options,
                          "onnx2tf_failed_sets": [f"{name}: {err.message[:200]}" for name, err in failures]})
    return result


def _try_option_sets(loaded: LoadedModel, work: Path, onnx_path: Path, names: dict[str, str],
                     shapes: dict[str, tuple[int, ...]], feeds: dict[str, np.ndarray], refs: list[np.ndarray] | None,
                     mode: QuantizeMode, calibration: Dataset | None, onnx2tf_options: dict[str, Any] | None, *,
                     per_tensor: bool, verbose: bool, tolerance: float | None, keep: Any,
                     state_pairs: dict[str, str] | None,
                     source_ranges: tuple, weight_grids: Any = None) -> tuple[OnnxConversion, Any, dict[str, Any], list]:
    """The onnx2tf option sets in order (or the forced one) until one translates, matches onnxruntime
    and converts: ``(result, the set, its options, the sets that failed)``."""
    failures: list[tuple[str, ConversionError]] = []
    queue = fallbacks.candidates(onnx2tf_options, set(names.values()), calibrated=mode.needs_calibration)
    crash: NativeCrash | None = None
    while queue:
        cand = queue.pop(0)
        options = _keep_state_layout(dict(cand.options), state_pairs)
        if cand.keep_input_layout:
            options["keep_shape_absolutely_input_names"] = [t.name for t in loaded.model.inputs]
        try:
            result = _attempt(loaded, work, onnx_path, names, shapes, feeds, refs, options, mode, calibration,
                              per_tensor=per_tensor, verbose=verbose, tolerance=tolerance, keep=keep,
                              state_outputs=set((state_pairs or {}).values()), source_ranges=source_ranges,
                              weight_grids=weight_grids)
        except NativeCrash as err:
            # a crash in calibration is not a translation error: only sets meant for it are tried,
            # and if none helps the user gets the crash (its hint says what to try)
            log.info("option set %r: TensorFlow crashed (%s)", cand.name, err.message)
            tried = {name for name, _ in failures} | {cand.name}
            crash = crash or err
            queue = [] if onnx2tf_options else fallbacks.after_crash(set(names.values()), tried)
            failures.append((cand.name, err))
            continue
        except TranslationTimeout:
            raise  # another option set would take as long again
        except ConversionError as err:
            log.info("onnx2tf option set %r failed: %s", cand.name, err.message)
            failures.append((cand.name, err))
            continue
        break
    else:
        raise crash if crash is not None else _all_failed(failures)
    return result, cand, options, failures


def _translate_or_expand(translate, proto, names: dict[str, str], record) -> tuple:
    """``translate`` on the prepared graph; when every option set fails, once more on the graph with
    its ONNX function ops expanded into their bodies (onnx2tf fails on LayerNormalization over axis 0
    or on Clip without bounds, not on the basic ops these are defined with)."""
    try:
        return translate(proto, names)
    except (TranslationTimeout, NativeCrash):
        raise  # an expanded graph would take as long, or crash the same calibration
    except ConversionError as err:
        first = err
    expanded = expanded_copy(proto)
    if expanded is None:
        raise first
    log.info("translation failed (%s); retrying with %d ONNX function ops expanded", first.message, expanded[2])
    try:
        result, cand, options, failures = translate(expanded[0], expanded[1])
    except ConversionError:
        raise first from None  # the error of the graph as the user exported it
    record.expanded_functions += expanded[2]
    return result, cand, options, [("functions as ops", first), *failures]


def _probe_references(proto, model: OnnxModel, feeds: dict[str, np.ndarray], verbose: bool,
                      dequantized: bool) -> list[np.ndarray] | None:
    """onnxruntime's outputs on the probe inputs, or None when it rejects them. A dequantized model is
    checked against its float graph: the original's run-time activation rounding is what dequantizing
    removes."""
    try:  # onnxruntime logs a failing kernel natively: captured, it is the exception that counts
        with capture_native_output(not verbose):
            return run_proto(proto, feeds) if dequantized else model(feeds)
    except Exception as exc:  # onnxruntime may reject random data (e.g. out-of-range indices)
        log.info("onnxruntime probe skipped: %s", (str(exc).strip().splitlines() or [""])[0][:300])
        return None


def _attempt(loaded: LoadedModel, work: Path, onnx_path: Path, names: dict[str, str],
             shapes: dict[str, tuple[int, ...]], feeds: dict[str, np.ndarray], refs: list[np.ndarray] | None,
             options: dict[str, Any], mode: QuantizeMode, calibration: Dataset | None, *,
             per_tensor: bool, verbose: bool, tolerance: float | None, keep: Any = None,
             state_outputs: set[str] | frozenset[str] = frozenset(),
             source_ranges: tuple | None = None, weight_grids: Any = None) -> OnnxConversion:
    """One onnx2tf option set: translate, compare with onnxruntime, convert. With a ``tolerance`` (a
    probe input that means something) a larger mismatch is a failure (ConversionError), so that the
    next option set is tried."""
    from edgepack.converter.tflite import convert_to_tflite

    model: OnnxModel = loaded.model
    tf_model = run_onnx2tf(onnx_path, work, names, verbose, options)
    try:
        inputs, outputs, probe = map_io(model, tf_model, shapes, feeds, refs, kept=fallbacks.kept_inputs(options),
                                        restore=state_outputs)
    except ConversionError:
        raise
    except Exception as err:  # TensorFlow running onnx2tf's graph on the probe input (shape errors...)
        first = (str(err).strip().splitlines() or [""])[0]
        raise ConversionError(f"onnx2tf's TensorFlow graph fails on a probe input: {type(err).__name__}: "
                              f"{first[:200]}") from err
    if tolerance is not None and probe is not None and probe > tolerance:
        raise ConversionError(f"onnx2tf's TensorFlow graph differs from onnxruntime by {probe:.3g} (relative to "
                              "the output's magnitude)", hint="try --onnx2tf-option KEY=VALUE (onnx2tf's options)")
    with capture_native_output(not verbose):
        saved = save_signature(tf_model, inputs, outputs, Path(tempfile.mkdtemp(prefix="saved_model_", dir=work)))
    tf_loaded = LoadedModel(saved, ModelFormat.SAVED_MODEL, loaded.sha256,
                            [replace(s, dtype=m.dtype) for s, m in zip(tflite_specs(loaded, inputs), inputs)],
                            [m.name for m in outputs], None)
    calib = calibration_for_tflite(calibration, loaded, inputs) if calibration is not None else None
    kept: list = []

    def keep_too(calibrated) -> None:
        if weight_grids:  # every later quantization of it (lstm-float, the budget's candidates) keeps them too
            calibrated = replace(calibrated, weight_grids=weight_grids)
        kept.append(calibrated)
        if keep is not None:
            keep(calibrated)

    tflite = convert_to_tflite(tf_loaded, mode, calib, per_tensor=per_tensor, verbose=verbose, keep_calibrated=keep_too)
    detail: dict[str, Any] = {"probe_max_rel_error": None if probe is None else round(probe, 8)}
    if source_ranges and source_ranges[1] and kept and mode.needs_calibration:
        from edgepack.converter.onnx.ranges import apply_source_ranges

        again, detail["source_ranges"] = apply_source_ranges(kept[-1], source_ranges[0], source_ranges[1],
                                                             feeds, inputs, mode)
        tflite = again or tflite
    if weight_grids:
        tflite, detail["source_weight_grids"] = weight_grids.apply(tflite)
    return OnnxConversion(tflite, inputs, outputs, detail)


def _grids(grids: list, mode: QuantizeMode) -> Any:
    """The source's weight grids (:mod:`edgepack.converter.weight_grids`) when ``mode`` has int8 weights."""
    if not grids or mode in (QuantizeMode.NONE, QuantizeMode.FLOAT16):
        return None
    from edgepack.converter.weight_grids import SourceGrids

    return SourceGrids(list(grids))


def _keep_state_layout(options: dict[str, Any], state_pairs: dict[str, str] | None) -> dict[str, Any]:
    """State inputs keep their ONNX shape through onnx2tf: a [2, 1, 128] LSTM state is not an NCW
    tensor, and transposing it breaks the LSTM's initial state."""
    if not state_pairs:
        return options
    kept = list(options.get("keep_shape_absolutely_input_names") or [])
    return {**options, "keep_shape_absolutely_input_names": kept + [n for n in state_pairs if n not in kept]}


def _all_failed(failures: list[tuple[str, ConversionError]]) -> ConversionError:
    """The default translation's error, saying that the fallbacks did not help either."""
    first = failures[0][1]
    if len(failures) == 1:
        return first
    tried = ", ".join(name for name, _ in failures[1:])
    return ConversionError(f"{first.message} (onnx2tf option sets also tried: {tried})", hint=first.hint)


def _save_onnx(proto, path: Path) -> None:
    import onnx

    # Large models keep their weights next to the graph (protobuf's 2 GB limit).
    large = proto.ByteSize() > (1 << 30)
    onnx.save(proto, str(path), save_as_external_data=large, location="weights.bin" if large else None)
