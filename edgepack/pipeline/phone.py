"""Phone stages: camera uint8 I/O, measured XNNPACK coverage, LiteRT metadata and the app code.

camera_check (before convert) and camera_io (after it) set a ``--quantize uint8`` model's input
quantization so raw pixels are its input (:mod:`edgepack.converter.uint8_io`); delegate (phone
targets) measures which ops XNNPACK takes; app (LiteRT targets) writes the metadata into
model.tflite — the bytes the manifest then hashes — and the bundle README's Kotlin, Swift and
Python snippets, and records the signatures.
"""

from __future__ import annotations

import logging
import re

from edgepack.pipeline.state import PipelineState

log = logging.getLogger(__name__)


def stage_camera_check(st: PipelineState) -> dict | None:
    """--quantize uint8: the camera quantization of every image input, from its preprocessing — checked
    before the conversion, so a normalization raw pixels cannot carry fails in seconds, not after it."""
    if st.request.quantize.mode.value != "uint8":
        return None
    from edgepack.converter.uint8_io import camera_quantization

    for spec in st.loaded.inputs:
        cam = camera_quantization((st.input_data.get(spec.name) or {}).get("preprocessing"))
        if cam is not None:
            st.camera[spec.name] = cam
    return {name: {"scale": c.scale, "zero_point": c.zero_point} for name, c in st.camera.items()}


def stage_camera_io(st: PipelineState) -> dict | None:
    """--quantize uint8: the converted model's image inputs take raw pixels (:mod:`edgepack.converter.uint8_io`)."""
    if not st.camera:
        return None
    from edgepack.converter.uint8_io import with_input_quantization
    from edgepack.formats.base import signature_name
    from edgepack.tflite_model import read_tflite

    info = read_tflite(st.tflite)
    positions = {spec.name: pos for pos, spec in enumerate(st.loaded.inputs)}
    params = {}
    for name, cam in st.camera.items():
        index = info.signature_inputs.get(signature_name(name), info.inputs[positions[name]])
        if info.tensor(index).dtype == "uint8":
            params[index] = cam
    if params:
        st.tflite = with_input_quantization(st.tflite, params)
    return {"inputs": len(params)}


def stage_delegate(st: PipelineState) -> dict | None:
    """Phone targets (a delegate in the profile): the measured coverage, checked by check_target."""
    if st.target.delegate != "xnnpack":
        return None
    from edgepack.runtimes.delegate import measure_coverage

    st.delegate = measure_coverage(st.tflite)
    return {k: st.delegate[k] for k in ("nodes", "delegated", "partitions")}


def stage_app(st: PipelineState) -> dict | None:
    """LiteRT targets: metadata into model.tflite (unless --no-metadata), the signatures, the app code."""
    if st.target.runtime != "litert":
        return None
    from edgepack.packaging import metadata as md
    from edgepack.pipeline.stages import tensor_infos
    from edgepack.tflite_model import read_tflite

    info = read_tflite(st.tflite)
    inputs = tensor_infos(info, [s.name for s in st.loaded.inputs], "inputs", st.input_data)
    outputs = tensor_infos(info, st.loaded.output_names, "outputs")
    st.app["signatures"] = signatures(st.tflite)
    about = descriptive(st)
    if st.request.metadata.write:
        by_index = {t.index: t for t in inputs}
        out_by_index = {t.index: t for t in outputs}
        classifier = _classifier(outputs, st.labels)
        meta = md.model_metadata(
            info=about, inputs=[by_index[i] for i in info.inputs if i in by_index],
            outputs=[out_by_index[i] for i in info.outputs if i in out_by_index],
            signature=next(iter(st.app["signatures"]), "serving_default"),
            labels="labels.txt" if classifier else None, classifier=classifier, ranges=output_ranges(st.tflite, outputs))
        files = {"labels.txt": ("\n".join(st.labels) + "\n").encode()} if classifier else {}
        st.tflite = md.embed(st.tflite, meta, files)
        st.app["metadata"] = {**meta, "files": sorted(files)}
    from edgepack.packaging.app_code import AppFacts, readme

    st.extra_files["README.md"] = (readme(AppFacts(
        name=about["name"] or "model", target=st.target.name, mode=info.quantization_mode,
        signature=next(iter(st.app["signatures"]), "serving_default"), inputs=inputs, outputs=outputs,
        labels=len(st.labels) if st.labels else 0, metadata=st.request.metadata.write,
        classifier=_classifier(outputs, st.labels))), "readme")
    return {"metadata": st.request.metadata.write, "bytes": len(st.tflite)}


