"""Running the two converters as a user would, and comparing their models with onnxruntime.

Both run as fresh processes with the venv's bin first on PATH (onnx2tf calls ``onnxsim``), each in
its own session so a timeout kills the whole process group, and every outcome is kept: exit code or
signal, the last stderr line, whether a Python traceback was printed, wall seconds.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.zoo.inputs import Feed

BIN = Path(sys.executable).parent


@dataclass
class Run:
    rc: int | None  # None: timed out
    seconds: float
    last_line: str
    traceback: bool

    @property
    def ok(self) -> bool:
        return self.rc == 0

    @property
    def reason(self) -> str:
        if self.rc is None:
            return f"timeout after {self.seconds:.0f} s"
        if self.rc < 0:
            return f"killed by {signal.Signals(-self.rc).name} (exit {128 - self.rc}), no message"  # native crash
        return self.last_line or f"exit {self.rc}"


def env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "TF_CPP_MIN_LOG_LEVEL": "3",
            "PYTHONUNBUFFERED": "1"}


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_WARNING = re.compile(r"^(W\d{4}|WARNING)|\[W:")  # TF / onnxruntime warnings that mention "Error"
_ERROR_LINE = re.compile(r"\b\w*(Error|Exception)\b|^error:|Segmentation fault|Aborted")


def _last_line(text: str) -> str:
    """The last line that names an error (onnx2tf ends with its own context dump), else the last line."""
    lines = [ln.strip() for ln in _ANSI.sub("", text).splitlines() if ln.strip()]
    errors = [ln for ln in lines if _ERROR_LINE.search(ln) and not _WARNING.search(ln)]
    return (errors or lines or [""])[-1][:300]


def run(cmd: list[str], cwd: Path, timeout: float, log: Path | None = None) -> Run:
    """Run ``cmd``; on timeout kill its whole process group (onnx2tf and TF spawn helpers)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            errors="replace", start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        rc = None
    seconds = time.perf_counter() - start
    if log is not None:
        log.write_text(f"$ {' '.join(cmd)}\n# exit {rc}, {seconds:.1f} s\n--- stdout\n{out}\n--- stderr\n{err}\n")
    # onnx2tf prints its errors on stdout; edgepack keeps stdout for --json
    text = err if err.strip() else out
    return Run(rc, round(seconds, 2), _last_line(text), "Traceback" in err or "Traceback" in out)


# -- data files for the converters ------------------------------------------------------------------
def stack(feeds: list[Feed], name: str) -> np.ndarray:
    """edgepack's layout for calibration arrays: (N, *shape[1:]) when the model's own first axis is 1,
    else (N, *shape). Scalars become (N,)."""
    arrays = [np.asarray(f[name]) for f in feeds]
    if arrays[0].ndim and arrays[0].shape[0] == 1:
        arrays = [a[0] for a in arrays]
    return np.stack(arrays)


def write_edgepack_data(feeds: list[Feed], path: Path) -> Path:
    np.savez(path, **{name: stack(feeds, name) for name in feeds[0]})
    return path


def write_onnx2tf_data(feeds: list[Feed], folder: Path) -> list[str]:
    """``-cind`` arguments: one .npy per input, samples concatenated on axis 0, images in NHWC,
    already preprocessed (mean 0, std 1)."""
    args = []
    for k, name in enumerate(feeds[0]):
        arr = np.concatenate([np.asarray(f[name]).reshape(np.asarray(f[name]).shape or (1,)) for f in feeds])
        if arr.ndim == 4:
            arr = arr.transpose(0, 2, 3, 1)
        path = folder / f"cind_{k}.npy"
        np.save(path, arr.astype(np.float32) if arr.dtype == np.float64 else arr)
        args += ["-cind", name.replace(":", "__"), str(path), "0.0", "1.0"]
    return args


