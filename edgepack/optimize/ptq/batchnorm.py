"""BatchNormalization folded into the Conv before it, on the ONNX graph.

TensorFlow's converter folds a batch norm into the convolution before it quantizes the weights, so
the weights it rounds to int8 are the folded ones: equalization and bias correction must see those
(their ranges and rounding errors), not the convolution's weights before the fold.
"""

from __future__ import annotations

import numpy as np

from edgepack.optimize.ptq.onnx_graph import GraphIndex, attr, remove_nodes, set_initializer, unique_name


def fold_batchnorms(graph) -> int:
    """Fold every ``Conv -> BatchNormalization`` whose conv output only the batch norm reads; the count."""
    idx = GraphIndex.build(graph)
    doomed = []
    for bn in list(graph.node):
        if bn.op_type != "BatchNormalization" or any(bn.output[1:]):  # training-mode outputs in use
            continue
        conv = idx.producer.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or idx.only_consumer(conv.output[0]) is not bn:
            continue
        w = idx.value(conv.input[1])
        stats = [idx.value(n) for n in bn.input[1:5]]
        if w is None or any(s is None for s in stats):
            continue
        gamma, beta, mean, var = (s.astype(np.float64) for s in stats)
        b = idx.value(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else np.zeros(w.shape[0])
        if b is None:
            continue
        k = gamma / np.sqrt(var + attr(bn, "epsilon", 1e-5))
        w_name = unique_name(idx, f"{conv.input[1]}_bnfolded")
        b_name = unique_name(idx, f"{conv.name or 'conv'}_bias_bnfolded")
        set_initializer(graph, w_name, (w * k.reshape(-1, *[1] * (w.ndim - 1))).astype(np.float32))
        set_initializer(graph, b_name, ((b - mean) * k + beta).astype(np.float32))
        idx.constants[w_name] = idx.constants[b_name] = None  # names taken
        del conv.input[1:]
        conv.input.extend([w_name, b_name])
        conv.output[0] = bn.output[0]
        doomed.append(bn)
    remove_nodes(graph, doomed)
    return len(doomed)
