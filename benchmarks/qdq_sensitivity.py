"""How much a peer's figures move when its int8 grids move a little: onnxruntime's QDQ model of a zoo model,
as made and with grids edited the way TFLite's int8 kernels need them, on the held-out inputs of
``benchmarks/ptq_peers.py`` (same calibration draws, same held-out inputs, same scores).

Per calibration draw (``--seeds``), onnxruntime ``quantize_static`` (``--method``, QDQ, int8 per-channel
symmetric weights, int8 activations; Entropy/Percentile calibrate in strides of ``--stride`` samples as
``ptq_peers.py --stride-histograms`` does), then four versions of that one model:

- ``as made``;
- ``sigmoid 1/256``: every Sigmoid output's QuantizeLinear/DequantizeLinear on TFLite's fixed LOGISTIC grid
  (scale 1/256, zero point -128: [0, 0.996] instead of the calibrated [0, ~1.0]; at most 0.4 % apart);
- ``concat grid``: every Concat input's quantize/dequantize pair on the Concat output's grid (TFLite's int8
  CONCATENATION takes its inputs on its output's scale and zero point; onnxruntime requantizes each input);
- ``both``.

A model whose figures swing by several dB between these is measured by one calibration draw's figure only up
to that swing: ddddocr's detector moves by -7.6 to +4.0 dB whole-tensor SQNR (2026-12-07, README).

    nice -n 10 python benchmarks/qdq_sensitivity.py --model ddddocr_common_det --seeds 0,1,2,3,4 --held 300
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np

VARIANTS = ("as made", "sigmoid 1/256", "concat grid", "both")


def sigmoid_on_tflite_grid(model) -> int:
    """Put every Sigmoid output's quantize/dequantize pair on scale 1/256, zero point -128; how many nodes."""
    import onnx.numpy_helper as nh

    outs = {n.output[0] for n in model.graph.node if n.op_type == "Sigmoid"}
    nodes = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
             and n.input[0].removesuffix("_QuantizeLinear_Output") in outs]
    names = {n.input[1] for n in nodes} | {n.input[2] for n in nodes}
    for init in model.graph.initializer:
        if init.name in names:
            a = nh.to_array(init)
            value = np.array(1 / 256 if a.dtype == np.float32 else -128).astype(a.dtype)
            init.CopyFrom(nh.from_array(value, init.name))
    return len(nodes)


def concat_inputs_on_output_grid(model) -> int:
    """Give each Concat input's quantize/dequantize pair the Concat output's scale and zero point; how many."""
    producer = {o: n for n in model.graph.node for o in n.output}
    moved = 0
    for node in model.graph.node:
        if node.op_type != "Concat":
            continue
        q_out = next((n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == node.output[0]),
                     None)
        if q_out is None:
            continue
        for i in node.input:
            dq = producer.get(i)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is None or q.op_type != "QuantizeLinear":
                continue
            for n in (q, dq):
                n.input[1], n.input[2] = q_out.input[1], q_out.input[2]
            moved += 1
    return moved


def edited(path: Path, variant: str) -> bytes:
    import onnx

    model = onnx.load(str(path))
    if variant in ("sigmoid 1/256", "both"):
        sigmoid_on_tflite_grid(model)
    if variant in ("concat grid", "both"):
        concat_inputs_on_output_grid(model)
    return model.SerializeToString()


def main() -> None:
    from benchmarks import ptq_peers as pp

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="ddddocr_common_det", choices=sorted(pp.MODELS))
    ap.add_argument("--seeds", default="0", type=lambda v: [int(s) for s in v.split(",")])
    ap.add_argument("--held", type=int, default=300)
    ap.add_argument("--method", default="Percentile", choices=("MinMax", "Entropy", "Percentile"))
    ap.add_argument("--stride", type=int, default=10, help="samples per histogram pass (Entropy, Percentile)")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "qdq_sensitivity",
                    help="keeps each draw's QDQ model: a later run reuses it")
    args = ap.parse_args()
    print("| draw | " + " | ".join(VARIANTS) + " |")
    print("|---|" + "---|" * len(VARIANTS))
    for seed in args.seeds:
        work = args.work / f"{args.model}_{args.method}_seed{seed}_held{args.held}"
        work.mkdir(parents=True, exist_ok=True)
        case = pp.zoo_case(args.model, work, held=args.held, seed=seed)
        if case is None:
            sys.exit(1)
        qdq = work / f"{case.name}_ort_{args.method}.onnx"
        if not qdq.exists():
            made, res, _ = pp.ort_peer(case, args.method, work, 6.0, args.stride, strided=args.method != "MinMax")
            if made is None:
                print(f"| {seed} | onnxruntime failed: {res.message} |")
                continue
        cells = []
        for variant in VARIANTS:
            outs = pp.run_onnx(edited(qdq, variant), case.held)
            outs = [o.reshape(r.shape) if o.size == r.size else o for o, r in zip(outs, case.refs)]
            s = pp.scores(case.metric, case.refs, outs)
            cells.append(f"{s['whole']:.2f} / {s['worst']:.2f} / {s['task']:.3f}")
        print(f"| {seed} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
