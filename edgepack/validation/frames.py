"""Frame sequences for streaming validation: a folder of WAV files (or one) cut into the model's frame
size, or an ``.npz`` of frame sequences keyed by input name.

WAV files are read with the standard library's ``wave`` module: 8-, 16-, 24- and 32-bit PCM, any
number of channels (averaged to mono), scaled to [-1, 1). Each file is one sequence; frames are
``frame`` samples every ``hop`` samples (silero's 576-sample window every 512 samples: ``--hop 512``).
"""

from __future__ import annotations

import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepack.errors import CalibrationError, UsageError


@dataclass(frozen=True)
class FrameSequence:
    """One stream: per frame input, an array of frames (T, *frame shape)."""

    name: str  # the WAV file or "npz[i]"
    frames: dict[str, np.ndarray]
    sample_rate: int | None = None

    def __len__(self) -> int:
        return len(next(iter(self.frames.values())))


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Mono float32 samples in [-1, 1) and the sample rate."""
    try:
        with wave.open(str(path), "rb") as w:
            width, channels, rate, n = w.getsampwidth(), w.getnchannels(), w.getframerate(), w.getnframes()
            raw = w.readframes(n)
    except (wave.Error, EOFError) as err:
        raise CalibrationError(f"{path}: not a PCM WAV file ({err})", hint="write 16-bit PCM WAV") from err
    if width == 1:
        data = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        data = ((b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8 >> 8).astype(np.float32) / float(1 << 23)
    elif width in (2, 4):
        data = np.frombuffer(raw, f"<i{width}").astype(np.float32) / float(1 << (8 * width - 1))
    else:
        raise CalibrationError(f"{path}: {8 * width}-bit samples are not supported", hint="write 16-bit PCM WAV")
    return data.reshape(-1, channels).mean(axis=1).astype(np.float32), rate


def cut_frames(audio: np.ndarray, frame: int, hop: int) -> np.ndarray:
    """(T, frame) windows every ``hop`` samples; the last partial window is zero-padded."""
    if len(audio) < frame:
        audio = np.pad(audio, (0, frame - len(audio)))
    count = 1 + int(np.ceil((len(audio) - frame) / hop))
    audio = np.pad(audio, (0, (count - 1) * hop + frame - len(audio)))
    return np.stack([audio[i * hop:i * hop + frame] for i in range(count)])


def wav_sequences(path: Path, input_name: str, frame_shape: Sequence[int], hop: int | None) -> list[FrameSequence]:
    """Every ``*.wav`` of a folder (sorted), or one file, as frame sequences for ``input_name``."""
    files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".wav") if path.is_dir() else [path]
    if not files:
        raise CalibrationError(f"{path}: no .wav files", hint="give a folder of WAV files or an .npz of frames")
    size = int(np.prod(frame_shape))
    if hop is not None and not 0 < hop <= size:
        raise UsageError(f"--hop {hop}: must be between 1 and the frame size {size}")
    out = []
    for f in files:
        audio, rate = read_wav(f)
        frames = cut_frames(audio, size, hop or size).reshape(-1, *frame_shape)
        out.append(FrameSequence(f.name, {input_name: frames}, rate))
    return out


def npz_sequences(path: Path, frame_shapes: dict[str, tuple[int, ...]]) -> list[FrameSequence]:
    """``.npz`` arrays keyed by frame input name: (T, *frame) is one sequence, (S, T, *frame) S of them."""
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise CalibrationError(f"{path}: not a readable .npz ({err})") from err
    with data:
        missing = [n for n in frame_shapes if n not in data.files]
        if missing:
            raise CalibrationError(f"{path}: no frames for input(s) {', '.join(missing)}",
                                   hint=f"store arrays named {', '.join(frame_shapes)} of shape (T, *frame) or "
                                        "(sequences, T, *frame)")
        arrays = {n: np.asarray(data[n]) for n in frame_shapes}
    seqs: dict[str, np.ndarray] = {}
    for name, arr in arrays.items():
        want = frame_shapes[name]
        if arr.ndim == len(want) + 1:
            arr = arr[None]
        if arr.ndim != len(want) + 2 or tuple(arr.shape[2:]) != tuple(want):
            raise CalibrationError(f"{path}: {name!r} has shape {list(arr.shape)}; frames of shape {list(want)} "
                                   "are stored as (T, *frame) or (sequences, T, *frame)")
        seqs[name] = arr
    counts = {arr.shape[:2] for arr in seqs.values()}
    if len(counts) != 1:
        raise CalibrationError(f"{path}: the inputs have different (sequences, frames) counts {sorted(counts)}")
    n_seq = next(iter(counts))[0]
    return [FrameSequence(f"{path.name}[{i}]", {k: v[i] for k, v in seqs.items()}) for i in range(n_seq)]
