"""TensorFlow Lite Micro on the host: the exact tensor arena a model needs, running it, and the
builtin ops the interpreter registers.

Everything here goes through the ``tflite_micro`` package's Python interpreter (the reference
kernels of TFLM, compiled for the host), so the numbers come from TFLM itself, not a model of it.
The host is 64-bit: TFLM's pointer-holding structs (node and eval-tensor records) are larger than
on a 32-bit Cortex-M, so the arena measured here is an upper bound for those parts. Optimized
kernels (CMSIS-NN, ESP-NN) may ask for scratch buffers the reference kernels do not; the target's
``arena_margin_percent`` covers that in the generated firmware.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepack._native import capture_native_output
from edgepack.errors import RuntimeUnavailable
from edgepack.packaging.manifest import TensorInfo

log = logging.getLogger(__name__)

_TOTAL = re.compile(r"Arena allocation total (\d+) bytes")
_HEAD = re.compile(r"Arena allocation head (\d+) bytes")
_TAIL = re.compile(r"Arena allocation tail (\d+) bytes")
_MAX_ARENA = 256 * 1024 * 1024  # beyond any microcontroller; stops the doubling search
_PROBE_TIMEOUT = 600  # seconds for the child process that measures the arena
# TFLM's words when the arena is too small (allocator and planner messages differ).
_OUT_OF_ARENA = re.compile(r"failed to allocate|unable to allocate|failed to resize buffer|missing: \d+|too many buffers",
                           re.IGNORECASE)


@dataclass(frozen=True)
class ArenaMeasurement:
    """Bytes of tensor arena TFLM used to allocate and run the model once."""

    total: int  # the smallest arena that works: allocating with it succeeds (checked)
    head: int  # non-persistent (activations, scratch): reused between layers
    tail: int  # persistent (tensor structs, kernel data)

    def to_dict(self) -> dict[str, int]:
        return {"arena_bytes": self.total, "arena_head_bytes": self.head, "arena_tail_bytes": self.tail}


def tflm_runtime():
    try:
        from tflite_micro import runtime
    except ImportError as err:
        raise RuntimeUnavailable(f"TFLite Micro's Python interpreter is not installed ({err})",
                                 hint="pip install tflite-micro") from err
    return runtime


def _interpreter(model: bytes, arena_size: int):
    """A TFLM interpreter with tensors allocated; ``None`` if ``arena_size`` is too small."""
    runtime = tflm_runtime()
    with capture_native_output() as cap:
        try:
            return runtime.Interpreter.from_bytes(model, arena_size=arena_size)
        except RuntimeError:
            pass
    if not _OUT_OF_ARENA.search(cap.text):  # not a size problem: an unsupported op, a bad model
        raise RuntimeUnavailable(f"TFLite Micro cannot load the model: {_first_error(cap.text)}")
    return None


def _first_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0] if lines else "no message"


def _zeros_for(interp, index: int) -> np.ndarray:
    d = interp.get_input_details(index)
    return np.zeros(tuple(int(x) for x in d["shape"]), dtype=d["dtype"])


def _invoke_once(interp, n_inputs: int) -> None:
    for i in range(n_inputs):
        interp.set_input(_zeros_for(interp, i), i)
    with capture_native_output():
        interp.invoke()


def measure_arena(model: bytes, n_inputs: int) -> ArenaMeasurement:
    """The smallest tensor arena TFLM allocates ``model`` in, measured in a child process.

    Isolated because TFLM can crash (SIGSEGV) instead of failing cleanly on some too-small arenas
    while the search probes them; a crash then becomes one clear error, not a dead edgepack.
    """
    with tempfile.TemporaryDirectory(prefix="edgepack-tflm-") as tmp:
        path = Path(tmp) / "model.tflite"
        path.write_bytes(model)
        try:
            proc = subprocess.run([sys.executable, "-m", "edgepack.runtimes.tflm", str(path), str(n_inputs)],
                                  capture_output=True, text=True, timeout=_PROBE_TIMEOUT, check=False)
        except subprocess.TimeoutExpired as err:
            raise RuntimeUnavailable(f"TFLite Micro did not finish allocating the model in {_PROBE_TIMEOUT}s") from err
    if proc.returncode < 0:
        raise RuntimeUnavailable(f"TFLite Micro crashed (signal {-proc.returncode}) while allocating the model",
                                 hint="the model may use an op or shape TFLite Micro's kernels do not handle")
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()] or ["no message"]
        raise RuntimeUnavailable(lines[-1].removeprefix("error: "))
    return ArenaMeasurement(**json.loads(proc.stdout.strip().splitlines()[-1]))


def _measure_arena_here(model: bytes, n_inputs: int) -> ArenaMeasurement:
    """Allocate and invoke in TFLM, read the recording allocator's totals, then search for the
    smallest arena that really allocates: the report leaves out temporary planning space, so it can
    be too small, and it is never trusted without an allocation that proves it."""
    size = max(64 * 1024, 4 * len(model))
    interp = _interpreter(model, size)
    while interp is None:
        size *= 2
        if size > _MAX_ARENA:
            raise RuntimeUnavailable(f"TFLite Micro could not allocate the model in {_MAX_ARENA} bytes")
        interp = _interpreter(model, size)
    _invoke_once(interp, n_inputs)
    with capture_native_output() as cap:
        interp.print_allocations()
    found = [rx.search(cap.text) for rx in (_TOTAL, _HEAD, _TAIL)]
    if not all(found):
        raise RuntimeUnavailable("TFLite Micro did not report its arena usage; is tflite-micro too old?")
    total, head, tail = (int(m.group(1)) for m in found)
    if _allocates(model, total):
        return ArenaMeasurement(total=total, head=head, tail=tail)
    lo, hi = total, size  # lo fails, hi allocates; bisect down to 16-byte granularity
    while hi - lo > 16:
        mid = (lo + hi) // 2 // 16 * 16
        if mid <= lo:
            break
        if _allocates(model, mid):
            hi = mid
        else:
            lo = mid
    return ArenaMeasurement(total=hi, head=head, tail=tail)


def _allocates(model: bytes, size: int) -> bool:
    """Whether TFLM allocates ``model`` in ``size`` bytes, tried in a forked child: some of TFLM's
    int16 kernels crash (SIGSEGV) instead of failing when the arena is a little too small (a tiny
    int16x8 LSTM: 5,184 bytes crash, 5,600 fail cleanly, 7,600 allocate). A crash counts as too small."""
    import os

    if not hasattr(os, "fork"):
        return _interpreter(model, size) is not None
    pid = os.fork()
    if pid == 0:  # the child: only TFLM's allocation, then out without Python's clean-up
        try:
            ok = _interpreter(model, size) is not None
        except BaseException:  # noqa: BLE001 - the parent reads only the exit code
            os._exit(2)
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        log.debug("TFLM crashed (signal %d) allocating in %d bytes: counted as too small", os.WTERMSIG(status), size)
        return False
    if os.WEXITSTATUS(status) == 2:
        return _interpreter(model, size) is not None  # an error, not a size: the caller's path reports it
    return os.WEXITSTATUS(status) == 0


class TflmRunner:
    """TFLM for one model: float chunks in, dequantized outputs (source order) out, one sample per
    invoke as on a device. Runs inside the isolated child (:mod:`edgepack.runtimes.isolated`)."""

    def __init__(self, model: bytes, arena: int, inputs: list[TensorInfo], outputs: list[TensorInfo]) -> None:
        from edgepack.tflite_model import read_tflite

        info = read_tflite(model)
        interp = _interpreter(model, arena)
        if interp is None:
            raise RuntimeUnavailable(f"TFLite Micro could not allocate the model in its measured arena ({arena} bytes)")
        self.interp, self.inputs, self.outputs = interp, inputs, outputs
        self.in_pos = [info.inputs.index(t.index) for t in inputs]
        self.out_pos = [info.outputs.index(t.index) for t in outputs]

    def __call__(self, chunk: dict[str, np.ndarray]) -> list[np.ndarray]:
        from edgepack.runtimes.litert import dequantize, quantize

        n = len(next(iter(chunk.values())))
        parts: list[list[np.ndarray]] = [[] for _ in self.outputs]
        for k in range(n):
            for t, pos in zip(self.inputs, self.in_pos):
                self.interp.set_input(quantize(chunk[t.name][k:k + 1], t).reshape(t.shape), pos)
            with capture_native_output():
                self.interp.invoke()
            for i, (t, pos) in enumerate(zip(self.outputs, self.out_pos)):
                whole = t.shape if t.sample_axis is None else t.shape[1:]  # recurrent state: one whole sample
                parts[i].append(dequantize(np.asarray(self.interp.get_output(pos)), t).reshape(1, *whole))
        return [np.concatenate(p, axis=0) for p in parts]


def _main(argv: list[str]) -> int:
    """Child-process entry for :func:`measure_arena`: prints the measurement as JSON."""
    try:
        m = _measure_arena_here(Path(argv[0]).read_bytes(), int(argv[1]))
    except RuntimeUnavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    print(json.dumps({"total": m.total, "head": m.head, "tail": m.tail}))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
