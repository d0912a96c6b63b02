"""onnx2tf option sets tried when the default translation fails or disagrees with onnxruntime.

Users of the onnx2tf command line find these options by trial and error; edgepack tries a short,
ordered list after a failure (never on the success path, which stays one onnx2tf run) and records
the set it kept in the manifest's convert stage. ``--onnx2tf-option KEY=VALUE`` (API:
``onnx2tf_options={...}``) forces a set and turns the automatic list off.

Every entry names the models it was added for; an entry that fixes nothing should go.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edgepack.errors import OptionError, UsageError

log = logging.getLogger(__name__)

# Options edgepack itself sets or that would write files / go online: not for users to override.
RESERVED = frozenset({
    "input_onnx_file_path", "onnx_graph", "output_folder_path", "disable_model_save", "not_use_onnxsim",
    "not_use_opname_auto_generate", "non_verbose", "verbosity", "output_signaturedefs", "output_h5",
    "output_keras_v3", "output_tfv1_pb", "output_weights", "output_dynamic_range_quantized_tflite",
    "output_integer_quantized_tflite", "copy_onnx_input_output_names_to_tflite", "custom_input_op_name_np_data_path",
    "quant_norm_mean", "quant_norm_std", "quant_type", "input_quant_dtype", "output_quant_dtype",
    "param_replacement_file", "auto_generate_json", "auto_generate_json_on_error", "enable_auto_split_model",
    "onnxruntime_output_memmap_dir", "tf_input_cache"})

@dataclass(frozen=True)
class OptionSet:
    """onnx2tf options; ``ops``: tried only on graphs that use one of these op types (lower case),
    so that a failure unrelated to them costs no extra onnx2tf run."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    ops: frozenset[str] | None = None
    after_crash: bool = False  # tried only after TensorFlow's calibration crashed (not after other failures)
    keep_input_layout: bool = False  # every input keeps its ONNX shape (names filled in per model)


PSEUDO_OPS = ["acos", "asin", "atan", "erf"]

# Tried in this order after the default (no options) fails or mismatches onnxruntime. Tried and
# left out for lack of a model they fix: disable_strict_mode, batch_size=1,
# disable_suppression_flextranspose. (State inputs of streaming models keep their layout on every
# set: translate._keep_state_layout.)
FALLBACKS: tuple[OptionSet, ...] = (
    # TFLite has no builtin for these ops ("'tf.Acos' op is neither a custom op nor a flex op"), and
    # onnx2tf's pseudo-operators rebuild them from builtins: node-suite test_acos, test_acos_example,
    # test_atan, test_atan_example, test_erf. (onnx2tf matches the names in lower case; ops that
    # already convert, such as GeLU or PReLU, are left alone.)
    OptionSet("pseudo_operators", {"replace_to_pseudo_operators": PSEUDO_OPS}, frozenset(PSEUDO_OPS)),
    # TensorFlow's int8 calibration dies (SIGSEGV) inside the WHILE loop that a Keras LSTM becomes;
    # onnx2tf can unroll recurrent layers over the (static) sequence length, leaving no WHILE: zoo
    # ddddocr_common (CNN + bidirectional LSTM, input 1x1x64x256) crashed in int8 in both edgepack
    # and onnx2tf -oiqt, and calibrates with this set (top-1 agreement per time step 97.7%).
    # Float modes try it only after such a crash (unrolling grows the graph with the sequence length);
    # calibrated modes try it first (``candidates``): every ONNX LSTM this project met (the tiny
    # bidirectional one of the tests, ddddocr's recognizer) crashed TensorFlow's calibration as a WHILE
    # loop, and translating the loop first cost the recognizer 87 s before the crash.
    OptionSet("rnn_unroll", {"enable_rnn_unroll": True}, frozenset({"lstm", "gru", "rnn"}), after_crash=True),
    # onnx2tf reads every 3-D to 5-D input as channels-first and transposes it to channels-last; for
    # a tensor that is not an image (a [2, 2, 2] pair concatenated on axis 1, a [3, 5, 4] mask and'ed
    # with a [5] one, LayerNormalization's bodies over axis 1) the ops after it then work on the wrong
    # axes: wrong values or "Dimensions must be equal". Every input kept in its ONNX shape fixes
    # node-suite test_concat_3d_axis_1, test_and_bcast3v1d, test_layer_normalization_4d_axis1_expanded,
    # test_gridsample_bilinear.
    OptionSet("keep_input_layout", keep_input_layout=True),
)


def check_known(options: Mapping[str, Any]) -> None:
    """Every key is an onnx2tf.convert() keyword (checked when onnx2tf is imported anyway)."""
    import inspect

    import onnx2tf

    known = set(inspect.signature(onnx2tf.convert).parameters) - RESERVED
    for key in options:
        if key in RESERVED:
            raise UsageError(f"--onnx2tf-option {key}: edgepack sets this onnx2tf option itself",
                             hint="leave it out; see docs for the options that change the translation")
        if key not in known:
            raise OptionError("--onnx2tf-option", key, hint=f"not an onnx2tf.convert() option; "
                              f"e.g. {', '.join(sorted(known)[:6])}, ...")


def kept_inputs(options: Mapping[str, Any]) -> set[str]:
    """Inputs whose ONNX layout onnx2tf keeps under ``options`` (no channels-last transpose)."""
    kept: set[str] = set()
    for key in ("keep_shape_absolutely_input_names", "keep_ncw_or_nchw_or_ncdhw_input_names"):
        kept.update(options.get(key) or ())
    return kept


def candidates(forced: Mapping[str, Any] | None, op_types: set[str], *, calibrated: bool = False) -> list[OptionSet]:
    """The option sets to try, in order: the forced set alone, or the default then the fallbacks
    that apply to a graph with ``op_types``. ``calibrated`` (an int8/int16x8 conversion): the sets
    meant for a calibration crash come first, before the default."""
    if forced:
        return [OptionSet("forced", dict(forced))]
    first = [c for c in _applicable(op_types) if c.after_crash] if calibrated else []
    return [*first, OptionSet("default"), *(c for c in _applicable(op_types) if not c.after_crash)]


def after_crash(op_types: set[str], tried: set[str]) -> list[OptionSet]:
    """The option sets worth trying once TensorFlow's calibration has crashed natively (not yet tried)."""
    return [c for c in _applicable(op_types) if c.after_crash and c.name not in tried]


def _applicable(op_types: set[str]) -> list[OptionSet]:
    lower = {op.lower() for op in op_types}
    return [c for c in FALLBACKS if c.ops is None or c.ops & lower]
