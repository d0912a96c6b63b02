"""validate --stream: a tiny LSTM with a [2, batch, H] state streamed frame by frame through LiteRT,
TFLite Micro and onnxruntime, each carrying its own state."""

from __future__ import annotations

import json
import wave

import numpy as np
import pytest
from click.testing import CliRunner

from edgepack import api
from edgepack.cli import main
from tests.converter.stream_builders import lstm_state, stream_frames


@pytest.fixture(scope="module")
def streamed(tmp_path_factory):
    d = tmp_path_factory.mktemp("stream")
    model = lstm_state(d / "lstm.onnx")
    np.savez(d / "calib.npz", **stream_frames(model, 120, seed=1))
    api.convert(model=model, output=d / "float", quantize="none")
    api.convert(model=model, output=d / "mcu", target="cortex-m4", quantize="int8", calibration=d / "calib.npz",
                calibration_samples=120)
    frames = np.stack([stream_frames(model, 20, seed=s)["x"] for s in (7, 8)])  # 2 sequences of 20 frames
    np.savez(d / "frames.npz", x=frames)
    return d, model


def test_ranges_are_not_chosen_by_default_for_a_model_with_state(streamed):
    from edgepack.packaging.manifest import read_manifest

    d, _ = streamed
    assert "recurrent state" in read_manifest(d / "mcu").extras["ptq"]["ranges"]["skipped"]


def test_stream_float_bundle_matches_every_frame(streamed):
    d, model = streamed
    res = CliRunner().invoke(main, ["validate", str(d / "float"), "--data", str(d / "frames.npz"), "--reference",
                                    str(model), "--stream", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["frames"] == 40 and report["sequences"] == 2 and report["runtimes"] == ["litert"]
    prob = report["outputs"]["litert"]["prob"]
    assert len(prob["per_frame_sqnr_db"]) == 40 and prob["frames_below_60db"] == 0
    assert report["outputs"]["litert"]["stateN"]["frames_below_60db"] == 0  # the state carried stays exact
    assert report["decisions"]["litert"]["prob"]["agreement"] == 1.0
    assert (d / "float" / "validation_stream.json").is_file()


def test_stream_is_automatic_and_runs_tflm_with_the_state(streamed):
    d, model = streamed
    res = CliRunner().invoke(main, ["validate", str(d / "mcu"), "--data", str(d / "frames.npz"), "--reference",
                                    str(model), "--json"])  # no --stream: the data holds no state
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["runtimes"] == ["litert", "tflm"] and report["frames"] == 40
    for kind in ("litert", "tflm"):
        worst = report["outputs"][kind]["prob"]["worst_frame"]
        assert worst["sequence"] in ("frames.npz[0]", "frames.npz[1]") and 0 <= worst["frame"] < 20
        assert report["outputs"][kind]["prob"]["median_sqnr_db"] > 15
        lo, hi = report["decisions"][kind]["prob"]["interval95"]
        assert lo <= report["decisions"][kind]["prob"]["agreement"] <= hi


def test_stream_cuts_wav_files_into_frames(streamed, tmp_path):
    d, model = streamed
    audio = (np.sin(np.arange(8 * 30) / 5.0) * 0.5 * 32767).astype("<i2")
    with wave.open(str(tmp_path / "a.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(audio.tobytes())
    report = api.validate_stream(bundle=d / "float", data=tmp_path, reference=model, hop=4)
    assert report.sequences == 1 and report.frames == 1 + (8 * 30 - 8) // 4  # 8-sample frames every 4 samples
    assert report.outputs["litert"]["prob"]["frames_below_60db"] == 0


def test_stream_needs_state_pairs(tmp_path):
    from tests.converter.stream_builders import at_names

    model = at_names(tmp_path / "m.onnx")
    api.convert(model=model, output=tmp_path / "b", quantize="none")
    np.savez(tmp_path / "f.npz", x=np.zeros((3, 6), np.float32))
    res = CliRunner().invoke(main, ["validate", str(tmp_path / "b"), "--data", str(tmp_path / "f.npz"), "--stream"])
    assert res.exit_code == 2 and "records no recurrent state pairs" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_int16x8_on_a_microcontroller_streams_on_tflm_closer_than_int8(streamed):
    # cortex-m4 allows int16x8 (TFLM's int16 kernels): a recurrent state int8 cannot carry keeps its precision
    d, model = streamed
    api.convert(model=model, output=d / "mcu16", target="cortex-m4", quantize="int16x8", calibration=d / "calib.npz",
                calibration_samples=120)
    reports = {name: api.validate_stream(bundle=d / name, data=d / "frames.npz", reference=model)
               for name in ("mcu", "mcu16")}
    assert reports["mcu16"].runtimes == ["litert", "tflm"]
    median = {name: r.outputs["tflm"]["prob"]["median_sqnr_db"] for name, r in reports.items()}
    print("TFLM median SQNR int8 / int16x8", median)
    assert median["mcu16"] > median["mcu"] + 10, median
