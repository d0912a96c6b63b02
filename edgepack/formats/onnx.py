"""Loading ONNX models: safe external data, I/O in the model's order, onnxruntime as the reference.

Tensors stored outside the ``.onnx`` file are read only from inside the model's folder: no
absolute paths, no ``..``, no symlinks. ``LoadedModel.model`` is an :class:`OnnxModel`, a callable
that runs a batch (``{input name: array}``, ONNX layout) through onnxruntime and returns the
outputs in the ONNX output order.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.calibration import InputSpec
from edgepack.errors import ModelLoadError, UsageError
from edgepack.formats import onnx_limits
from edgepack.formats.base import LoadedModel, ModelFormat
from edgepack.formats.onnx_external import load_external_data

log = logging.getLogger(__name__)

Dim = int | str | None  # fixed size, symbolic name, or unknown


@dataclass(frozen=True)
class OnnxTensor:
    """One graph input or output: ONNX name, full shape (batch included) and numpy dtype."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str


@dataclass
class OnnxModel:
    """An ONNX model in memory (external data loaded) and a lazily created onnxruntime session."""

    proto: Any = field(repr=False)
    path: Path
    inputs: list[OnnxTensor]
    outputs: list[OnnxTensor]
    shape_overrides: dict[str, tuple[int, ...]] = field(default_factory=dict)
    # --input-value: inputs frozen to constants; they leave ``inputs`` and every run feeds them
    fixed_values: dict[str, np.ndarray] = field(default_factory=dict)
    _session: Any = field(default=None, repr=False)

    def conversion_shapes(self) -> dict[str, tuple[int, ...]]:
        """Static input shapes for conversion: --input-shape wins, a dynamic batch becomes 1, a
        named dimension takes the size it has in another input (a recurrent ``state`` of shape
        [2, batch, 128] follows ``input``'s batch), any other dynamic dimension is an error naming
        the input."""
        named = self._named_sizes()
        out: dict[str, tuple[int, ...]] = {}
        for t in self.inputs:
            if t.name in self.shape_overrides:
                out[t.name] = self.shape_overrides[t.name]
                continue
            dims = [named.get(d, d) if isinstance(d, str) else d for d in t.shape]
            if dims and not isinstance(dims[0], int):
                log.info("input %r: dynamic batch dimension %r converted as 1", t.name, dims[0])
                dims[0] = 1
            bad = [(i, d) for i, d in enumerate(dims) if not isinstance(d, int)]
            if bad:
                i, d = bad[0]
                example = "x".join(str(x) if isinstance(x, int) else "N" for x in dims)
                raise UsageError(f"ONNX input {t.name!r} has a dynamic dimension {d or '?'!r} at axis {i} "
                                 f"(shape {format_shape(t.shape)})",
                                 hint=f"fix it with --input-shape {t.name}:{example}")
            out[t.name] = tuple(int(x) for x in dims)
            onnx_limits.check_input_size(t.name, out[t.name], usage=t.name in self.shape_overrides)
        return out

    def _named_sizes(self) -> dict[str, int]:
        """Sizes of named dynamic dimensions, read from --input-shape, else the batch axes set to 1."""
        sizes: dict[str, int] = {}
        for t in self.inputs:
            for d, size in zip(t.shape, self.shape_overrides.get(t.name, ())):
                if isinstance(d, str) and d:
                    sizes.setdefault(d, size)
        for t in self.inputs:
            if t.shape and isinstance(t.shape[0], str) and t.shape[0] and t.name not in self.shape_overrides:
                sizes.setdefault(t.shape[0], 1)
        return sizes

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        sess = self.session()
        fixed = self.fixed_values  # frozen inputs (--input-value): fed whole to every run
        leading = {np.shape(v)[0] if np.ndim(v) else None for v in feeds.values()}
        n = next(iter(leading))
        shapes = {t.name: t.shape for t in self.inputs}
        sizes = {shapes[k][0] for k in feeds if k in shapes and shapes[k] and isinstance(shapes[k][0], int)}
        step = min(sizes) if sizes else n
        # one call when there is no common batch axis to slice (a scalar input, a [2, batch, 128] state)
        if len(leading) != 1 or n is None or step == n or step < 1:
            return [np.asarray(o) for o in sess.run(None, {**{k: np.asarray(v) for k, v in feeds.items()}, **fixed})]
        # A model exported with a fixed batch (often 1) gets the batch in slices of that size.
        parts = [sess.run(None, {**{k: np.asarray(v[i:i + step]) for k, v in feeds.items()}, **fixed})
                 for i in range(0, n, step)]
        return [np.concatenate([p[j] for p in parts], axis=0) for j in range(len(self.outputs))]

    def session(self):
        if self._session is None:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            opts.intra_op_num_threads = 2
            try:
                self._session = ort.InferenceSession(self.proto.SerializeToString(), opts,
                                                     providers=["CPUExecutionProvider"])
            except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph/NotImplemented types
                first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                raise ModelLoadError(f"{self.path}: onnxruntime cannot run the model: {first[:300]}") from err
        return self._session


def format_shape(shape: Sequence[Dim]) -> str:
    return "x".join(str(d) if isinstance(d, int) else (d or "?") for d in shape) or "scalar"


def _tensor_info(vi) -> OnnxTensor:
    from onnx import helper

    tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
    if tt is None:
        kind = vi.type.WhichOneof("value") or "unknown"
        raise ModelLoadError(f"ONNX graph input/output {vi.name!r} is a {kind.replace('_type', '')}, not a tensor",
                             hint="edgepack converts models with tensor inputs and outputs only")
    dims: list[Dim] = []
    for d in tt.shape.dim if tt.HasField("shape") else []:
        dims.append(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None))
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
    return OnnxTensor(vi.name, tuple(dims), dtype)


