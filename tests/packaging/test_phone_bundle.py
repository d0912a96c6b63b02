"""Goal of issue 23: a phone app framework uses the bundle as it is.

MediaPipe Tasks' ImageClassifier reads edgepack's LiteRT metadata (labels, normalization) and agrees
with the bundle as edgepack validate runs it; the metadata reads back equal with MediaPipe's schema
module; LiteRT and tflite-runtime load the model; the signatures carry the source names.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from edgepack.validation.intervals import wilson_interval
from tests.conftest import COLOR_LABELS

# CI installs the phone extra (make test): there a missing mediapipe is a failure, not a skip
mp = pytest.importorskip("mediapipe", reason="the phone extra (pip install edgepack[phone])") \
    if not os.environ.get("CI") else __import__("mediapipe")


def _validate_top1(bundle: Path, data: Path) -> dict[str, int]:
    """Per image, the bundle's top-1 as `edgepack validate` computes it: the recorded preprocessing,
    the manifest's quantization (camera pixels for uint8 inputs), LiteRT in the isolated child."""
    from edgepack.calibration.evaluate import evaluation_data
    from edgepack.packaging.manifest import read_manifest
    from edgepack.runtimes.isolated import IsolatedRunner
    from edgepack.validation.data import source_specs

    manifest = read_manifest(bundle)
    ds = evaluation_data(bundle, manifest, data, source_specs(manifest.inputs))
    files = sorted(p.name for p in data.iterdir())
    tops: list[int] = []
    with IsolatedRunner("litert", bundle / "model.tflite", manifest.inputs, manifest.outputs) as run:
        for chunk in ds.batches(64):
            tops.extend(int(i) for i in np.argmax(run(chunk)[0], axis=-1))
    assert len(tops) == len(files)
    return dict(zip(files, tops))


def _mediapipe_top1(bundle: Path, data: Path) -> dict[str, str]:
    from mediapipe.tasks.python import BaseOptions, vision
    from PIL import Image

    opts = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(bundle / "model.tflite")),
                                         max_results=1)
    out = {}
    with vision.ImageClassifier.create_from_options(opts) as clf:
        for f in sorted(data.iterdir()):
            image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.asarray(Image.open(f).convert("RGB")))
            out[f.name] = clf.classify(image).classifications[0].categories[0].category_name
    return out


@pytest.mark.parametrize("mode", ["int8-float-io", "uint8"])
def test_mediapipe_image_classifier_agrees_with_validate(phone_bundle, phone_classifier, mode):
    bundle = phone_bundle(mode)
    test = phone_classifier["test"]
    names = _mediapipe_top1(bundle, test)
    ours = _validate_top1(bundle, test)
    assert set(names.values()) <= set(COLOR_LABELS)  # category names come from the metadata
    assert None not in names.values()
    agree = sum(names[f] == COLOR_LABELS[ours[f]] for f in names)
    interval = wilson_interval(agree, len(names))
    low, high = interval.low, interval.high
    print(f"{mode}: MediaPipe vs validate top-1 agreement {agree}/{len(names)} (95% Wilson [{low:.4f}, {high:.4f}])")
    assert agree / len(names) >= 0.99
    correct = sum(names[f] == f.rsplit("_", 1)[1].removesuffix(".png") for f in names)
    assert correct / len(names) >= 0.9  # the classifier learned the colours: agreement is not on noise
    from edgepack import api

    report = api.validate(bundle=bundle, data=test)  # the command itself, against the Keras source
    assert report.samples == len(names) and report.top1_agreement >= 0.99


def test_metadata_reads_back_equal_with_the_schema_module(phone_bundle):
    from mediapipe.tasks.metadata import metadata_schema_py_generated as schema

    from edgepack.packaging import metadata as md
    from edgepack.packaging.manifest import read_manifest

    bundle = phone_bundle("int8-float-io")
    model = (bundle / "model.tflite").read_bytes()
    written = read_manifest(bundle).extras["metadata"]
    meta = md.read(model)
    buf = _metadata_buffer(model)
    m = schema.ModelMetadataT.InitFromPackedBuf(buf, 0)
    assert schema.ModelMetadata.ModelMetadataBufferHasIdentifier(buf, 0)
    assert m.name.decode() == written["name"] == "colours"
    assert m.description.decode() == written["description"]
    assert m.minParserVersion.decode() == written["min_parser_version"] == "1.0.0"
    sg = m.subgraphMetadata[0]
    image = sg.inputTensorMetadata[0]
    assert image.name.decode() == "image"
    assert image.content.contentPropertiesType == schema.ContentProperties.ImageProperties
    assert image.content.contentProperties.colorSpace == schema.ColorSpaceType.RGB
    size = image.content.contentProperties.defaultSize
    assert (size.width, size.height) == (16, 16)
    norm = image.processUnits[0].options
    assert image.processUnits[0].optionsType == schema.ProcessUnitOptions.NormalizationOptions
    assert list(norm.mean) == [127.5] and list(norm.std) == [127.5]
    assert list(image.stats.min) == [-1.0] and list(image.stats.max) == [1.0]
    scores = sg.outputTensorMetadata[0]
    assert scores.name.decode() == "scores"
    assert [d.decode() for d in scores.dimensionNames] == ["batch", "class"]
    assert list(scores.stats.min) == [0.0] and list(scores.stats.max) == [1.0]
    label_file = scores.associatedFiles[0]
    assert (label_file.name.decode(), label_file.type) == ("labels.txt", schema.AssociatedFileType.TENSOR_AXIS_LABELS)
    assert md.associated_file(model, "labels.txt").decode().split() == list(COLOR_LABELS)
    # edgepack's own reader (inspect) reads what the schema module reads
    assert {k: v for k, v in meta.items() if k != "files"} == {k: v for k, v in written.items() if k != "files"}


