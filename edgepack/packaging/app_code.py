"""The app code beside the model: the bundle README's Kotlin, Swift and Python snippets.

Filled from ``templates/app/*.tmpl`` (``string.Template``, like the firmware sources) with the
bundle's real signature, tensor names, shapes, dtypes, quantization and preprocessing, so the
snippets are right for this model and nothing else; tests check every name and number in them
against the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from string import Template
from typing import Any

from edgepack.packaging.manifest import TensorInfo
from edgepack.packaging.metadata import is_image, pixel_normalization

_BYTES = {"float32": 4, "float16": 2, "int32": 4, "int64": 8, "int16": 2, "int8": 1, "uint8": 1, "bool": 1}


@dataclass(frozen=True)
class AppFacts:
    name: str
    target: str
    mode: str
    signature: str
    inputs: list[TensorInfo]  # source order
    outputs: list[TensorInfo]
    labels: int = 0
    metadata: bool = True
    classifier: str | None = None  # the output with one score per label


def _render(template: str, **values: Any) -> str:
    text = resources.files("edgepack.packaging").joinpath("templates", "app", f"{template}.tmpl").read_text("utf-8")
    return Template(text).substitute(**values).rstrip() + "\n"


def _elems(t: TensorInfo) -> int:
    n = 1
    for d in t.shape:
        n *= d
    return n


def _num(v: float) -> str:
    return repr(float(v)).removesuffix(".0") if float(v).is_integer() else repr(float(v))


def _values(f: AppFacts) -> dict[str, Any]:
    t = f.inputs[0]
    o = next((x for x in f.outputs if x.name == f.classifier), f.outputs[0])
    norm = pixel_normalization(t.preprocessing) or ([0.0], [1.0])
    v: dict[str, Any] = {
        "name": f.name, "target": f.target, "mode": f.mode, "sig": f.signature,
        "in_name": t.name, "in_shape": ", ".join(str(d) for d in t.shape), "in_dtype": t.dtype,
        "in_bytes": _elems(t) * _BYTES.get(t.dtype, 4), "in_pos": f.inputs.index(t),
        "out_name": o.name, "out_shape": ", ".join(str(d) for d in o.shape), "out_dtype": o.dtype,
        "out_bytes": _elems(o) * _BYTES.get(o.dtype, 4), "out_elems": _elems(o), "out_pos": f.outputs.index(o),
        "mean": ", ".join(_num(m) for m in norm[0]), "std": ", ".join(_num(s) for s in norm[1]),
        "kt_mean": ", ".join(f"{_num(m)}f" for m in norm[0]), "kt_std": ", ".join(f"{_num(s)}f" for s in norm[1]),
        "num_labels": f.labels,
    }
    if len(t.shape) == 4:
        v.update(in_height=t.shape[1], in_width=t.shape[2], in_channels=t.shape[3])
    v.update(_kotlin(t, o), **_swift(t, o), **_python(t, o))
    return v


def _q(t: TensorInfo) -> tuple[str, str]:
    return _num(t.scale or 0.0), str(t.zero_point or 0)


def _minus(zero_point: str) -> str:
    """``- zp`` as code reads it: ``- 5``, ``+ 128``."""
    return f"+ {zero_point[1:]}" if zero_point.startswith("-") else f"- {zero_point}"


def _plus(zero_point: str) -> str:
    return f"- {zero_point[1:]}" if zero_point.startswith("-") else f"+ {zero_point}"


def _kotlin(t: TensorInfo, o: TensorInfo) -> dict[str, str]:
    scale, zp = _q(t)
    put = {"float32": "input.putFloat((c - mean[i % mean.size]) / std[i % std.size])",
           "uint8": "input.put(c.toByte())  // raw pixels: the input's quantization is the normalization"}.get(
        t.dtype, f"input.put((Math.round((c - mean[i % mean.size]) / std[i % std.size] / {scale}f) {_plus(zp)})"
                 ".coerceIn(-128, 127).toByte())")
    gray = (t.shape[-1] if t.shape else 0) == 1
    channels = ("intArrayOf(((p shr 16 and 0xFF) + (p shr 8 and 0xFF) + (p and 0xFF)) / 3)" if gray
                else "intArrayOf(p shr 16 and 0xFF, p shr 8 and 0xFF, p and 0xFF)")
    oscale, ozp = _q(o)
    read = {"float32": "output.getFloat(it * 4)",
            "uint8": f"((output.get(it).toInt() and 0xFF) {_minus(ozp)}) * {oscale}f"}.get(
        o.dtype, f"(output.get(it).toInt() {_minus(ozp)}) * {oscale}f")
    write = "writeFloat(floatValues)" if t.dtype == "float32" else "writeInt8(byteValues)"
    read_buffer = "readFloat()" if o.dtype == "float32" else f"readInt8()  // then (q {_minus(ozp)}) * {oscale}"
    return {"kt_put": put, "kt_channels": channels, "kt_read": read, "kt_write": write, "kt_read_buffer": read_buffer}


def _swift(t: TensorInfo, o: TensorInfo) -> dict[str, str]:
    scale, zp = _q(t)
    c = t.shape[-1] if t.shape else 1
    norm = f"(Float(p.element) - mean[p.offset % {c}]) / std[p.offset % {c}]"
    inp = {"float32": f"let floats = rgb.enumerated().map {{ p in {norm} }}\n"
                      "let input = floats.withUnsafeBufferPointer { Data(buffer: $0) }",
           "uint8": "let input = Data(rgb)  // raw pixels: the input's quantization is the normalization"}.get(
        t.dtype, f"let input = Data(rgb.enumerated().map {{ p in UInt8(bitPattern: Int8(max(-128, min(127, "
                 f"(({norm}) / {scale}).rounded() {_plus(zp)})))) }})")
    oscale, ozp = _q(o)
    read = {"float32": "let scores = output.data.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }",
            "uint8": f"let scores = output.data.map {{ (Float($0) {_minus(ozp)}) * {oscale} }}"}.get(
        o.dtype, f"let scores = output.data.map {{ (Float(Int8(bitPattern: $0)) {_minus(ozp)}) * {oscale} }}")
    return {"swift_input": inp, "swift_read": read}


def _python(t: TensorInfo, o: TensorInfo) -> dict[str, str]:
    scale, zp = _q(t)
    src = "pixels" if is_image(t) else "values"
    prep = {"float32": f"x = (({src} - mean) / std).astype(np.float32)",
            "uint8": f"x = {src}.astype(np.uint8)  # raw pixels: the input's quantization is the normalization"}.get(
        t.dtype, f"x = np.clip(np.round(({src} - mean) / std / {scale}) {_plus(zp)}, -128, 127).astype(np.{t.dtype})")
    oscale, ozp = _q(o)
    read = "out" if o.dtype == "float32" else f"(out.astype(np.float32) {_minus(ozp)}) * {oscale}"
    mode = "L" if (t.shape[-1] if t.shape else 0) == 1 else "RGB"
    return {"py_prepare": prep, "py_read": read, "pil_mode": mode}


def _py_tensors(f: AppFacts) -> dict[str, str]:
    """Every input as a feed and every output read back, for models whose first input is no image."""
    feeds, outs = [], []
    for t in f.inputs:
        shape = ", ".join(str(d) for d in t.shape)
        note = f"  # quantize: q = round(x / {_q(t)[0]}) {_plus(_q(t)[1])}" if t.scale else ""
        feeds.append(f'    "{t.name}": np.zeros(({shape}{"," if len(t.shape) == 1 else ""}), np.{t.dtype}),{note}')
    for o in f.outputs:
        value = f'outputs["{o.name}"]'
        if o.scale:
            value = f"({value}.astype(np.float32) {_minus(_q(o)[1])}) * {_q(o)[0]}"
        outs.append(f"{_identifier(o.name)} = {value}  # [{', '.join(str(d) for d in o.shape)}] {o.dtype}")
    return {"py_feeds": "\n".join(feeds), "py_outputs": "\n".join(outs)}


def _identifier(name: str) -> str:
    out = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name)
    return out if out and not out[0].isdigit() else f"t_{out}"


def _io_rows(f: AppFacts) -> str:
    rows = []
    for kind, tensors in (("input", f.inputs), ("output", f.outputs)):
        for t in tensors:
            rows.append(f"| {kind} | `\"{t.name}\"` | [{', '.join(str(d) for d in t.shape)}] | {t.dtype} | "
                        f"{_q(t)[0] if t.scale else '-'} | {_q(t)[1] if t.scale else '-'} |")
    return "\n".join(rows)


def snippets(f: AppFacts) -> dict[str, str]:
    """Section title -> code block text (language, code)."""
    v = _values(f)
    t = f.inputs[0]
    if not is_image(t):
        return {"Python (ai-edge-litert)": _render("python_tensor.py", **v, **_py_tensors(f))}
    out = {"Kotlin: LiteRT Interpreter": _render("kotlin_interpreter.kt", **v),
           "Kotlin: LiteRT CompiledModel": _render("kotlin_compiled_model.kt", **v)}
    if f.metadata and f.classifier and t.dtype in ("float32", "uint8"):
        v["mp_norm"] = "normalization" if t.dtype == "float32" else "uint8 input"
        out["Kotlin: MediaPipe Tasks"] = _render("kotlin_mediapipe.kt", **v)
    out["Swift: TensorFlowLiteSwift"] = _render("swift_interpreter.swift", **v)
    out["Python (ai-edge-litert)"] = _render("python.py", **v)
    return out


_LANG = {"Kotlin": "kotlin", "Swift": "swift", "Python": "python"}


def readme(f: AppFacts) -> str:
    """The bundle's README.md."""
    v = _values(f)
    t = f.inputs[0]
    if t.dtype == "uint8" and is_image(t):
        note = (f"The input takes raw camera pixels: its quantization (scale {_q(t)[0]}, zero point {_q(t)[1]}) "
                "is the normalization.")
    elif pixel_normalization(t.preprocessing) is not None:
        note = f"Before `invoke()`: x = (pixel - mean) / std with mean [{v['mean']}], std [{v['std']}]."
    else:
        note = "The manifest's `preprocessing` says what to do to raw data before `invoke()`."
    what = ["names"] + (["normalization"] if pixel_normalization(t.preprocessing) else []) + (
        ["labels"] if f.classifier else [])
    meta = (f"model.tflite carries LiteRT metadata ({', '.join(what)}): MediaPipe Tasks and Android Studio's "
            "ML Model Binding read it." if f.metadata
            else "model.tflite carries no LiteRT metadata (--no-metadata).")
    sections = "\n".join(f"## {title}\n\n```{_LANG[title.split(':')[0].split(' ')[0]]}\n{code}```\n"
                         for title, code in snippets(f).items())
    return _render("README.md", **v, input_note=note, metadata_note=meta, sections=sections, io_rows=_io_rows(f))