def _lower_ir_version(proto, path: Path) -> None:
    """Lower (never raise) the IR version to the minimum the model's opsets need.

    The stack's own onnx 1.19 writes IR version 12 by default, which its onnxruntime (IR <= 11) and
    onnx-simplifier's checker (IR <= 10) refuse, although nothing in such a model needs it.
    """
    from onnx import helper

    try:
        needed = helper.find_min_ir_version_for(list(proto.opset_import), ignore_unknown=True)
    except (ValueError, TypeError):  # an opset this onnx does not know: leave the model as it is
        return
    if proto.ir_version > needed:
        log.debug("%s: IR version %d lowered to %d, the minimum for its opsets", path, proto.ir_version, needed)
        proto.ir_version = needed


def load_onnx(path: Path, sha256: str) -> LoadedModel:
    """Read ``path`` (checking opsets, nesting and external data first); I/O in the ONNX model's order."""
    import onnx

    onnx_limits.check_file_size(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf DecodeError and friends
        raise ModelLoadError(f"{path}: not a readable ONNX model ({type(err).__name__}: {err})",
                             hint="re-export the model (torch.onnx.export)") from err
    onnx_limits.check_opsets(proto, path)
    onnx_limits.check_subgraph_depth(proto, path)
    load_external_data(proto, path.parent)
    _lower_ir_version(proto, path)
    init_names = {t.name for t in proto.graph.initializer}
    inputs = [_tensor_info(vi) for vi in proto.graph.input if vi.name not in init_names]
    for t in inputs:
        onnx_limits.check_input_size(t.name, t.shape, where=f"{path}: ")
    outputs = [_tensor_info(vi) for vi in proto.graph.output]
    if not inputs or not outputs:
        raise ModelLoadError(f"{path}: the ONNX graph has no {'inputs' if not inputs else 'outputs'}")
    model = OnnxModel(proto=proto, path=path, inputs=inputs, outputs=outputs)
    return LoadedModel(path, ModelFormat.ONNX, sha256, _input_specs(model), [t.name for t in outputs], model)


def _input_specs(model: OnnxModel) -> list[InputSpec]:
    specs = []
    for t in model.inputs:
        shape = model.shape_overrides.get(t.name, t.shape)
        specs.append(InputSpec(t.name, tuple(d if isinstance(d, int) else None for d in shape[1:]), t.dtype))
    return specs


# -- --input-shape --------------------------------------------------------------------------------
def with_input_shapes(loaded: LoadedModel, shapes: Mapping[str, Sequence[int]]) -> LoadedModel:
    """``loaded`` with dynamic input dimensions fixed; checks names, ranks and fixed sizes."""
    model: OnnxModel = loaded.model
    by_name = {t.name: t for t in model.inputs}
    fixed: dict[str, tuple[int, ...]] = {}
    for name, dims in shapes.items():
        t = by_name.get(name)
        if t is None:
            raise UsageError(f"--input-shape {name}: the ONNX model has no input {name!r}",
                             hint=f"inputs: {', '.join(by_name)}")
        dims = tuple(int(d) for d in dims)
        if len(dims) != len(t.shape) or any(isinstance(d, int) and d != g for d, g in zip(t.shape, dims)):
            raise UsageError(f"--input-shape {name}:{format_shape(dims)} does not fit the ONNX input's "
                             f"shape {format_shape(t.shape)}",
                             hint="give every axis, keeping the fixed sizes and choosing the dynamic ones")
        onnx_limits.check_input_size(name, dims, usage=True, where=f"--input-shape {name}: ")
        fixed[name] = dims
    new = replace(model, shape_overrides={**model.shape_overrides, **fixed}, _session=model._session)
    return replace(loaded, inputs=_input_specs(new), model=new)


# -- --input-value --------------------------------------------------------------------------------
def input_value(name: str, value: Any, dtype: str, shape: Sequence[Dim]) -> np.ndarray:
    """The constant for ``--input-value NAME=VALUE``: the input's dtype, and its shape when that is
    static (a scalar then fills it)."""
    try:
        arr = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as err:
        raise UsageError(f"--input-value {name}={value!r}: not a {dtype} value",
                         hint="give a number, or a JSON list for a tensor input") from err
    static = tuple(d if isinstance(d, int) else None for d in shape)
    if arr.ndim == 0 and static and None not in static:
        return np.full(static, arr, dtype=dtype)
    if arr.ndim != len(static) or any(d is not None and d != s for d, s in zip(static, arr.shape)):
        raise UsageError(f"--input-value {name}: a value of shape {format_shape(arr.shape)} for input {name!r} "
                         f"of shape {format_shape(shape)}", hint="give a scalar, or a JSON list of the input's shape")
    return arr


def with_input_values(loaded: LoadedModel, values: Mapping[str, Any]) -> LoadedModel:
    """``loaded`` with the named inputs frozen to constants: they leave the model's inputs, and
    onnxruntime is fed them on every run (the reference stays the original graph)."""
    model: OnnxModel = loaded.model
    by_name = {t.name: t for t in model.inputs}
    fixed = dict(model.fixed_values)
    for name, value in values.items():
        t = by_name.get(name)
        if t is None:
            raise UsageError(f"--input-value {name}: the ONNX model has no input {name!r}",
                             hint=f"inputs: {', '.join(by_name) or '(none left)'}")
        fixed[name] = input_value(name, value, t.dtype, model.shape_overrides.get(name, t.shape))
    new = replace(model, inputs=[t for t in model.inputs if t.name not in fixed], fixed_values=fixed)
    if not new.inputs:
        raise UsageError("--input-value froze every input of the ONNX model", hint="leave at least one input free")
    return replace(loaded, inputs=_input_specs(new), model=new)
