"""Measured XNNPACK coverage: which of a model's ops LiteRT hands to XNNPACK, as a phone app's interpreter does.

LiteRT's Python ``Interpreter`` applies its default XNNPACK delegate when tensors are allocated,
exactly as the Android/iOS ``Interpreter`` does. After that, the interpreter's node list holds the
model's nodes followed by one ``DELEGATE`` node per partition; a partition's nodes are those
between its input and output tensors. Nodes in no partition run on LiteRT's own CPU kernels
(reference kernels for int16x8: the slow path). ai-edge-litert 2.1.0 does not print its
"Replacing N out of M node(s)" line at the default log level, so the count is read from the node
list instead. The interpreter runs in a child process (``python -m edgepack.runtimes.delegate``):
a native crash on a bad model is one line, not a dead edgepack.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from typing import Any

from edgepack.errors import RuntimeUnavailable

DELEGATE = "xnnpack"


def measure_coverage(model: bytes, *, timeout: float = 120.0) -> dict[str, Any]:
    """``{"delegate", "nodes", "delegated", "partitions", "cpu_ops": [{index, op, types, reason}]}``."""
    with tempfile.NamedTemporaryFile(suffix=".tflite") as f:
        f.write(model)
        f.flush()
        try:
            proc = subprocess.run([sys.executable, "-m", "edgepack.runtimes.delegate", f.name],
                                  capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as err:
            raise RuntimeUnavailable(f"XNNPACK coverage: LiteRT did not finish within {timeout:.0f}s") from err
    if proc.returncode != 0:
        last = (proc.stderr.decode("utf-8", "replace").strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise RuntimeUnavailable(f"XNNPACK coverage: LiteRT failed on the model ({last[:300]})")
    return json.loads(proc.stdout)


def coverage_lines(cov: dict[str, Any]) -> list[str]:
    """``inspect``'s lines for a coverage record."""
    lines = [f"{cov['delegate']}: {cov['delegated']} of {cov['nodes']} ops delegated, "
             f"{cov['partitions']} partition(s)"]
    lines += [f"  on CPU kernels: #{c['index']} {c['op']}: {c['reason']}" for c in cov["cpu_ops"]]
    return lines



def _partition_nodes(ops: list[dict], delegate: dict) -> set[int]:
    """The original nodes a DELEGATE node replaced: walked back from its outputs to its inputs."""
    producer = {int(t): op["index"] for op in ops if op["op_name"] != "DELEGATE" for t in op["outputs"]}
    stop = {int(t) for t in delegate["inputs"]}
    nodes: set[int] = set()
    todo = [int(t) for t in delegate["outputs"]]
    while todo:
        t = todo.pop()
        node = producer.get(t)
        if t in stop or node is None or node in nodes:
            continue
        nodes.add(node)
        todo.extend(int(i) for i in ops[node]["inputs"] if int(i) >= 0)
    return nodes


def _reason(op: dict, dynamic: set[int], produced: set[int]) -> str:
    """Why a node stays on the CPU kernels, from what the node list shows (``produced``: tensors some
    node computes, i.e. not constants or model inputs)."""
    names = lambda types: {getattr(t, "__name__", str(t)) for t in types}  # noqa: E731
    ins, outs = names(op["operand_types"]), names(op["result_types"])
    if any(int(t) in dynamic for t in [*op["inputs"], *op["outputs"]] if int(t) >= 0):
        return "dynamic shape"
    if "int16" in ins | outs:
        return "int16 activations: no XNNPACK kernel (LiteRT reference kernel)"
    if op["op_name"] in ("QUANTIZE", "DEQUANTIZE", "CAST") and ins != outs:
        return f"type conversion {'/'.join(sorted(ins))} -> {'/'.join(sorted(outs))} not taken by XNNPACK"
    if op["op_name"] == "SHAPE" or (ins | outs) == {"int32"}:
        return "int32 shape arithmetic (a shape computed at run time, e.g. for the dynamic batch)"
    if op["op_name"] == "RESHAPE" and len(op["inputs"]) > 1 and int(op["inputs"][1]) in produced:
        return "its new shape is computed at run time"
    return f"XNNPACK does not take {op['op_name']} with {'/'.join(sorted(ins | outs))} tensors"


def _measure(model_path: str) -> dict[str, Any]:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=model_path, num_threads=1)
    interp.allocate_tensors()
    ops = interp._get_ops_details()  # the node list after delegation (public API has no other view)
    dynamic = {d["index"] for d in interp.get_tensor_details()
               if len(d["shape_signature"]) and -1 in list(d["shape_signature"])[1:]}
    original = [op for op in ops if op["op_name"] != "DELEGATE"]
    partitions = [op for op in ops if op["op_name"] == "DELEGATE"]
    delegated: set[int] = set()
    for d in partitions:
        delegated |= _partition_nodes(ops, d)
    produced = {int(t) for op in original for t in op["outputs"]}
    cpu = [{"index": op["index"], "op": op["op_name"], "reason": _reason(op, dynamic, produced)}
           for op in original if op["index"] not in delegated]
    return {"delegate": DELEGATE, "runtime": "ai-edge-litert", "nodes": len(original), "delegated": len(delegated),
            "partitions": len(partitions), "cpu_ops": cpu}


def _main() -> int:
    import os

    # the native runtime's INFO lines go to fd 2; the JSON answer is the only thing on stdout
    out = os.dup(1)
    os.dup2(2, 1)
    result = _measure(sys.argv[1])
    os.write(out, json.dumps(result).encode())
    return 0


if __name__ == "__main__":
    sys.exit(_main())
