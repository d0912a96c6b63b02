"""TensorFlow's int8/int16x8 calibration in a child process, so a native crash cannot take edgepack down.

The calibrator runs the float model over every calibration sample inside TensorFlow Lite's C++
code, and on some real graphs (recurrent layers: UNIDIRECTIONAL_SEQUENCE_LSTM, WHILE) it dies with
a segmentation fault. Only that step runs in the child: the parent converts the graph as usual and
hands over the float flatbuffer; the samples are streamed through the child's stdin (``.npy``
records), so nothing is held twice and nothing large is written to disk.

The child loads TensorFlow Lite's calibration extension by file, without importing TensorFlow
(importing TensorFlow would add seconds to every calibrated conversion); it needs only NumPy.

The same child can also *observe* a float model's tensors (:func:`observe`): per tensor index,
the min/max it takes over the samples, each tensor made a graph output so that it keeps its own
buffer; that is edgepack's one-pass calibration (:mod:`edgepack.converter.minmax`) and how
:func:`edgepack.converter.requantize.repair_ranges` checks the ranges TensorFlow's calibrator recorded.

    python -m edgepack.converter.isolate FOLDER   # FOLDER/in.tflite, FOLDER/args.json -> FOLDER/out.tflite
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from edgepack.errors import ConversionError

log = logging.getLogger(__name__)

# TFLite builtin ops whose calibration is known to crash TensorFlow's calibrator (upstream issues
# on recurrent layers); named in the one-line error when a crash happens.
RISKY_OPS = ("UNIDIRECTIONAL_SEQUENCE_LSTM", "BIDIRECTIONAL_SEQUENCE_LSTM", "UNIDIRECTIONAL_SEQUENCE_RNN",
             "BIDIRECTIONAL_SEQUENCE_RNN", "WHILE", "IF", "CALL_ONCE", "VAR_HANDLE", "READ_VARIABLE",
             "ASSIGN_VARIABLE", "GRU")


class NativeCrash(ConversionError):
    """The calibration child died from a signal (segmentation fault, abort...)."""

    def __init__(self, message: str, *, signal_name: str, hint: str | None = None) -> None:
        self.signal_name = signal_name
        super().__init__(message, hint=hint)


def calibrate(model: bytes, samples: Iterable[Sequence[np.ndarray]], *, quantize: dict | None = None,
              verbose: bool = False, stage: str = "calibration") -> bytes:
    """Feed ``samples`` (arrays in the model's input-tensor order) through TFLite's calibrator in a
    child process. Returns the calibrated model, or with ``quantize`` (the old quantizer's
    QuantizeModel arguments) the quantized one. A crash becomes :class:`NativeCrash`."""
    return _run_child(model, samples, {"quantize": quantize}, verbose, stage)


def observe(model: bytes, samples: Iterable[Sequence[np.ndarray]], tensors: Sequence[int], *,
            verbose: bool = False, stage: str = "range check", workers: int | None = None) -> dict[int, tuple[float, float]]:
    """The min/max each of ``tensors`` (indices) takes over ``samples`` when ``model`` (float) runs
    on LiteRT: ``{index: (min, max)}``, NaN skipped. Every tensor asked for is made an output of the
    graph, so each has a buffer of its own (nothing is computed in place over it) and LiteRT's
    optimized kernels (XNNPACK) write it out; graph inputs are read from the samples themselves.
    ``workers`` children (default :func:`observe_workers`) take the samples in turn, the cores shared
    among them: the min/max of a tensor does not depend on which child saw which sample, and each child's
    reading of its outputs then overlaps the other's model run (common_det's 200 samples: 46 ms a sample
    with one child on 2 threads, 41 with two on one each). A second child holds a second copy of the model and
    of every read tensor's buffer: one child only where that would pass :data:`CHILD_MEMORY`."""
    from edgepack.converter.minmax import with_outputs

    tensors = [int(t) for t in tensors]
    observed = with_outputs(model, tensors)
    n = observe_workers(observed, tensors) if workers is None else max(1, workers)
    threads = max(1, (os.cpu_count() or 1) // n)
    outs = _run_children(observed, samples, {"observe": tensors, "threads": threads}, verbose, stage, n)
    seen: dict[int, tuple[float, float]] = {}
    for out in outs:
        for k, (lo, hi) in json.loads(out).items():
            old = seen.get(int(k), (lo, hi))
            seen[int(k)] = (float(min(old[0], lo)), float(max(old[1], hi)))
    return seen


CHILD_MEMORY = 1 << 30  # bytes a second observing child may add (the model and every read tensor's buffer)


def observe_workers(model: bytes, tensors: Sequence[int]) -> int:
    """Children for :func:`observe`: two where there are two cores or more and a second copy of the model with
    its read tensors' buffers (float32, a dynamic dimension counted as 1) stays under :data:`CHILD_MEMORY`,
    else one."""
    from ai_edge_litert import schema_py_generated as schema

    if (os.cpu_count() or 1) < 2:
        return 1
    sg = schema.Model.GetRootAsModel(model, 0).Subgraphs(0)
    buffers = sum(4 * int(np.prod(np.abs(sg.Tensors(t).ShapeAsNumpy()) if sg.Tensors(t).ShapeLength() else 1))
                  for t in tensors)
    return 2 if len(model) + buffers < CHILD_MEMORY else 1


def _run_child(model: bytes, samples: Iterable[Sequence[np.ndarray]], args: dict, verbose: bool, stage: str) -> bytes:
    return _run_children(model, samples, args, verbose, stage, 1)[0]


def _run_children(model: bytes, samples: Iterable[Sequence[np.ndarray]], args: dict, verbose: bool, stage: str,
                  workers: int) -> list[bytes]:
    """``workers`` children on the same model and arguments, the samples dealt to them in turn; what each wrote."""
    with tempfile.TemporaryDirectory(prefix="edgepack-calibrate-") as tmp, contextlib.ExitStack() as stack:
        folders = [Path(tmp) / f"w{k}" for k in range(workers)]
        procs, logs = [], []
        for folder in folders:
            folder.mkdir()
            (folder / "in.tflite").write_bytes(model)
            (folder / "args.json").write_text(json.dumps(args))
            err_log = stack.enter_context(open(folder / "child.log", "w+b"))
            procs.append(subprocess.Popen([sys.executable, "-m", "edgepack.converter.isolate", str(folder)],
                                          stdin=subprocess.PIPE, stdout=None if verbose else err_log,
                                          stderr=None if verbose else err_log, env=_child_env()))
            logs.append(err_log)
        fed = _feed(procs, samples)
        codes = [proc.wait() for proc in procs]
        for code, err_log in zip(codes, logs):
            err_log.seek(0)
            said = err_log.read().decode("utf-8", "replace")
            if code < 0:
                name = _signal_name(-code)
                raise NativeCrash(f"TensorFlow Lite crashed during {stage} ({name}) after {fed} sample(s)",
                                  signal_name=name)
            if code != 0:
                lines = [ln.strip() for ln in said.strip().splitlines() if ln.strip()]
                raise ConversionError(f"TensorFlow Lite {stage} failed: {(lines or [f'exit status {code}'])[-1][:300]}",
                                      hint="run with -v for the calibrator's log")
        return [(folder / ("out.json" if "observe" in args else "out.tflite")).read_bytes() for folder in folders]


def _child_env() -> dict[str, str]:
    """The environment with this edgepack first on the path, however the parent found it."""
    import edgepack

    root = str(Path(edgepack.__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}


def _feed(procs: list[subprocess.Popen], samples: Iterable[Sequence[np.ndarray]]) -> int:
    """Stream the samples into the children, in turn; returns how many went through (a crash closes a pipe
    and ends the feeding)."""
    count = 0
    pipes = [_Stream(proc.stdin) for proc in procs]
    try:
        for arrays in samples:
            pipe = pipes[count % len(pipes)]
            np.lib.format.write_array(pipe, np.asarray(len(arrays), np.int64), allow_pickle=False)
            for arr in arrays:
                np.lib.format.write_array(pipe, np.ascontiguousarray(arr), allow_pickle=False)
            count += 1
    except (BrokenPipeError, OSError):
        pass  # a child died; its exit status says how
    for proc, pipe in zip(procs, pipes):
        try:
            np.lib.format.write_array(pipe, np.asarray(-1, np.int64), allow_pickle=False)
        except (BrokenPipeError, OSError):
            pass
        try:
            proc.stdin.close()
        except OSError:
            pass
    return count


class _Stream:
    """A pipe seen as a plain stream: NumPy reads and writes real file objects with fromfile() and
    tofile(), which need a file position a pipe does not have and bypass its buffer."""

    def __init__(self, raw) -> None:
        self.read = getattr(raw, "read", None)
        self.write = getattr(raw, "write", None)


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def crash_hint(op_counts: dict[str, int], mode: str) -> str:
    """What probably crashed and what to try instead, for the one-line error."""
    risky = [op for op in RISKY_OPS if op in op_counts]
    cause = f"likely cause: {', '.join(risky)} in the graph (recurrent ops crash TensorFlow's calibration); " \
        if risky else ""
    other = "dynamic or float16" if mode == "int16x8" else "int16x8 or dynamic"
    return f"{cause}try --quantize {other.replace(' or ', ' or --quantize ')}"


# -- the child -------------------------------------------------------------------------------------
def _calibration_wrapper():
    """TFLite's calibration extension, loaded by file so that TensorFlow itself is not imported."""
    spec = importlib.util.find_spec("tensorflow")
    base = Path(spec.origin).parent / "lite" / "python" / "optimize" if spec and spec.origin else None
    found = sorted(base.glob("_pywrap_tensorflow_lite_calibration_wrapper*.so")) if base else []
    if not found:  # an unusual TensorFlow layout: the ordinary (slow) import
        from tensorflow.lite.python.optimize import (
            _pywrap_tensorflow_lite_calibration_wrapper as mod,
        )

        return mod
    mod_spec = importlib.util.spec_from_file_location("_pywrap_tensorflow_lite_calibration_wrapper", found[0])
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


def _read_samples(raw):
    stream = _Stream(raw)
    while True:
        n = int(np.lib.format.read_array(stream, allow_pickle=False))
        if n < 0:
            return
        yield [np.lib.format.read_array(stream, allow_pickle=False) for _ in range(n)]


def _observe_main(folder: Path, tensors: list[int], threads: int | None = None) -> None:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(folder / "in.tflite"), num_threads=threads or os.cpu_count() or 1)
    inputs = [d["index"] for d in interp.get_input_details()]
    lo = np.full(len(tensors), np.inf)
    hi = np.full(len(tensors), -np.inf)
    position = {t: k for k, t in enumerate(tensors)}
    read = [(k, t) for k, t in enumerate(tensors) if t not in inputs]
    shapes = None
    for arrays in _read_samples(sys.stdin.buffer):
        if [a.shape for a in arrays] != shapes:
            for idx, a in zip(inputs, arrays):
                interp.resize_tensor_input(idx, list(a.shape))
            interp.allocate_tensors()
            shapes = [a.shape for a in arrays]
        for idx, a in zip(inputs, arrays):
            interp.set_tensor(idx, a)
            if idx in position and a.dtype == np.float32:
                _update(lo, hi, position[idx], a)
        interp.invoke()
        for k, t in read:
            _update(lo, hi, k, interp.tensor(t)())  # a view of an output buffer: nothing is copied
    # a tensor that never held a value (empty, or NaN only) gets no range, as in TensorFlow's calibrator
    (folder / "out.json").write_text(json.dumps({t: [lo[k], hi[k]] for k, t in enumerate(tensors) if lo[k] <= hi[k]}))


def _update(lo: np.ndarray, hi: np.ndarray, k: int, values: np.ndarray) -> None:
    """Widen ``lo[k]``/``hi[k]`` to ``values``; NaN values are skipped (as TensorFlow's calibrator does)."""
    if not values.size:
        return
    a, b = values.min(), values.max()
    if np.isnan(a) or np.isnan(b):
        finite = values[~np.isnan(values)]
        if not finite.size:
            return
        a, b = finite.min(), finite.max()
    lo[k], hi[k] = min(lo[k], float(a)), max(hi[k], float(b))


def child_main(folder: Path) -> None:
    args = json.loads((folder / "args.json").read_text())
    if "observe" in args:
        _observe_main(folder, args["observe"], args.get("threads"))
        return
    wrapper = _calibration_wrapper()
    model = wrapper.AddIntermediateTensors((folder / "in.tflite").read_bytes())
    cal = wrapper.CalibrationWrapper(model, [], [])
    prepared = False
    for arrays in _read_samples(sys.stdin.buffer):
        if not prepared:
            cal.Prepare([list(a.shape) for a in arrays])
            prepared = True
        cal.FeedTensor(arrays)
    q = args["quantize"]
    out = cal.Calibrate() if q is None else cal.QuantizeModel(
        q["input"], q["output"], q["allow_float"], q["activations"], q["bias"], q["disable_per_channel"],
        q["disable_per_channel_dense"])
    (folder / "out.tflite").write_bytes(bytes(out))


if __name__ == "__main__":
    child_main(Path(sys.argv[1]))