def _classifier(outputs: list, labels: list[str] | None) -> str | None:
    """The one output that holds a score per label, if there is one."""
    if not labels:
        return None
    hits = [t.name for t in outputs if len(t.shape) == 2 and t.shape[-1] == len(labels)]
    return hits[0] if len(hits) == 1 else None


def descriptive(st: PipelineState) -> dict[str, str | None]:
    """name/description/version/author/license: the request's, else the source model's."""
    req, src = st.request.metadata, (st.original or st.loaded)
    found: dict[str, str | None] = {"name": None, "description": None, "version": None, "author": None,
                                    "license": None}
    proto = getattr(src.model, "proto", None)
    if proto is not None:  # ONNX: graph name, doc string, model_version, metadata_props
        props = {p.key.lower(): p.value for p in proto.metadata_props}
        found.update(name=proto.graph.name or None, description=proto.doc_string or proto.graph.doc_string or None,
                     version=str(proto.model_version) if proto.model_version else props.get("version"),
                     author=props.get("author"), license=props.get("license"))
    elif src.is_keras and not re.fullmatch(r"(functional|sequential|model)(_\d+)?", str(src.model.name)):
        found["name"] = src.model.name  # a name the user gave, not Keras' default
    found["name"] = found["name"] or src.path.stem
    if not found["description"]:
        found["description"] = (f"{found['name']}: {st.info.quantization_mode} LiteRT model converted by edgepack "
                                f"from {src.path.name}")
    given = {k: getattr(req, k) for k in found}
    return {k: given[k] if given[k] is not None else v for k, v in found.items()}


def signatures(model: bytes) -> dict[str, dict[str, dict[str, int]]]:
    """Every SignatureDef: key -> {"inputs": {name: tensor index}, "outputs": {...}}."""
    from ai_edge_litert import schema_py_generated as schema

    m = schema.Model.GetRootAsModel(model, 0)
    out: dict[str, dict[str, dict[str, int]]] = {}
    for i in range(m.SignatureDefsLength()):
        s = m.SignatureDefs(i)
        out[(s.SignatureKey() or b"").decode()] = {
            "inputs": {(s.Inputs(j).Name() or b"").decode(): int(s.Inputs(j).TensorIndex())
                       for j in range(s.InputsLength())},
            "outputs": {(s.Outputs(j).Name() or b"").decode(): int(s.Outputs(j).TensorIndex())
                        for j in range(s.OutputsLength())}}
    return out


def output_ranges(model: bytes, outputs: list) -> dict[str, tuple[float, float]]:
    """Value ranges an app can rely on: [0, 1] after SOFTMAX/LOGISTIC (through a final QUANTIZE)."""
    from ai_edge_litert import schema_py_generated as schema

    from edgepack.tflite_model import op_kinds

    obj = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model, 0))
    kinds = op_kinds(obj)
    producer = {int(t): (k, op) for k, op in zip(kinds, obj.subgraphs[0].operators) for t in op.outputs}
    out: dict[str, tuple[float, float]] = {}
    for t in outputs:
        kind, op = producer.get(t.index, (None, None))
        if kind in ("QUANTIZE", "DEQUANTIZE") and op is not None:
            kind, _ = producer.get(int(op.inputs[0]), (None, None))
        if kind in ("SOFTMAX", "LOGISTIC"):
            out[t.name] = (0.0, 1.0)
    return out