def _metadata_buffer(model: bytes) -> bytes:
    from ai_edge_litert import schema_py_generated as tfl

    m = tfl.Model.GetRootAsModel(model, 0)
    entries = {m.Metadata(i).Name().decode(): m.Metadata(i).Buffer() for i in range(m.MetadataLength())}
    assert "min_runtime_version" in entries  # the converter's own entries are kept
    return m.Buffers(entries["TFLITE_METADATA"]).DataAsNumpy().tobytes()


@pytest.mark.parametrize("mode", ["int8-float-io", "uint8"])
def test_runtimes_load_it_and_signatures_carry_source_names(phone_bundle, mode):
    from ai_edge_litert.interpreter import Interpreter as LiteRT
    from tflite_runtime.interpreter import Interpreter as TfliteRuntime

    from edgepack.packaging.manifest import read_manifest

    bundle = phone_bundle(mode)
    manifest = read_manifest(bundle)
    assert manifest.extras["signatures"]["serving_default"]["inputs"].keys() == {"image"}
    assert manifest.extras["signatures"]["serving_default"]["outputs"].keys() == {"scores"}
    dtype = np.uint8 if mode == "uint8" else np.float32
    x = np.full((1, 16, 16, 3), 128 if mode == "uint8" else 0.0, dtype)
    results = []
    for cls in (LiteRT, TfliteRuntime):
        interp = cls(model_path=str(bundle / "model.tflite"))
        assert interp.get_signature_list() == {"serving_default": {"inputs": ["image"], "outputs": ["scores"]}}
        results.append(interp.get_signature_runner("serving_default")(image=x)["scores"])
    np.testing.assert_array_equal(results[0], results[1])


def test_uint8_input_is_camera_pixels(phone_bundle):
    from edgepack.packaging.manifest import read_manifest

    m = read_manifest(phone_bundle("uint8"))
    image, scores = m.inputs[0], m.outputs[0]
    assert m.quantization.mode == "uint8"
    assert (image.dtype, scores.dtype) == ("uint8", "uint8")
    assert image.scale == pytest.approx(1 / 127.5) and image.zero_point == 128  # pixel p means (p - 128) / 127.5
    assert scores.scale is not None and scores.zero_point is not None


def test_no_metadata_leaves_the_model_without_it(phone_bundle):
    from edgepack.packaging import metadata as md
    from edgepack.packaging.manifest import read_manifest

    bundle = phone_bundle("int8-float-io", metadata=False)
    assert md.read((bundle / "model.tflite").read_bytes()) is None
    assert "metadata" not in read_manifest(bundle).extras
    with_meta = phone_bundle("int8-float-io")
    assert (bundle / "model.tflite").stat().st_size < (with_meta / "model.tflite").stat().st_size


def test_given_metadata_fields_and_reproduce_is_byte_identical(phone_bundle, tmp_path):
    from edgepack import api
    from edgepack.packaging import metadata as md

    bundle = phone_bundle("uint8", model_name="Colour classifier", author="edgepack tests", license="Apache-2.0",
                          model_version="3", description="Four colours")
    meta = md.read((bundle / "model.tflite").read_bytes())
    assert (meta["name"], meta["author"], meta["license"], meta["version"], meta["description"]) == (
        "Colour classifier", "edgepack tests", "Apache-2.0", "3", "Four colours")
    assert meta["files"] == ["labels.txt"]
    result = api.reproduce(bundle=bundle, output=tmp_path / "again")
    assert result["identical"], result
    shown = api.inspect(path=bundle)
    assert shown["metadata"]["name"] == "Colour classifier"
    assert json.dumps(shown["metadata"])  # plain data
