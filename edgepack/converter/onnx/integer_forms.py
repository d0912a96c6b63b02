"""Rewrites of a prepared ONNX graph into forms integer kernels run well (quantized modes only).

**STFT magnitude.** Audio models (silero VAD) compute a spectrogram as a Conv with a fixed Fourier
basis, real and imaginary halves sliced out, and ``sqrt(re**2 + im**2)``. In int8 the square
doubles the dynamic range in dB that one per-tensor grid must hold: everything below about 1/16 of
the largest amplitude squares to zero (silero's magnitudes of quiet audio), and TFLite has no int8
SQRT (the converter leaves it float) nor an int16 one (int16x8 refuses the model). The magnitude is
also the largest value over rotations, ``|z| = max_t |re cos t + im sin t|``: with ``K`` angles
``t = k pi / K`` the maximum is within ``cos(pi / 2K)`` of ``|z|`` (K = 8: 1.9 %, halved by a gain
that centres the error; silero's speech probability moves by at most 0.011, 62 dB). The rotations
fold into the Conv's weights (K times the output channels), so what runs is CONV_2D, ABS, SPLIT and
MAXIMUM: linear in the amplitude, all with int8 and int16 kernels in TFLite and TFLite Micro.

**For int16 kernels of TFLite Micro** (int16x8), which has no int16 GATHER or MIRROR_PAD, two
float-exact rewrites: a Gather of one constant index becomes Slice + Squeeze, a reflect Pad becomes
reversed Slices (negative step) and a Concat.

Each returns how many it rewrote; the graph stage records them and checks the float graph after
them against onnxruntime on the original (:mod:`edgepack.pipeline.graph`).
"""

from __future__ import annotations

import numpy as np

ROTATIONS = 8  # angles of the magnitude's max-over-rotations form (error <= 1 - cos(pi/16) before the gain)


