"""ONNX backend node tests (``onnx.backend.test``) through edgepack's ONNX conversion.

Every case is converted with ``edgepack.api.convert`` (float32, ``--quantize none``), run on LiteRT
with the bundle's own layout mapping, and compared with the case's expected outputs (tight
tolerance: rtol 1e-3, atol 1e-4; integer/bool outputs exactly). Cases whose inputs are all float
with a batch axis of 1 are also converted to int8, calibrated on the case's own inputs, and compared
loosely (max error within 10% of the output's range, plus 0.02).

    python benchmarks/onnx_conformance.py                 # all cases, 2 worker processes
    python benchmarks/onnx_conformance.py --stride 3      # every 3rd case (a documented subset)
    python benchmarks/onnx_conformance.py --match conv    # cases whose name contains "conv"
    python benchmarks/onnx_conformance.py --no-doc --cases A B ... --results part1.jsonl   # one share of a run
    python benchmarks/onnx_conformance.py --stride 4 --from-results part*.jsonl           # the doc from the shares

Prints pass/fail per case and the pass rate, and writes docs/onnx-coverage.md. Each chunk of cases
runs in its own process (onnx2tf can crash a process), with a time limit.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
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
    from edgepack.runtimes.litert import dequantize, quantize

    m = read_manifest(bundle)
    interp = Interpreter(model_path=str(bundle / "model.tflite"))
    interp.allocate_tensors()
    for t, x in zip(m.inputs, inputs):
        x = np.transpose(x, t.perm) if t.perm else x.reshape(t.shape) if x.ndim == 0 else x  # scalars: shape [1]
        interp.set_tensor(t.index, quantize(x, t) if t.dtype in ("int8", "int16") else x.astype(t.dtype))
    interp.invoke()
    outs = []
    for t in m.outputs:
        y = dequantize(interp.get_tensor(t.index), t) if t.dtype in ("int8", "int16") else interp.get_tensor(t.index)
        if t.source_shape == [] and y.size == 1:  # an ONNX scalar output
            y = y.reshape(())
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


# What a bundle's inputs and outputs can be: the dtypes LiteRT's builtin kernels compute on (and the
# manifest schema allows). Cases with other I/O (float64, uint16/32/64, strings, float8, bfloat16, 4-bit)
# test ONNX semantics that a TFLite bundle cannot carry, so they are "n/a", not failures.
BUNDLE_DTYPES = frozenset({"float32", "float16", "int8", "uint8", "int16", "int32", "int64", "bool"})


def not_applicable(inputs: list[np.ndarray], expected: list[np.ndarray]) -> str:
    """Why a case is outside what a TFLite bundle can hold ("" when it is not)."""
    bad = sorted({str(a.dtype) for a in (*inputs, *expected)} - BUNDLE_DTYPES)
    return f"not applicable: {'/'.join(bad)} inputs or outputs (not a TFLite bundle dtype)" if bad else ""


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
    res.detail = not_applicable(inputs, expected)
    if res.detail:
        res.float32 = "n/a"
        return res
    try:
        api.convert(model=case / "model.onnx", output=work / "f32", quantize="none", force=True)
        problem = _compare(_run_bundle(work / "f32", inputs), expected, loose=False)
        res.float32, res.detail = ("fail", problem) if problem else ("pass", "")
    except EdgepackError as err:
        res.float32, res.detail = "error", str(err).splitlines()[0][:200]
    except Exception as err:  # the interpreter or a layout surprise; recorded, not fatal
        res.float32, res.detail = "error", _one_line(err)
    meaningful = all(x.dtype == np.float32 and x.ndim >= 1 and x.shape[0] == 1 for x in inputs) and \
        all(y.dtype == np.float32 for y in expected)
    if int8 and res.float32 == "pass" and meaningful:
        res.int8, problem = _run_int8(case, work, inputs, expected)
        res.detail = f"int8: {problem}" if problem else res.detail
    res.seconds = round(time.perf_counter() - start, 2)
    return res


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0][:180] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}"


def _run_int8(case: Path, work: Path, inputs: list[np.ndarray], expected: list[np.ndarray]) -> tuple[str, str]:
    """(pass | fail | error, what went wrong)."""
    import onnx

    from edgepack import api
    from edgepack.errors import EdgepackError

    proto = onnx.load(str(case / "model.onnx"), load_external_data=False)
    init = {t.name for t in proto.graph.initializer}
    names = [vi.name for vi in proto.graph.input if vi.name not in init]
    np.savez(work / "calib.npz", **dict(zip(names, inputs)))
    try:
        api.convert(model=case / "model.onnx", output=work / "i8", quantize="int8", calibration=work / "calib.npz",
                    force=True)
        problem = _compare(_run_bundle(work / "i8", inputs), expected, loose=True)
        return ("fail", problem) if problem else ("pass", "")
    except EdgepackError as err:
        return "error", str(err).splitlines()[0][:200]
    except Exception as err:  # recorded, not fatal
        return "error", _one_line(err)


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


def _read_results(proc: subprocess.Popen, case_timeout: float) -> tuple[dict[str, CaseResult], str]:
    """Result lines from a worker as they come; ``(results, "")`` on a clean exit, else why it died."""
    done: dict[str, CaseResult] = {}
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    buf = b""
    deadline = time.monotonic() + case_timeout + 30  # + interpreter and TensorFlow start-up
    while True:
        if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
            proc.kill()
            proc.wait()
            return done, f"timed out (no result within {case_timeout:.0f} s)"
        data = os.read(proc.stdout.fileno(), 65536)
        if not data:
            break
        buf += data
        *lines, buf = buf.split(b"\n")
        for line in lines:
            if line.startswith(b"{"):
                r = CaseResult(**json.loads(line))
                done[r.case] = r
                deadline = time.monotonic() + case_timeout
    rc = proc.wait()
    if rc < 0:
        return done, f"worker killed by {signal.Signals(-rc).name}"
    return done, "" if rc == 0 else f"worker exited with code {rc}"


def _run_chunk(names: list[str], case_timeout: float, command: list[str] | None = None) -> list[CaseResult]:
    """Run ``names`` in worker processes. A case that kills its worker (onnx2tf and TensorFlow can
    die on a signal) or hangs is recorded as ``crashed``/``timeout``; the rest of the chunk runs in a
    fresh worker, so one bad case never loses its neighbours."""
    results: list[CaseResult] = []
    pending = list(names)
    while pending:
        with tempfile.TemporaryFile() as err:  # stderr to a file: a full pipe would block the worker
            argv = [*(command or [sys.executable, __file__, "--worker"]), *pending]
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, cwd=ROOT)
            done, why = _read_results(proc, case_timeout)
        finished = 0
        while finished < len(pending) and pending[finished] in done:
            results.append(done[pending[finished]])
            finished += 1
        if finished == len(pending):
            break
        status = "timeout" if why.startswith("timed out") else "crashed"
        results.append(CaseResult(pending[finished], status, "n/a", why or "worker stopped without a result"))
        pending = pending[finished + 1:]
    return results


def rates(results: list[CaseResult]) -> dict[str, tuple[int, int]]:
    """(passed, counted) for float32 and int8. Skipped (non-tensor) and not-applicable (dtype) cases
    are not counted; crashes and time-outs count as failures."""
    ran = [r for r in results if r.float32 not in ("skip", "n/a")]
    i8 = [r for r in ran if r.int8 != "n/a"]
    return {"float32": (sum(r.float32 == "pass" for r in ran), len(ran)),
            "int8": (sum(r.int8 == "pass" for r in i8), len(i8))}


def _rate(passed: int, total: int) -> str:
    return f"{passed}/{total}" + (f" = {passed / total:.1%}" if total else "")


def write_doc(results: list[CaseResult], total_cases: int, note: str, seconds: float, *,
              command: str = "", date: str = "") -> str:
    r = rates(results)
    status = Counter(x.float32 for x in results)
    i8_status = Counter(x.int8 for x in results if x.int8 != "n/a")
    versions = _versions()
    lines = [
        "# ONNX coverage: the ONNX backend node tests through edgepack", "",
        "Generated by `benchmarks/onnx_conformance.py`; do not edit by hand.", "",
        f"- run: {date or time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        + (f", `{command}`" if command else ""),
        f"- versions: {versions}",
        f"- cases in onnx {_onnx_version()}: {total_cases}; run: {len(results)} ({note})",
        f"- float32 outcomes: {', '.join(f'{k} {v}' for k, v in sorted(status.items()))}",
        f"- skipped (sequence/optional inputs or outputs): {status['skip']}; not applicable (I/O dtypes a TFLite "
        f"bundle cannot carry: {', '.join(sorted(_NA_EXAMPLES))}): {status['n/a']}",
        f"- **float32 pass rate: {_rate(*r['float32'])}** (rtol 1e-3, atol 1e-4; crashes and time-outs count "
        "as failures)",
        f"- **int8 pass rate: {_rate(*r['int8'])}** (cases whose float32 run passed and whose inputs are all "
        "float with batch 1, calibrated on the case's own inputs; error within 10% of the output range + 0.02); "
        f"int8 outcomes: {', '.join(f'{k} {v}' for k, v in sorted(i8_status.items())) or 'none'}",
        f"- wall time: {seconds / 60:.1f} min", "",
        "| case | float32 | int8 | detail |", "|---|---|---|---|",
    ]
    for x in sorted(results, key=lambda x: x.case):
        lines.append(f"| {x.case} | {x.float32} | {x.int8} | {x.detail.replace('|', '/')[:160]} |")
    return "\n".join(lines) + "\n"


_NA_EXAMPLES = ("float64", "uint16", "uint32", "uint64", "strings", "float8", "bfloat16", "4-bit")


def _versions() -> str:
    from edgepack import dependency_versions

    v = dependency_versions()
    keys = ("edgepack", "onnx2tf", "tensorflow", "ai-edge-litert", "onnxruntime", "onnx")
    return ", ".join(f"{k} {v[k]}" for k in keys if k in v)


def _onnx_version() -> str:
    import onnx

    return onnx.__version__


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", nargs="*", help=argparse.SUPPRESS)
    ap.add_argument("--stride", type=int, default=1, help="run every Nth case (a deterministic subset)")
    ap.add_argument("--match", default="", help="only cases whose name contains this")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=25, help="cases per worker process")
    ap.add_argument("--case-timeout", type=float, default=240, help="seconds one case may take")
    ap.add_argument("--cases", nargs="*", default=None, help="only these cases (by name)")
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite docs/onnx-coverage.md")
    ap.add_argument("--results", type=Path, help="also write every case's result here (JSON lines)")
    ap.add_argument("--from-results", type=Path, nargs="+", metavar="JSONL",
                    help="no conversions: write the doc from these --results files (runs split over processes)")
    args = ap.parse_args()
    if args.worker is not None:
        _worker(args.worker)
        return
    if args.from_results:
        _doc_from_results(args.from_results, args.stride)
        return
    all_cases = node_cases()
    names = [c.name for c in all_cases if args.match in c.name and (not args.cases or c.name in args.cases)]
    if args.cases:  # in the order given: a prefix of a split run is then the sample its list begins with
        names = sorted(names, key=args.cases.index)
    names = names[::args.stride]
    chunks = [names[i:i + args.chunk] for i in range(0, len(names), args.chunk)]
    start = time.perf_counter()
    results: list[CaseResult] = []
    with ThreadPoolExecutor(args.jobs) as pool:
        for chunk_results in pool.map(lambda c: _run_chunk(c, args.case_timeout), chunks):
            for r in chunk_results:
                print(f"{r.case:60s} float32 {r.float32:5s} int8 {r.int8:5s} {r.detail[:80]}", flush=True)
            results.extend(chunk_results)
            if args.results:
                with args.results.open("a", encoding="utf-8") as f:
                    f.writelines(json.dumps(asdict(r)) + "\n" for r in chunk_results)
    seconds = time.perf_counter() - start
    r = rates(results)
    print(f"float32 pass rate: {_rate(*r['float32'])}; int8 pass rate: {_rate(*r['int8'])}; "
          f"{seconds / 60:.1f} min")
    if not args.no_doc:
        note = "all cases" if args.stride == 1 and not args.match and not args.cases else \
            f"every {args.stride}th case" + (f" matching {args.match!r}" if args.match else "") + \
            (f" of {len(args.cases)} named" if args.cases else "")
        DOC.parent.mkdir(exist_ok=True)
        command = "python benchmarks/onnx_conformance.py " + " ".join(sys.argv[1:])
        DOC.write_text(write_doc(results, len(all_cases), note, seconds, command=command.strip()), encoding="utf-8")
        print(f"wrote {DOC}")


def _doc_from_results(files: list[Path], stride: int) -> None:
    """docs/onnx-coverage.md from --results files (the last result of a case wins)."""
    by_case: dict[str, CaseResult] = {}
    for f in files:
        for line in f.read_text(encoding="utf-8").splitlines():
            if line.startswith("{"):
                r = CaseResult(**json.loads(line))
                by_case[r.case] = r
    results = sorted(by_case.values(), key=lambda r: r.case)
    note = "all cases" if stride == 1 else f"every {stride}th case"
    command = "python benchmarks/onnx_conformance.py " + " ".join(sys.argv[1:])
    DOC.write_text(write_doc(results, len(node_cases()), note, sum(r.seconds for r in results) / 2,
                             command=command.strip()), encoding="utf-8")
    r = rates(results)
    print(f"float32 pass rate: {_rate(*r['float32'])}; int8 pass rate: {_rate(*r['int8'])}; wrote {DOC}")


if __name__ == "__main__":
    main()
