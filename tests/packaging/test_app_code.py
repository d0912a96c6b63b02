"""The bundle README's Kotlin, Swift and Python snippets: every name and number in them is the model's.

Nothing is compiled: the names (string literals) must be the model's signature key, input and output
names or the model file; the numbers must be the model's shapes, byte sizes, quantization, the
metadata's normalization or the label count (read from the model with LiteRT, not from edgepack's
manifest), or one of a few fixed constants (bit shifts, the uint8/int8 ranges).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

FIXED_NAMES = {"model.tflite", "model", "tflite", "RGB", "L"}
FIXED_NUMBERS = {0.0, 1.0, 4.0, 8.0, 16.0, 127.0, -128.0, 255.0}  # float bytes, bit shifts, int8/uint8 limits


def _blocks(readme: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r"## ([^\n]+)\n\n```\w+\n(.*?)```", readme, re.S)}


def _model_facts(bundle: Path) -> tuple[set[str], list[float]]:
    from ai_edge_litert.interpreter import Interpreter

    from edgepack.packaging import metadata as md

    model = (bundle / "model.tflite").read_bytes()
    interp = Interpreter(model_content=model)
    names = set(FIXED_NAMES)
    numbers = set(FIXED_NUMBERS)
    for key, sig in interp.get_signature_list().items():
        names |= {key, *sig["inputs"], *sig["outputs"]}
    details = interp.get_input_details() + interp.get_output_details()
    numbers |= {float(pos) for pos in range(len(details))}  # input/output positions
    for d in details:
        shape = [int(x) for x in d["shape"]]
        numbers |= {float(x) for x in shape}
        numbers |= {float(np.prod(shape)), float(np.prod(shape) * np.dtype(d["dtype"]).itemsize)}
        scale, zero_point = d["quantization"]
        if scale:  # a negative zero point reads "+ 128" in code
            numbers |= {float(scale), float(zero_point), float(abs(zero_point))}
    meta = md.read(model)
    if meta is not None:
        for t in meta["subgraph_metadata"][0]["input_tensor_metadata"]:
            for unit in t.get("process_units", []):
                numbers |= {float(v) for v in unit["options"]["mean"] + unit["options"]["std"]}
        if "labels.txt" in meta["files"]:
            numbers.add(float(len(md.associated_file(model, "labels.txt").decode().split())))
    return names, sorted(numbers)


def _check(bundle: Path) -> dict[str, str]:
    readme = (bundle / "README.md").read_text()
    blocks = _blocks(readme)
    assert blocks, readme
    names, numbers = _model_facts(bundle)
    for title, code in blocks.items():
        for literal in re.findall(r'"([^"\n]*)"', code):
            assert literal in names, f"{title}: {literal!r} is not a name of the model"
        text = code.replace("0xFF", "")
        for number in re.findall(r"(?<![\w.$])-?\d+(?:\.\d+)?(?:e-?\d+)?f?(?![\w.])", text):
            value = float(number.removesuffix("f"))
            assert any(np.isclose(value, n, rtol=1e-6, atol=0) for n in numbers), \
                f"{title}: {number} is not a number of the model ({code})"
    return blocks


@pytest.mark.parametrize("mode", ["int8-float-io", "uint8", "int8"])
def test_image_snippets_name_and_number_the_model(phone_bundle, mode):
    blocks = _check(phone_bundle(mode))
    kotlin = blocks["Kotlin: LiteRT Interpreter"]
    assert '"image" to input' in kotlin and '"scores" to output' in kotlin and '"serving_default"' in kotlin
    assert ("Kotlin: MediaPipe Tasks" in blocks) == (mode != "int8")  # MediaPipe feeds float or uint8 only
    python = blocks["Python (ai-edge-litert)"]
    assert {"Swift: TensorFlowLiteSwift", "Kotlin: LiteRT CompiledModel"} <= set(blocks)
    if mode == "uint8":
        assert "x = pixels.astype(np.uint8)" in python
    elif mode == "int8":
        assert "np.int8" in python and "-128" in python


def test_python_snippet_runs_and_matches_validate(phone_bundle, phone_classifier):
    """The Python snippet, run as written on one test image, gives the scores LiteRT gives the
    validate path's input (the snippet is the app code, so it must be right, not only well named)."""
    from edgepack.calibration.evaluate import evaluation_data
    from edgepack.packaging.manifest import read_manifest
    from edgepack.runtimes.isolated import IsolatedRunner
    from edgepack.validation.data import source_specs

    for mode in ("int8-float-io", "uint8"):
        bundle = phone_bundle(mode)
        code = _blocks((bundle / "README.md").read_text())["Python (ai-edge-litert)"]
        image = sorted(phone_classifier["test"].iterdir())[0]
        scope: dict = {"path": image}
        code = code.replace('model_path="model.tflite"', f'model_path="{bundle / "model.tflite"}"')
        exec(compile(code, "snippet", "exec"), scope)  # noqa: S102 - our own generated snippet
        manifest = read_manifest(bundle)
        ds = evaluation_data(bundle, manifest, phone_classifier["test"], source_specs(manifest.inputs))
        with IsolatedRunner("litert", bundle / "model.tflite", manifest.inputs, manifest.outputs) as run:
            expected = run(next(iter(ds.batches(1))))[0]
        np.testing.assert_allclose(scope["scores"], expected, atol=1e-6)


def test_tensor_model_snippet_lists_every_input_and_output(tmp_path):
    from edgepack import api
    from tests.converter.onnx_builders import two_in_two_out

    model = two_in_two_out(tmp_path / "two.onnx")
    api.convert(model=model, output=tmp_path / "b", quantize="none", target="android-arm64")
    blocks = _check(tmp_path / "b")
    code = blocks["Python (ai-edge-litert)"]
    for name in ("image", "tokens", "feature_map", "score"):
        assert f'"{name}"' in code


def test_make_installs_the_phone_extra():
    """`make` installs the `phone` extra with the test extra (one pip resolution), so the MediaPipe
    tests run in `make test` and CI instead of skipping."""
    root = Path(__file__).resolve().parents[2]
    assert '-e ".[test,phone]"' in (root / "Makefile").read_text()
