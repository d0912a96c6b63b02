"""What a small ONNX file may ask of the machine: opsets this onnx knows, a bounded subgraph nesting
depth, and inputs whose declared size a probe batch can hold. Each check reads only the proto and
fails with one line naming the limit."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from edgepack.errors import ModelLoadError, UsageError

# If/Loop/Scan bodies nested deeper than this are refused: exporters nest a few levels (a Loop holding
# an If); 30 nested Ifs fit in 4 KB and keep onnx2tf busy for minutes.
MAX_SUBGRAPH_DEPTH = 8
# Elements of one input, batch included (1 GiB as float32). edgepack builds whole batches of every
# input to probe and calibrate the model; an input declared [1e9, 1e9] would ask for 4 EB.
MAX_INPUT_ELEMENTS = 1 << 28
# protobuf cannot parse a message of 2 GiB or more; larger models keep their weights as external data.
MAX_ONNX_FILE_BYTES = 2 << 30
_DEFAULT_DOMAINS = ("", "ai.onnx")


def newest_opset() -> int:
    """The newest default-domain opset this installation's onnx knows."""
    import onnx

    return int(onnx.defs.onnx_opset_version())


def check_file_size(path: Path) -> None:
    size = path.stat().st_size
    if size >= MAX_ONNX_FILE_BYTES:
        raise ModelLoadError(f"{path}: {size} bytes; an .onnx file must be under {MAX_ONNX_FILE_BYTES >> 30} GiB "
                             "(protobuf's limit)", hint="export the weights as external data")


def check_opsets(proto, path: Path) -> None:
    """Refuse default-domain opsets newer than this onnx (its checker and onnx2tf do not know their ops)."""
    newest = newest_opset()
    for entry in proto.opset_import:
        if entry.domain in _DEFAULT_DOMAINS and not 1 <= entry.version <= newest:
            raise ModelLoadError(f"{path}: the model declares opset {entry.version} of the default ONNX domain; the "
                                 f"newest this edgepack supports is {newest}",
                                 hint=f"re-export the model with opset {newest} or lower")


def check_subgraph_depth(proto, path: Path) -> None:
    """Refuse If/Loop/Scan bodies nested deeper than :data:`MAX_SUBGRAPH_DEPTH` (walked without recursion)."""
    from onnx import AttributeProto

    stack = [(proto.graph, 0)]
    while stack:
        graph, depth = stack.pop()
        for node in graph.node:
            for attr in node.attribute:
                subgraphs = [attr.g] if attr.type == AttributeProto.GRAPH else \
                    list(attr.graphs) if attr.type == AttributeProto.GRAPHS else []
                if subgraphs and depth + 1 > MAX_SUBGRAPH_DEPTH:
                    what = f"node {node.name!r} ({node.op_type})" if node.name else f"an {node.op_type} node"
                    raise ModelLoadError(f"{path}: {what} nests subgraphs more than {MAX_SUBGRAPH_DEPTH} levels deep "
                                         "(edgepack's limit)",
                                         hint="flatten the control flow before export (e.g. constant conditions)")
                stack.extend((g, depth + 1) for g in subgraphs)


def check_input_size(name: str, shape: Sequence[object], *, usage: bool = False, where: str = "") -> None:
    """Refuse an input whose fixed dimensions hold more than :data:`MAX_INPUT_ELEMENTS` elements
    (unknown dimensions count as 1). ``usage``: the shape came from --input-shape (exit 2)."""
    count = 1
    for d in shape:
        if isinstance(d, int) and not isinstance(d, bool) and d > 0:
            count *= d
    if count > MAX_INPUT_ELEMENTS:
        dims = "x".join(str(d) if isinstance(d, int) else "?" for d in shape)
        message = (f"{where}ONNX input {name!r} has shape {dims}: {count:,} elements, more than edgepack's limit of "
                   f"{MAX_INPUT_ELEMENTS:,} for one input")
        hint = "give a smaller size with --input-shape" if usage else "re-export the model with a realistic input shape"
        raise (UsageError if usage else ModelLoadError)(message, hint=hint)
