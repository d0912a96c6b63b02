"""Offline speech for the VAD rows: espeak-ng speaks, the WAV reader reads it back in frames."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from benchmarks.zoo import speech
from edgepack.validation.frames import cut_frames, read_wav

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (make speech)")


def test_espeak_speech_with_pauses_reads_back_as_frames(tmp_path):
    audio, mask = speech.utterance_track(3.0, seed=0)
    assert len(audio) == 3 * speech.RATE and 0.2 < mask.mean() < 0.9  # speech and silence both
    assert np.abs(audio[mask]).mean() > 5 * np.abs(audio[~mask]).mean()
    back, rate = read_wav(speech.write_wav(tmp_path / "s.wav", audio))
    assert rate == 16000 and np.abs(back - audio).max() < 1e-4
    frames = cut_frames(back, 576, 512)
    assert frames.shape == (1 + int(np.ceil((len(back) - 576) / 512)), 576)
    np.testing.assert_array_equal(frames[1, :64], frames[0, 512:])  # 64 samples of context, as silero takes
