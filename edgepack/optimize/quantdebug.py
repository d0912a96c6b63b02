"""Where quantization error comes from, and better activation ranges.

- :func:`run_all_tensors` runs a ``.tflite`` on LiteRT keeping every intermediate tensor
  (``experimental_preserve_all_tensors``), dequantized: the calibrated float model gives the
  activations as calibration saw them, a quantized candidate what int8 made of them.
- :func:`range_choices` picks, per activation tensor, a clipping range other than the recorded
  min/max: the 0.01/99.99 percentiles, or the range whose int8 grid has the least mean squared
  error over the observed values (MSE-optimal clipping).
- :func:`local_errors` is QuantizationDebugger's per-layer figure: RMSE between the quantized and
  the float activation, in units of the quantized tensor's scale (how many quantization steps the
  error spans), per op output.
- :func:`plot_sensitivity` draws it along the graph, with the ops kept out of int8 marked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from edgepack._native import capture_native_output

MAX_VALUES = 200_000  # values kept per tensor for range statistics (a seeded subsample beyond that)
PERCENTILE = 99.99
CLIP_FRACTIONS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)


def _interpreter(model: bytes):
    import warnings

    from ai_edge_litert.interpreter import Interpreter

    with capture_native_output(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "intended for debugging purposes": that is the use here
        return Interpreter(model_content=bytes(model), num_threads=2, experimental_preserve_all_tensors=True)


def run_all_tensors(model: bytes, samples: Iterable[Sequence[np.ndarray]], names: Iterable[str], *,
                    keep: int | None = 4096) -> dict[str, list[np.ndarray]]:
    """Per named tensor, its dequantized values for each sample (arrays in input-tensor order, batch 1):
    at most ``keep`` values per sample, a subsample seeded by the sample's position and the tensor's
    size, so two models with the same tensor shapes give aligned values."""
    from edgepack.runtimes.litert import dequantize, quantize
    from edgepack.tflite_model import read_tflite

    info = read_tflite(model)
    interp = _interpreter(model)
    inputs = interp.get_input_details()
    wanted = set(names)
    details = [d for d in interp.get_tensor_details() if d["name"] in wanted]
    out: dict[str, list[np.ndarray]] = {d["name"]: [] for d in details}
    shaped = None
    picks: dict[tuple[int, int], np.ndarray] = {}
    for pos, arrays in enumerate(samples):
        shape = [tuple(np.shape(a)) for a in arrays]
        if shape != shaped:
            for d, a in zip(inputs, arrays):
                interp.resize_tensor_input(d["index"], list(np.shape(a)))
            with capture_native_output():
                interp.allocate_tensors()
            shaped = shape
        for d, a in zip(inputs, arrays):
            interp.set_tensor(d["index"], quantize(a, info.tensor(d["index"])))
        interp.invoke()
        for d in details:
            try:
                value = dequantize(np.array(interp.get_tensor(d["index"])), info.tensor(d["index"])).ravel()
            except ValueError:  # a tensor the interpreter does not keep
                continue
            if keep is not None and value.size > keep:
                key = (pos, value.size)
                if key not in picks:
                    picks[key] = np.random.default_rng(pos * 1_000_003 + value.size).choice(value.size, keep,
                                                                                            replace=False)
                value = value[picks[key]]
            out[d["name"]].append(value)
    return out


# -- ranges ------------------------------------------------------------------------------------------
def _grid_mse(v: np.ndarray, lo: float, hi: float, levels: int = 256) -> float:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo <= 0:
        return float(np.mean(v * v))
    scale = (hi - lo) / (levels - 1)
    q = np.clip(np.round((v - lo) / scale), 0, levels - 1) * scale + lo
    return float(np.mean((v - q) ** 2))


@dataclass(frozen=True)
class RangeChoice:
    tensor: str
    method: str  # "percentile" or "mse"
    recorded: tuple[float, float]
    range: tuple[float, float]
    mse_ratio: float  # int8 grid MSE with this range / with the recorded one (below 1: better)


def range_choices(values: Mapping[str, list[np.ndarray]], recorded: Mapping[str, tuple[float, float]],
                  method: str, seed: int = 0) -> list[RangeChoice]:
    """Per tensor, a clipped range by ``method`` (``percentile`` or ``mse``) where it gives a smaller
    int8 grid error than the recorded min/max on the observed values; tensors it does not improve
    keep min/max (not listed)."""
    rng = np.random.default_rng(seed)
    out = []
    for name, arrays in values.items():
        if name not in recorded or not arrays:
            continue
        v = np.concatenate([np.ravel(a) for a in arrays]).astype(np.float64)
        if v.size > MAX_VALUES:
            v = rng.choice(v, MAX_VALUES, replace=False)
        lo, hi = recorded[name]
        base = _grid_mse(v, lo, hi)
        if base == 0.0:
            continue
        if method == "percentile":
            cand = (float(min(np.percentile(v, 100 - PERCENTILE), 0.0)), float(max(np.percentile(v, PERCENTILE), 0.0)))
        else:
            best, cand = base, (lo, hi)
            for f in CLIP_FRACTIONS[1:]:
                for c in ((lo * f, hi * f), (lo, hi * f), (lo * f, hi)):
                    e = _grid_mse(v, *c)
                    if e < best:
                        best, cand = e, c
        err = _grid_mse(v, *cand)
        if err < base * 0.98 and cand != (lo, hi):
            out.append(RangeChoice(name, method, (lo, hi), (float(cand[0]), float(cand[1])), round(err / base, 4)))
    return out


# -- local error -------------------------------------------------------------------------------------
def local_errors(float_values: Mapping[str, list[np.ndarray]], quant_values: Mapping[str, list[np.ndarray]],
                 scales: Mapping[str, float]) -> dict[str, float]:
    """Per tensor: RMSE(quantized − float) / the quantized tensor's scale (QuantizationDebugger's
    ``scaled RMSE``); tensors without a scale (float in the candidate) get RMSE / the float range / 255."""
    out = {}
    for name, fl in float_values.items():
        qv = quant_values.get(name)
        if not qv or len(qv) != len(fl):
            continue
        f = np.concatenate([np.ravel(a) for a in fl]).astype(np.float64)
        q = np.concatenate([np.ravel(a) for a in qv]).astype(np.float64)
        if f.shape != q.shape:
            continue
        rmse = float(np.sqrt(np.mean((q - f) ** 2)))
        scale = scales.get(name) or ((float(f.max() - f.min()) / 255.0) or 1.0)
        out[name] = rmse / scale
    return out


def plot_sensitivity(rows: Sequence[Mapping], path_title: str) -> bytes:
    """A PNG: per-op scaled error along the graph (bars, each op named by type and short layer name),
    the whole-model gain of keeping the op in float where measured (dots), the ops the chosen
    candidate keeps out of int8 in red; drawn by :func:`edgepack.report.figures.sensitivity_png`,
    which also draws the report page's hoverable SVG of it."""
    from edgepack.report.figures import sensitivity_png

    return sensitivity_png(rows, path_title)