# -- running models -----------------------------------------------------------------------------------
def run_onnxruntime(path: Path, feeds: list[Feed]) -> list[np.ndarray]:
    """Outputs per ONNX output, each stacked over the feeds: (N, *output shape)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs = [sess.run(None, f) for f in feeds]
    return [np.stack([o[i] for o in outs]) for i in range(len(outs[0]))]


def _interpreter(path: Path):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=2)
    interp.allocate_tensors()
    return interp


def _set(interp, detail: dict, x: np.ndarray) -> None:
    x = np.asarray(x)
    if detail["dtype"] in (np.int8, np.uint8, np.int16) and detail["quantization"][0]:
        scale, zp = detail["quantization"]
        info = np.iinfo(detail["dtype"])
        x = np.clip(np.round(x / scale) + zp, info.min, info.max)
    interp.set_tensor(detail["index"], x.astype(detail["dtype"]).reshape(detail["shape"]))


def _get(interp, detail: dict) -> np.ndarray:
    y = interp.get_tensor(detail["index"])
    if detail["dtype"] in (np.int8, np.uint8, np.int16) and detail["quantization"][0]:
        scale, zp = detail["quantization"]
        return ((y.astype(np.float32) - zp) * scale).astype(np.float32)
    return y.astype(np.float32)


def run_bundle(bundle: Path, feeds: list[Feed]) -> list[np.ndarray]:
    """An edgepack bundle on LiteRT, I/O mapped exactly as its manifest says (index, layout perm)."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    interp = _interpreter(bundle / "model.tflite")
    details = {d["index"]: d for d in interp.get_input_details() + interp.get_output_details()}
    results: list[list[np.ndarray]] = [[] for _ in manifest["outputs"]]
    for feed in feeds:
        for t in manifest["inputs"]:
            x = np.asarray(feed[t["name"]])
            _set(interp, details[t["index"]], x.transpose(t["perm"]) if t["perm"] else x)
        interp.invoke()
        for i, t in enumerate(manifest["outputs"]):
            y = _get(interp, details[t["index"]])
            results[i].append(y.transpose(np.argsort(t["perm"])) if t["perm"] else y)
    return [np.stack(r) for r in results]


def _fit(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``x`` (ONNX layout) shaped for a TFLite tensor: as is, NCHW->NHWC, or reshaped (same size)."""
    if x.ndim == 4 and tuple(shape) == (x.shape[0], x.shape[2], x.shape[3], x.shape[1]):
        return x.transpose(0, 2, 3, 1)
    return x.reshape(shape)


def _candidates(y: np.ndarray, ref_shape: tuple[int, ...]) -> list[np.ndarray]:
    import itertools

    if y.size != math.prod(ref_shape):
        return []
    if y.shape == tuple(ref_shape):
        return [y]
    perms = [p for p in itertools.permutations(range(y.ndim)) if tuple(y.shape[i] for i in p) == tuple(ref_shape)]
    return [y.transpose(p) for p in perms] or [y.reshape(ref_shape)]


def run_plain_tflite(path: Path, feeds: list[Feed], refs: list[np.ndarray]) -> list[np.ndarray]:
    """A model from the onnx2tf command line, which has no manifest: inputs matched by name (then
    order), each output matched to the reference output it fits best (shape permutations)."""
    interp = _interpreter(path)
    ins, outs = interp.get_input_details(), interp.get_output_details()
    names = list(feeds[0])
    by_name = {d["name"].split(":")[0].removeprefix("serving_default_"): d for d in ins}
    order = [by_name.get(n.replace(":", "__"), ins[i] if i < len(ins) else None) for i, n in enumerate(names)]
    raw: list[list[np.ndarray]] = [[] for _ in outs]
    for feed in feeds:
        for n, d in zip(names, order):
            if d is not None:
                _set(interp, d, _fit(np.asarray(feed[n]), tuple(d["shape"])))
        interp.invoke()
        for i, d in enumerate(outs):
            raw[i].append(_get(interp, d))
    got = [np.stack(r) for r in raw]
    mapped, used = [], set()
    for ref in refs:
        best, best_err = None, math.inf
        for j, y in enumerate(got):
            if j in used:
                continue
            for cand in _candidates(y, ref.shape):
                err = float(np.mean((cand - ref) ** 2))
                if err < best_err:
                    best, best_err, best_j = cand, err, j
        if best is None:
            raise ValueError(f"no onnx2tf output fits reference shape {ref.shape}")
        used.add(best_j)
        mapped.append(best)
    return mapped
