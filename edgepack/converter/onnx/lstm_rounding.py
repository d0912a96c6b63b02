"""onnxruntime's ``DynamicQuantizeLSTM`` as an unrolled float cell that rounds where the kernel rounds.

The contrib kernel (deep_cpu_lstm with 8-bit weights) computes each weight product as an 8-bit GEMM
whose left operand it quantizes on the fly with DynamicQuantizeLinear's rule: the input X once per
call (the whole sequence), and the hidden state of each direction at every step. The weights are
int8 with a scale per direction. Bias, gates and cell state stay in float. The cell here does the
same in float ops: X rounded once, then per step ``round8(h) @ R + x_t @ W + b``, the gates
(i, o, f, c; sigmoid, tanh) and the new c and h. Only the common form is taken: no sequence lengths,
no peepholes, no clip, default activations, layout 0, a static number of steps.
"""

from __future__ import annotations

import logging

import numpy as np

from edgepack.converter.onnx.dynamic_rounding import NodeSink, integer_product

log = logging.getLogger(__name__)

_MAX_STEPS = 256  # the unrolled graph grows with the steps


def _weights(g, ins: list[str], q: int, s: int, z: int) -> tuple[np.ndarray, np.ndarray]:
    """[D, in, 4H] int8 -> (``q - zp`` as float [D, in, 4H], scale per direction [D] or per column [D, 4H])."""
    scale = np.asarray(g.consts[ins[s]], np.float32)
    zp = np.asarray(g.consts[ins[z]], np.float32) if ins[z] else np.zeros_like(scale)
    shape = (-1, 1, 1) if scale.ndim == 1 else (scale.shape[0], 1, -1)
    return (g.consts[ins[q]].astype(np.float32) - zp.reshape(shape)).astype(np.float32), scale


def _plain(node, g, ins: list[str], steps: int | None) -> bool:
    from onnx import helper

    a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
    acts = [x.decode() if isinstance(x, bytes) else x for x in a.get("activations", [])]
    return (not ins[4] and not ins[7] and "clip" not in a and not a.get("input_forget", 0)
            and not a.get("layout", 0) and acts in ([], ["Sigmoid", "Tanh", "Tanh"] * (len(acts) // 3 or 1))
            and all(ins[i] in g.consts for i in (1, 2, 8, 10)) and (not ins[3] or ins[3] in g.consts)
            and steps is not None and 1 <= steps <= _MAX_STEPS)


def emulate_dynamic_lstm(g, record, steps_of: dict[str, int]) -> None:
    """Every plain DynamicQuantizeLSTM -> the unrolled rounding cell; ``steps_of``: tensor -> first dim."""
    for node in list(g.graph.node):
        if node.op_type != "DynamicQuantizeLSTM":
            continue
        ins = list(node.input) + [""] * (12 - len(node.input))
        steps = steps_of.get(ins[0])
        if not _plain(node, g, ins, steps):
            continue
        s = NodeSink(g, f"{node.name or node.output[0]}/rounding/")
        _unrolled(s, node, ins, int(steps))
        g.graph.node.remove(node)
        g.graph.node.extend(s.nodes)
        record.lstms += 1


def _unsqueeze(s: NodeSink, x: str, axes: list[int], name: str) -> str:
    if s.opset >= 13:
        return s.op("Unsqueeze", [x, s.const(f"axes{''.join(map(str, axes))}", np.array(axes, np.int64))], name)
    return s.op("Unsqueeze", [x], name, axes=axes)


def _unrolled(s: NodeSink, node, ins: list[str], steps: int) -> None:
    from onnx import helper

    a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
    hidden = int(a["hidden_size"])
    (w, w_scale), (r, r_scale) = _weights(s.g, ins, 1, 8, 9), _weights(s.g, ins, 2, 10, 11)
    dirs = w.shape[0]
    reverse = a.get("direction", b"forward") in (b"reverse", "reverse")
    bias = s.g.consts[ins[3]] if ins[3] else np.zeros((dirs, 8 * hidden), np.float32)
    outs = list(node.output) + [""] * (3 - len(node.output))
    per_step: list[list[str]] = [[] for _ in range(steps)]
    finals: list[tuple[str, str]] = []
    for d in range(dirs):
        b = s.const(f"B{d}", (bias[d, :4 * hidden] + bias[d, 4 * hidden:]).astype(np.float32))
        xw = integer_product(s, ins[0], w[d], w_scale[d], f"x{d}", f"W{d}")  # X rounded once for the whole call
        h, c = (s.op("Gather", [v, s.const(f"d{d}", np.array(d, np.int64))], f"{k}0_{d}", axis=0) if v else None
                for k, v in (("h", ins[5]), ("c", ins[6])))
        for t in (range(steps - 1, -1, -1) if reverse or d == 1 else range(steps)):
            h, c = _cell(s, xw, h, c, (r[d], r_scale[d], b), t, d)
            per_step[t].append(h)
        finals.append((h, c))
    if outs[0]:
        rows = [s.op("Concat", [_unsqueeze(s, h, [0, 1], f"y{t}_{d}") for d, h in enumerate(hs)], f"y{t}", axis=1)
                for t, hs in enumerate(per_step)]
        s.op("Concat", rows, "Y", outputs=[outs[0]], axis=0)
    for k, out in ((0, outs[1]), (1, outs[2])):
        if out:
            s.op("Concat", [_unsqueeze(s, f[k], [0], f"final{k}_{d}") for d, f in enumerate(finals)], f"final{k}",
                 outputs=[out], axis=0)


def _cell(s: NodeSink, xw: str, h: str | None, c: str | None, weights: tuple, t: int, d: int) -> tuple[str, str]:
    """One step: ``(x_t W + round8(h) R) + b`` in onnxruntime's order of additions, then the gates."""
    r, r_scale, b = weights
    tag = f"d{d}t{t}"
    gates = s.op("Gather", [xw, s.const(f"t{t}", np.array(t, np.int64))], f"x_{tag}", axis=0)
    if h is not None:
        gates = s.op("Add", [gates, integer_product(s, h, r, r_scale, f"h_{tag}", f"R{d}")], f"xh_{tag}")
    gates = s.op("Add", [gates, b], f"gates_{tag}")
    split = {"num_outputs": 4} if s.opset >= 18 else {}
    names = [f"{s.prefix}{k}_{tag}" for k in ("i", "o", "f", "g")]
    s.op("Split", [gates], f"split_{tag}", outputs=names, axis=1, **split)
    i, o, f = (s.op("Sigmoid", [v], f"{v.rsplit('/', 1)[-1]}_act") for v in names[:3])
    ig = s.op("Mul", [i, s.op("Tanh", [names[3]], f"g_act_{tag}")], f"ig_{tag}")
    c = ig if c is None else s.op("Add", [s.op("Mul", [f, c], f"fc_{tag}"), ig], f"c_{tag}")
    return s.op("Mul", [o, s.op("Tanh", [c], f"tc_{tag}")], f"h_{tag}"), c


def lstm_steps(proto) -> dict[str, int]:
    """The first dimension of every tensor onnx's shape inference knows (the LSTMs' step counts)."""
    from onnx import shape_inference

    try:
        inferred = shape_inference.infer_shapes(proto)
    except Exception as err:  # noqa: BLE001 — without shapes no LSTM is unrolled
        log.debug("shape inference failed: %s", err)
        return {}
    found: dict[str, int] = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.input]:
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value"):
            found[vi.name] = int(dims[0].dim_value)
    return found