def _consts(graph) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    out = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            out[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return out


def _attr(node, name: str, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _unique(graph, base: str) -> str:
    taken = {o for n in graph.node for o in n.output} | {i.name for i in graph.initializer} \
        | {i.name for i in graph.input}
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    return name


def _squared(node, producer: dict, consts: dict) -> str | None:
    """The tensor ``node`` squares (``Pow(x, 2)`` or ``Mul(x, x)``), else None."""
    if node is None:
        return None
    if node.op_type == "Pow" and node.input[1] in consts and np.all(np.asarray(consts[node.input[1]]) == 2):
        return node.input[0]
    if node.op_type == "Mul" and node.input[0] == node.input[1]:
        return node.input[0]
    return None


def _slice_of(node, consts: dict) -> tuple[int, int, int, int] | None:
    """(start, end, axis, step) of a Slice with constant parameters on one axis, else None."""
    if node is None or node.op_type != "Slice" or len(node.input) < 4:
        return None
    try:
        start, end = int(np.ravel(consts[node.input[1]])[0]), int(np.ravel(consts[node.input[2]])[0])
        axis = int(np.ravel(consts[node.input[3]])[0])
        step = int(np.ravel(consts[node.input[4]])[0]) if len(node.input) > 4 and node.input[4] else 1
    except (KeyError, IndexError):
        return None
    if any(np.size(consts[t]) != 1 for t in node.input[1:4]):
        return None
    return start, end, axis, step


def _half_chain(tensor: str, producer: dict, consts: dict):
    """(conv, channel range, the other Slices' parameters from the conv outwards) when ``tensor`` is a
    constant-weight Conv's output sliced once along its channels (axis 1, step 1) and maybe along other
    axes (the graph stage splits Slices per axis; silero's sequence model drops the first frame)."""
    channel, others, node = None, [], producer.get(tensor)
    while node is not None and node.op_type == "Slice":
        params = _slice_of(node, consts)
        if params is None or params[2] < 0 or (params[2] == 1 and (channel is not None or params[3] != 1)):
            return None
        if params[2] == 1:
            channel = params
        else:
            others.insert(0, params)
        node = producer.get(node.input[0])
    if channel is None or node is None or node.op_type != "Conv" or node.input[1] not in consts \
            or len(node.input) > 2 or _attr(node, "group", 1) != 1:
        return None
    channels = consts[node.input[1]].shape[0]
    start, end = channel[0], channel[1]
    start, end = (start + channels if start < 0 else start), min(end + channels if end < 0 else end, channels)
    return node, (start, end), others


def _magnitude_match(sqrt, producer: dict, consts: dict):
    """(conv, real range, imaginary range, other-axis slices) when ``sqrt`` is the magnitude of a
    constant-weight Conv's halves (sliced alike along the other axes)."""
    add = producer.get(sqrt.input[0])
    if add is None or add.op_type != "Add":
        return None
    parts = [_squared(producer.get(t), producer, consts) for t in add.input]
    if any(t is None for t in parts):
        return None
    chains = [_half_chain(t, producer, consts) for t in parts]
    if any(c is None for c in chains) or chains[0][0] is not chains[1][0] or chains[0][2] != chains[1][2]:
        return None
    (r0, r1), (i0, i1) = chains[0][1], chains[1][1]
    if r1 - r0 != i1 - i0 or r1 <= r0:
        return None
    return chains[0][0], (r0, r1), (i0, i1), chains[0][2]


def stft_magnitudes(proto, rotations: int = ROTATIONS) -> int:
    """Rewrite every ``sqrt(slice(conv)**2 + slice(conv)**2)`` in place (module docstring); returns how many."""
    from onnx import helper, numpy_helper

    graph = proto.graph
    consts = _consts(graph)
    producer = {o: n for n in graph.node for o in n.output}
    done, windows = 0, set()
    for sqrt in [n for n in graph.node if n.op_type == "Sqrt"]:
        found = _magnitude_match(sqrt, producer, consts)
        if found is None:
            continue
        conv, (r0, r1), (i0, i1), others = found
        shapes = _static_shapes(proto) if others else {}
        w = consts[conv.input[1]].astype(np.float64)
        gain = 2.0 / (1.0 + np.cos(np.pi / (2 * rotations)))  # centres the max-over-rotations error
        angles = np.arange(rotations) * np.pi / rotations
        wk = np.concatenate([(np.cos(t) * w[r0:r1] + np.sin(t) * w[i0:i1]) * gain for t in angles])
        base = _unique(graph, sqrt.output[0] + "_rot")
        graph.initializer.append(numpy_helper.from_array(wk.astype(np.float32), base + "_w"))
        attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
        new, source = [], conv.input[0]
        for params in others:  # only the frames the halves keep are computed (activation memory)
            window = _input_window(conv, params, shapes.get(conv.input[0]))
            if window is not None:
                source, others = _sliced_input(graph, new, source, base, window, producer, consts), \
                    [o for o in others if o != params]
                break
        windows |= {o for n in new for o in n.output}
        new.append(helper.make_node("Conv", [source, base + "_w"], [base + "_conv"], name=base, **attrs))
        rotated = base + "_conv"
        for k, params in enumerate(others):  # the halves' other slices, after the rotations
            rotated = _slice(graph, new, rotated, f"{base}_s{k}", *params)
        new += [helper.make_node("Abs", [rotated], [base + "_abs"], name=base + "_abs"),
                helper.make_node("Split", [base + "_abs"], [f"{base}_{k}" for k in range(rotations)], axis=1,
                                 name=base + "_split")]
        if _opset(proto) >= 18:  # equal parts: opset 18 asks for their number
            new[-1].attribute.append(helper.make_attribute("num_outputs", rotations))
        new += _max_tree([f"{base}_{k}" for k in range(rotations)], sqrt.output[0], base)
        at = list(graph.node).index(sqrt)
        graph.node.remove(sqrt)
        for k, node in enumerate(new):
            graph.node.insert(at + k, node)
        done += 1
    if done:
        _drop_unused(graph)
        _shapes_recorded(proto, windows)
    return done


def _input_window(conv, frames: tuple[int, int, int, int], shape: list[int] | None) -> tuple | None:
    """The Slice of the Conv's input that yields exactly output ``frames`` (start, end, axis, step 1)
    along a spatial axis of an unpadded, undilated Conv (float-exact), else None."""
    start, end, axis, step = frames
    kernel = list(_attr(conv, "kernel_shape", []) or [])
    if shape is None or step != 1 or axis < 2 or axis - 2 >= len(kernel) or _attr(conv, "auto_pad", b"NOTSET") != b"NOTSET" \
            or any(_attr(conv, "pads", [0]) or [0]) or any(d != 1 for d in _attr(conv, "dilations", []) or []):
        return None
    stride = (list(_attr(conv, "strides", []) or []) or [1] * len(kernel))[axis - 2]
    k, n = kernel[axis - 2], shape[axis]
    frames_out = (n - k) // stride + 1
    start, end = (start + frames_out if start < 0 else start), (end + frames_out if end < 0 else end)
    start, end = max(0, min(start, frames_out)), max(0, min(end, frames_out))
    if end <= start:
        return None
    return start * stride, (end - 1) * stride + k, axis, 1


def _sliced_input(graph, new: list, x: str, base: str, window: tuple, producer: dict, consts: dict) -> str:
    """``x`` sliced to ``window``; above an Unsqueeze that makes ``x`` when there is one (a Slice between
    an Unsqueeze and a Conv loses onnx2tf's channel layout: it reads the frames as channels)."""
    from onnx import helper

    start, end, axis, step = window
    unsqueeze = producer.get(x)
    added = consts.get(unsqueeze.input[1]) if unsqueeze is not None and unsqueeze.op_type == "Unsqueeze" \
        and len(unsqueeze.input) > 1 else None
    if added is None or np.any(np.asarray(added) < 0) or axis in np.ravel(added):
        return _slice(graph, new, x, base + "_in", start, end, axis, step)
    inner = axis - int(np.sum(np.ravel(added) < axis))
    sliced = _slice(graph, new, unsqueeze.input[0], base + "_in", start, end, inner, step)
    new.append(helper.make_node("Unsqueeze", [sliced, unsqueeze.input[1]], [base + "_in3"], name=base + "_in3"))
    return base + "_in3"


def _opset(proto) -> int:
    return max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=13)


def _max_tree(names: list[str], out: str, base: str) -> list:
    """Pairwise Max nodes over ``names`` (MAXIMUM has int8 and int16 kernels; REDUCE_MAX in TFLM no int16)."""
    from onnx import helper

    nodes, level, k = [], list(names), 0
    while len(level) > 1:
        nxt = []
        for a, b in zip(level[0::2], level[1::2]):
            o = out if len(level) == 2 else f"{base}_max{k}"
            nodes.append(helper.make_node("Max", [a, b], [o], name=f"{base}_max{k}"))
            nxt.append(o)
            k += 1
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return nodes


def _drop_unused(graph) -> None:
    """Remove nodes and initializers nothing reads any more (the replaced Slice/Pow/Add chain)."""
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {i for n in graph.node for i in n.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)


def constant_gathers(proto) -> int:
    """``Gather(x, scalar constant i, axis)`` -> ``Squeeze(Slice(x, i, i + 1, axis), axis)`` (float-exact)."""
    from onnx import helper, numpy_helper

    graph = proto.graph
    consts = _consts(graph)
    done = 0
    for node in [n for n in graph.node if n.op_type == "Gather" and n.input[1] in consts]:
        index = np.asarray(consts[node.input[1]])
        if index.ndim != 0 or node.input[0] in consts:
            continue
        axis, i = int(_attr(node, "axis", 0)), int(index)
        if i < 0:
            continue  # a negative index needs the axis length: left as it is
        base = _unique(graph, node.output[0] + "_slice")
        for suffix, value in (("_s", i), ("_e", i + 1), ("_a", axis)):
            graph.initializer.append(numpy_helper.from_array(np.array([value], np.int64), base + suffix))
        at = list(graph.node).index(node)
        graph.node.remove(node)
        graph.node.insert(at, helper.make_node("Squeeze", [base, base + "_a"], [node.output[0]], name=base + "_sq"))
        graph.node.insert(at, helper.make_node("Slice", [node.input[0], base + "_s", base + "_e", base + "_a"],
                                               [base], name=base))
        done += 1
    if done:
        _drop_unused(graph)
    return done


def reflect_pads(proto) -> int:
    """``Pad(x, mode=reflect)`` with constant pads and a known shape -> reversed Slices and a Concat per
    padded axis (float-exact)."""
    from onnx import helper

    graph = proto.graph
    consts = _consts(graph)
    shapes = _static_shapes(proto)
    done = 0
    for node in [n for n in graph.node if n.op_type == "Pad" and _attr(n, "mode", b"constant") == b"reflect"]:
        shape = shapes.get(node.input[0])
        if shape is None or len(node.input) < 2 or node.input[1] not in consts \
                or (len(node.input) > 3 and node.input[3]):
            continue
        pads = [int(p) for p in np.ravel(consts[node.input[1]])]
        plan = _reflect_plan(shape, pads)
        if plan is None:
            continue
        at = list(graph.node).index(node)
        graph.node.remove(node)
        current, new = node.input[0], []
        for k, (axis, before, after) in enumerate(plan):
            base = _unique(graph, f"{node.output[0]}_reflect{axis}")
            parts = []
            if before:  # x[before], ..., x[1]
                parts.append(_reversed_slice(graph, new, current, base + "_l", before, 0, axis, shape[axis]))
            parts.append(current)
            if after:  # x[n-2], ..., x[n-1-after]
                parts.append(_reversed_slice(graph, new, current, base + "_r", shape[axis] - 2,
                                             shape[axis] - 2 - after, axis, shape[axis]))
            out = node.output[0] if k == len(plan) - 1 else base
            new.append(helper.make_node("Concat", parts, [out], axis=axis, name=base + "_cat"))
            current = out
        for k, n in enumerate(new):
            graph.node.insert(at + k, n)
        done += 1
    if done:
        _drop_unused(graph)
    return done


def _reflect_plan(shape: list[int], pads: list[int]) -> list[tuple[int, int, int]] | None:
    """(axis, before, after) per padded axis, or None where the reversed slices cannot be written so
    that onnx2tf translates them faithfully (see :func:`_reversed_slice`): a pad of n - 1 before
    (or nothing to pad)."""
    rank = len(shape)
    if len(pads) != 2 * rank or any(p < 0 for p in pads):
        return None
    plan = [(a, pads[a], pads[a + rank]) for a in range(rank) if pads[a] or pads[a + rank]]
    if not plan or any(before >= n or after >= n or before == n - 1 > 1 for n, (_, before, after) in
           ((shape[a], p) for p in plan for a in [p[0]])):
        return None
    return plan


def _reversed_slice(graph, new: list, x: str, name: str, start: int, stop: int, axis: int, length: int) -> str:
    """``x[start:stop:-1]`` (``stop`` exclusive; -1: down to index 0) as Slices onnx2tf translates
    faithfully: it reads every end <= 0 as TensorFlow's end_mask (a negative step: down to index 0
    inclusive). Down to index 1: down to index 0 (end -length - 1, "before the first" to both), then a
    forward Slice drops x[0]. (onnx2tf makes a shape-preserving Slice an identity: never a whole axis.)"""
    if start - stop == 1:
        return _slice(graph, new, x, name, start, start + 1, axis, 1)
    if stop >= 1:
        return _slice(graph, new, x, name, start, stop, axis, -1)
    down_to_0 = _slice(graph, new, x, name + ("_0" if stop == 0 else ""), start, -length - 1, axis, -1)
    return down_to_0 if stop == -1 else _slice(graph, new, down_to_0, name, 0, start, axis, 1)


def _slice(graph, new: list, x: str, name: str, start: int, end: int, axis: int, step: int) -> str:
    from onnx import helper, numpy_helper

    for suffix, value in (("_s", start), ("_e", end), ("_a", axis), ("_st", step)):
        graph.initializer.append(numpy_helper.from_array(np.array([value], np.int64), name + suffix))
    new.append(helper.make_node("Slice", [x, name + "_s", name + "_e", name + "_a", name + "_st"], [name], name=name))
    return name


def _static_shapes(proto) -> dict[str, list[int]]:
    """Tensor name -> static shape, from ONNX shape inference (unknown dims left out)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # noqa: BLE001 — inference may fail on custom domains: no shapes, no rewrite
        return {}
    out = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input):
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            out[vi.name] = [int(d.dim_value) for d in dims]
    return out


def apply(proto, mode: str, *, magnitude: bool = True, integer_only: bool = False) -> dict[str, int]:
    """The rewrites a quantize ``mode`` wants, in place; ``{rewrite: count}`` of those that changed
    something. The magnitude form (unless ``magnitude`` is off: ``--no-ptq stft-magnitude``) where
    the magnitude cannot stay float: int16x8 (no int16 SQRT) and int8 on ``integer_only`` targets (no
    float SQRT worth having). On targets with float kernels an int8 model keeps the float SQRT the
    converter leaves, and the accuracy budget can keep the magnitude float for a few hundred bytes
    (silero: the rotations' conv is 8 times the STFT's weights, 1.9 MB when the budget keeps it float).
    The int16-kernel forms for int16x8."""
    if mode not in ("int8", "int8-float-io", "uint8", "int16x8"):
        return {}
    wanted = magnitude and (mode == "int16x8" or integer_only)
    done = {"stft_magnitudes": stft_magnitudes(proto) if wanted else 0}
    if mode == "int16x8":
        done.update(constant_gathers=constant_gathers(proto), reflect_pads=reflect_pads(proto))
    return {k: v for k, v in done.items() if v}


def _shapes_recorded(proto, made: set[str]) -> None:
    """The shapes of the tensors ``made`` (the rotations' input window), in value_info: without one,
    onnx2tf does not transpose an Unsqueeze's output to channels-last and the Conv after it reads the
    samples as channels. (Only these: the shapes of the rotations' outputs, or of the Gather forms,
    change onnx2tf's layout choices around silero's LSTM state: a Squeeze of the wrong axis.)"""
    import onnx

    if not made:
        return
    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # noqa: BLE001 — inference may fail on custom domains: the shapes as they were
        return
    recorded = {v.name for v in proto.graph.value_info}
    proto.graph.value_info.extend(v for v in inferred.graph.value_info if v.name in made - recorded)
