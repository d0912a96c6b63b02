"""Interpreters in a child process: a native crash on a bad model becomes one line, not a dead edgepack.

The parent streams chunks of float samples to the child over a pipe and reads dequantized outputs
back, one chunk at a time, so memory stays at a chunk whatever the data size. The framing is a
JSON header line (dtypes and shapes, or an error) followed by raw array bytes: nothing is pickled.
The child is ``python -m edgepack.runtimes.isolated``; it never imports TensorFlow.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any, Self

import numpy as np

from edgepack.errors import RuntimeUnavailable

_NAMES = {"litert": "LiteRT", "tflite-runtime": "tflite-runtime", "tflm": "TFLite Micro"}


def write_frame(f: IO[bytes], arrays: list[np.ndarray] | None = None, *, error: str | None = None) -> None:
    if error is not None:
        f.write(json.dumps({"error": error}).encode() + b"\n")
    else:
        arrays = [np.ascontiguousarray(a) for a in arrays or []]
        f.write(json.dumps({"arrays": [[a.dtype.str, list(a.shape)] for a in arrays]}).encode() + b"\n")
        for a in arrays:
            f.write(a.tobytes())
    f.flush()


def read_frame(f: IO[bytes]) -> list[np.ndarray] | None:
    """The arrays of the next frame; None at end of stream; :class:`_ChildError` for an error frame."""
    line = f.readline()
    if not line:
        return None
    head = json.loads(line)
    if "error" in head:
        raise _ChildError(head["error"])
    out = []
    for dtype, shape in head["arrays"]:
        dt = np.dtype(dtype)
        if dt.hasobject:
            raise ValueError("object arrays are not accepted")
        size = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        raw = f.read(size)
        if len(raw) != size:
            return None
        out.append(np.frombuffer(raw, dt).reshape(shape))
    return out


class _ChildError(Exception):
    """An error the child reported in words (an EdgepackError message)."""


class IsolatedRunner:
    """``run(chunk) -> outputs`` for ``kind`` (``litert``, ``tflite-runtime``, ``tflm``) in a child process.

    Use as a context manager; a crash, an early exit or an error in the child raises
    :class:`RuntimeUnavailable` with one line naming the runtime, the model and the signal.
    """

    def __init__(self, kind: str, model_path: Path, inputs: list, outputs: list, *, arena: int | None = None) -> None:
        self.kind, self.model_path, self.inputs = kind, Path(model_path), inputs
        self.config = {"kind": kind, "model": str(model_path), "arena": arena,
                       "inputs": [asdict(t) for t in inputs], "outputs": [asdict(t) for t in outputs]}
        self.proc: subprocess.Popen | None = None
        self.stderr: IO[bytes] | None = None

    def __enter__(self) -> Self:
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-m", "edgepack.runtimes.isolated"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr)
        self._exchange(lambda f: f.write(json.dumps(self.config).encode() + b"\n"))  # the child answers "ready"
        return self

    def __call__(self, chunk: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self._exchange(lambda f: write_frame(f, [np.asarray(chunk[t.name], np.float32) for t in self.inputs]))

    def _exchange(self, send) -> list[np.ndarray]:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        try:
            send(self.proc.stdin)
            self.proc.stdin.flush()
            out = read_frame(self.proc.stdout)
        except _ChildError as err:
            self.close()
            raise RuntimeUnavailable(str(err)) from None
        except (BrokenPipeError, ConnectionResetError):
            out = None
        if out is None:
            raise self._died()
        return out

    def _died(self) -> RuntimeUnavailable:
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        name = _NAMES.get(self.kind, self.kind)
        if code < 0:
            try:
                sig = signal.Signals(-code).name
            except ValueError:
                sig = f"signal {-code}"
            return RuntimeUnavailable(
                f"{name} crashed ({sig}) running {self.model_path}; edgepack stopped it safely",
                hint="the model may be corrupt or use an op or shape this runtime's kernels mishandle; "
                     "re-create the bundle, or try --runtime tflite-runtime")
        return RuntimeUnavailable(f"{name} stopped (exit {code}) running {self.model_path}: {self._last_line()}")

    def _last_line(self) -> str:
        if self.stderr is None:
            return "no message"
        self.stderr.seek(0)
        lines = [ln.strip() for ln in self.stderr.read().decode("utf-8", "replace").splitlines() if ln.strip()]
        return lines[-1] if lines else "no message"

    def close(self) -> None:
        if self.proc is not None:
            for stream in (self.proc.stdin, self.proc.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if self.stderr is not None:
            self.stderr.close()
            self.stderr = None

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_dataset(runtime: str, model_path: Path, inputs: list, outputs: list, data,
                progress=None, arena: int | None = None) -> list[np.ndarray]:
    """Dequantized outputs (source order) for every sample of ``data`` on ``runtime`` ("litert",
    "tflite-runtime" or "tflm"), in an isolated child. Holds every output in memory: for tests and
    small data; ``validate`` streams through :class:`IsolatedRunner` instead."""
    if runtime == "tflm" and arena is None:
        from edgepack.runtimes.tflm import measure_arena
        from edgepack.tflite_model import read_tflite

        model = Path(model_path).read_bytes()
        arena = measure_arena(model, len(read_tflite(model).inputs)).total
    results: list[list[np.ndarray]] = [[] for _ in outputs]
    kw = {"arena": arena} if runtime == "tflm" else {}
    with IsolatedRunner(runtime, model_path, inputs, outputs, **kw) as run:
        for chunk in data.batches(64):
            for i, out in enumerate(run(chunk)):
                results[i].append(out)
            if progress:
                progress(len(next(iter(chunk.values()))))
    return [np.concatenate(r, axis=0) for r in results]


def _make_runner(config: dict[str, Any]):
    from edgepack.packaging.manifest import TensorInfo
    from edgepack.tflite_model import read_tflite

    model_path = Path(config["model"])
    inputs = [TensorInfo(**t) for t in config["inputs"]]
    outputs = [TensorInfo(**t) for t in config["outputs"]]
    model = model_path.read_bytes()
    read_tflite(model)  # verified again here: the child never trusts what it is handed
    if config["kind"] == "tflm":
        from edgepack.runtimes.tflm import TflmRunner

        return TflmRunner(model, int(config["arena"]), inputs, outputs)
    from edgepack.runtimes.litert import Runtime, TfliteRunner

    return TfliteRunner(Runtime(config["kind"]), model_path, inputs, outputs)


def _main() -> int:
    """Child: config line, then one output frame per input frame until the parent closes the pipe."""
    from edgepack.errors import EdgepackError

    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # native prints to stdout must not mix into the frames
    inp = sys.stdin.buffer
    name = "the runtime"
    try:
        config = json.loads(inp.readline())
        name = _NAMES.get(config["kind"], config["kind"])
        runner = _make_runner(config)
        names = [t["name"] for t in config["inputs"]]
        write_frame(out, [])
        while (frame := read_frame(inp)) is not None:
            write_frame(out, runner(dict(zip(names, frame))))
    except EdgepackError as err:
        write_frame(out, error=_one_line(str(err)))
        return 1
    except Exception as err:  # noqa: BLE001 - a Python-level failure inside an interpreter: still one line
        write_frame(out, error=_one_line(f"{name} failed: {type(err).__name__}: {err}"))
        return 1
    return 0


def _one_line(text: str) -> str:
    return "; ".join(ln.strip() for ln in text.splitlines() if ln.strip())

if __name__ == "__main__":
    sys.exit(_main())
