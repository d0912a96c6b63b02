"""ONNX backend node tests (``onnx.backend.test``) through edgepack's ONNX conversion.

Every case is converted with ``edgepack.api.convert`` (float32, ``--quantize none``), run on LiteRT
with the bundle's own layout mapping, and compared with the case's expected outputs (tight
tolerance: rtol 1e-3, atol 1e-4; integer/bool outputs exactly). Cases whose inputs are all float
with a batch axis of 1 are also converted to int8, calibrated on the case's own inputs, and compared
loosely (max error within 10% of the output's range, plus 0.02).

    python benchmarks/onnx_conformance.py                 # all cases, 2 worker processes
    python benchmarks/onnx_conformance.py --stride 3      # every 3rd case (a documented subset)
    python benchmarks/onnx_conformance.py --match conv    # cases whose name contains "conv"

Prints pass/fail per case and the pass rate, and writes docs/onnx-coverage.md. Each chunk of cases
runs in its own process (onnx2tf can crash a process), with a time limit.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "onnx-coverage.md"


@dataclass
class CaseResult:
    case: str
    float32: str  # pass | fail | error | skip
    int8: str  # pass | fail | error | n/a
    detail: str = ""
    seconds: float = 0.0


def node_cases() -> list[Path]:
    import onnx.backend.test

    root = Path(onnx.backend.test.__file__).parent / "data" / "node"
    return sorted(p for p in root.iterdir() if (p / "model.onnx").is_file() and (p / "test_data_set_0").is_dir())


def _read_tensors(folder: Path, prefix: str) -> list[np.ndarray]:
    import onnx
    from onnx import numpy_helper

    out = []
    for f in sorted(folder.glob(f"{prefix}_*.pb"), key=lambda p: int(p.stem.split("_")[1])):
        t = onnx.TensorProto()
        t.ParseFromString(f.read_bytes())
        if not t.dims and not t.raw_data and not t.float_data and not t.int64_data and not t.int32_data \
                and not t.double_data and not t.string_data and t.data_type == 0:
            raise ValueError(f"{f.name} is not a tensor (sequence/optional)")
        out.append(numpy_helper.to_array(t))
    return out


def _run_bundle(bundle: Path, inputs: list[np.ndarray]) -> list[np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    from edgepack.packaging.manifest import read_manifest
    from edgepack.validation.runtimes import dequantize, quantize

    m = read_manifest(bundle)
    interp = Interpreter(model_path=str(bundle / "model.tflite"))
    interp.allocate_tensors()
    for t, x in zip(m.inputs, inputs):
        x = np.transpose(x, t.perm) if t.perm else x
        interp.set_tensor(t.index, quantize(x, t) if t.dtype in ("int8", "int16") else x.astype(t.dtype))
    interp.invoke()
    outs = []
    for t in m.outputs:
        y = dequantize(interp.get_tensor(t.index), t) if t.dtype in ("int8", "int16") else interp.get_tensor(t.index)
        outs.append(np.transpose(y, np.argsort(t.perm)) if t.perm else y)
    return outs


def _compare(got: list[np.ndarray], want: list[np.ndarray], loose: bool) -> str:
    if len(got) != len(want):
        return f"{len(got)} outputs, expected {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        if tuple(np.shape(g)) != tuple(np.shape(w)):
            return f"output {i}: shape {np.shape(g)}, expected {np.shape(w)}"
        if w.dtype.kind in "iub" and not loose:
            if not np.array_equal(np.asarray(g).astype(w.dtype), w):
                return f"output {i}: values differ"
            continue
        g64, w64 = np.asarray(g, np.float64), np.asarray(w, np.float64)
        if loose:
            span = float(np.ptp(w64)) if w64.size else 0.0
            err = float(np.max(np.abs(g64 - w64))) if w64.size else 0.0
            if not err <= 0.1 * span + 0.02:
                return f"output {i}: int8 max error {err:.3g} over 10% of range {span:.3g}"
        elif not np.allclose(g64, w64, rtol=1e-3, atol=1e-4, equal_nan=True):
            return f"output {i}: max error {float(np.nanmax(np.abs(g64 - w64))):.3g}"
    return ""


def run_case(case: Path, work: Path, *, int8: bool = True) -> CaseResult:
    """Convert one node test case and compare; never raises."""
    from edgepack import api
    from edgepack.errors import EdgepackError

    start = time.perf_counter()
    res = CaseResult(case.name, "skip", "n/a")
    data = case / "test_data_set_0"
    try:
        inputs, expected = _read_tensors(data, "input"), _read_tensors(data, "output")
    except Exception as err:  # sequences, optionals, strings: outside what a TFLite bundle holds
        res.detail = f"skipped: {err}"
        return res
    try:
        api.convert(model=case / "model.onnx", output=work / "f32", quantize="none", force=True)
        problem = _compare(_run_bundle(work / "f32", inputs), expected, loose=False)
        res.float32, res.detail = ("fail", problem) if problem else ("pass", "")
    except EdgepackError as err:
        res.float32, res.detail = "error", str(err).splitlines()[0][:200]
    except Exception as err:  # the interpreter or a layout surprise; recorded, not fatal
        res.float32, res.detail = "error", f"{type(err).__name__}: {str(err).splitlines()[0][:180] if str(err) else ''}"
    meaningful = all(x.dtype == np.float32 and x.ndim >= 1 and x.shape[0] == 1 for x in inputs) and \
        all(y.dtype == np.float32 for y in expected)
    if int8 and res.float32 == "pass" and meaningful:
        res.int8 = _run_int8(case, work, inputs, expected)
    res.seconds = round(time.perf_counter() - start, 2)
    return res


def _run_int8(case: Path, work: Path, inputs: list[np.ndarray], expected: list[np.ndarray]) -> str:
    import onnx

    from edgepack import api

    proto = onnx.load(str(case / "model.onnx"), load_external_data=False)
    init = {t.name for t in proto.graph.initializer}
    names = [vi.name for vi in proto.graph.input if vi.name not in init]
    np.savez(work / "calib.npz", **dict(zip(names, inputs)))
    try:
        api.convert(model=case / "model.onnx", output=work / "i8", quantize="int8", calibration=work / "calib.npz",
                    force=True)
        return "fail" if _compare(_run_bundle(work / "i8", inputs), expected, loose=True) else "pass"
    except Exception:  # the int8 column records only pass/fail/error
        return "error"


def _worker(names: list[str]) -> None:
    """Run ``names`` in this process, one JSON line per case on stdout."""
    import logging

    from edgepack._native import quiet_tensorflow

    quiet_tensorflow(False)
    logging.getLogger("edgepack").setLevel(logging.CRITICAL)
    cases = {c.name: c for c in node_cases()}
    out = os.fdopen(os.dup(1), "w")  # results go to the real stdout; everything else may be captured
    with tempfile.TemporaryDirectory(prefix="edgepack-conformance-") as tmp:
        for name in names:
            res = run_case(cases[name], Path(tmp))
            out.write(json.dumps(asdict(res)) + "\n")
            out.flush()


def _run_chunk(names: list[str], timeout: float) -> list[CaseResult]:
    try:
        proc = subprocess.run([sys.executable, __file__, "--worker", *names], capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT)
        stdout = proc.stdout
    except subprocess.TimeoutExpired as err:
        stdout = err.stdout.decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
    done = {}
    for line in stdout.splitlines():
        if line.startswith("{"):
            r = CaseResult(**json.loads(line))
            done[r.case] = r
    return [done.get(n) or CaseResult(n, "error", "n/a", "process crashed or timed out") for n in names]


def write_doc(results: list[CaseResult], total_cases: int, note: str, seconds: float) -> str:
    ran = [r for r in results if r.float32 != "skip"]
    passed = sum(r.float32 == "pass" for r in ran)
    i8 = [r for r in ran if r.int8 != "n/a"]
    i8_pass = sum(r.int8 == "pass" for r in i8)
    rate = passed / len(ran) if ran else 0.0
    lines = [
        "# ONNX coverage: the ONNX backend node tests through edgepack", "",
        "Generated by `benchmarks/onnx_conformance.py`; do not edit by hand.", "",
        f"- cases in onnx {_onnx_version()}: {total_cases}; run: {len(results)} ({note})",
        f"- skipped (non-tensor inputs/outputs): {len(results) - len(ran)}",
        f"- **float32 pass rate: {passed}/{len(ran)} = {rate:.1%}** (rtol 1e-3, atol 1e-4)",
        f"- int8 pass rate (float inputs with batch 1, calibrated on the case's inputs, error within 10% of "
        f"range + 0.02): {i8_pass}/{len(i8)}" + (f" = {i8_pass / len(i8):.1%}" if i8 else ""),
        f"- wall time: {seconds / 60:.1f} min", "",
        "| case | float32 | int8 | detail |", "|---|---|---|---|",
    ]
    for r in sorted(results, key=lambda r: r.case):
        lines.append(f"| {r.case} | {r.float32} | {r.int8} | {r.detail.replace('|', '/')[:160]} |")
    return "\n".join(lines) + "\n"


def _onnx_version() -> str:
    import onnx

    return onnx.__version__


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", nargs="*", help=argparse.SUPPRESS)
    ap.add_argument("--stride", type=int, default=1, help="run every Nth case (a deterministic subset)")
    ap.add_argument("--match", default="", help="only cases whose name contains this")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=25)
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite docs/onnx-coverage.md")
    args = ap.parse_args()
    if args.worker is not None:
        _worker(args.worker)
        return
    all_cases = node_cases()
    names = [c.name for c in all_cases if args.match in c.name][::args.stride]
    chunks = [names[i:i + args.chunk] for i in range(0, len(names), args.chunk)]
    start = time.perf_counter()
    results: list[CaseResult] = []
    with ThreadPoolExecutor(args.jobs) as pool:
        for chunk_results in pool.map(lambda c: _run_chunk(c, timeout=60 + 40 * len(c)), chunks):
            for r in chunk_results:
                print(f"{r.case:60s} float32 {r.float32:5s} int8 {r.int8:5s} {r.detail[:80]}", flush=True)
            results.extend(chunk_results)
    seconds = time.perf_counter() - start
    ran = [r for r in results if r.float32 != "skip"]
    passed = sum(r.float32 == "pass" for r in ran)
    print(f"float32 pass rate: {passed}/{len(ran)} = {passed / max(1, len(ran)):.1%} in {seconds / 60:.1f} min")
    if not args.no_doc:
        note = "all cases" if args.stride == 1 and not args.match else \
            f"every {args.stride}th case" + (f" matching {args.match!r}" if args.match else "")
        DOC.parent.mkdir(exist_ok=True)
        DOC.write_text(write_doc(results, len(all_cases), note, seconds), encoding="utf-8")
        print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
