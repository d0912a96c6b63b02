"""Speech made offline for the VAD rows: Debian's ``espeak-ng`` speaks sentences to WAV, which are
resampled to 16 kHz and laid out with pauses of silence over background noise (no download).

    python -m benchmarks.zoo.speech out.wav --seconds 10 --seed 0
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

RATE = 16000
SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Please turn off the lights in the kitchen.",
    "Tomorrow the weather will be cloudy with some rain.",
    "Set a timer for ten minutes and remind me later.",
    "The train to the airport leaves at half past nine.",
    "Could you read the last message again, slowly?",
    "Seven hundred and forty two people answered the survey.",
    "Open the window, it is getting warm in here.",
)


def espeak(text: str, voice: str = "en", speed: int = 150) -> np.ndarray:
    """``text`` spoken by espeak-ng, float32 at 16 kHz."""
    from scipy.signal import resample_poly

    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install -y espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "s.wav"
        subprocess.run([exe, "-v", voice, "-s", str(speed), "-w", str(out), text], check=True, capture_output=True,
                       timeout=60)
        with wave.open(str(out), "rb") as w:
            rate, raw = w.getframerate(), w.readframes(w.getnframes())
    audio = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    g = np.gcd(rate, RATE)
    return resample_poly(audio, RATE // g, rate // g).astype(np.float32)


def utterance_track(seconds: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``seconds`` of speech and silence over faint noise, and a per-sample 'speech here' mask."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    audio = np.zeros(n, np.float32)
    mask = np.zeros(n, bool)
    t = int(rng.uniform(0.3, 0.8) * RATE)
    while t < n:
        text = SENTENCES[int(rng.integers(len(SENTENCES)))]
        speech = espeak(text, voice=str(rng.choice(["en", "en-us", "en-gb"])), speed=int(rng.integers(130, 180)))
        speech *= float(rng.uniform(0.3, 0.8)) / (np.abs(speech).max() + 1e-9)
        end = min(n, t + len(speech))
        audio[t:end] = speech[:end - t]
        mask[t:end] = True
        t = end + int(rng.uniform(0.5, 1.5) * RATE)
    noise = rng.normal(0, 1, n).astype(np.float32)
    audio += 0.003 * noise  # a quiet room
    return np.clip(audio, -1, 1), mask


def write_wav(path: Path, audio: np.ndarray, rate: int = RATE) -> Path:
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    audio, mask = utterance_track(args.seconds, args.seed)
    write_wav(args.out, audio)
    print(f"wrote {args.out}: {args.seconds:g} s, {mask.mean():.0%} speech")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def vad_stream(onnx_path: Path, audio: np.ndarray, frame: int = 576, hop: int = 512) -> dict[str, np.ndarray]:
    """silero's windows over ``audio`` and the state onnxruntime carries into each (calibration data
    whose (input, state) pairs are the ones the model meets streaming)."""
    import onnxruntime as ort

    from edgepack.validation.frames import cut_frames

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    windows = cut_frames(audio, frame, hop).astype(np.float32)
    state = np.zeros((2, 1, 128), np.float32)
    states = []
    for w in windows:
        states.append(state)
        feed = {"input": w[None], "state": state, **({"sr": np.array(RATE, np.int64)} if "sr" in names else {})}
        state = sess.run(["stateN"], feed)[0]
    return {"input": windows, "state": np.stack(states)}
