"""The Python API: the same operations and options as the CLI, keyword-only.

>>> from edgepack import api
>>> result = api.convert(model="model.keras", output="bundle", calibration="calib.npy")
>>> report = api.validate(bundle="bundle", data="heldout.npz", max_drop=1.0)

convert's keywords
------------------
Every option left at ``None`` takes the ``recipe`` file's value, else the default of
:mod:`edgepack.request` (the one place defaults live); given options override the recipe.

``calibration`` is an ``.npy``/``.npz``/``.csv`` file or an image folder, or ``{input name: path}``
for models with several inputs; ``preprocess`` (``"resize=96x96,mean=127.5,std=127.5"``) or the
recipe's ``[inputs.NAME]`` tables say how raw data becomes model input, and are recorded in the
manifest.

``input_shapes`` fixes an ONNX model's dynamic dimensions: ``{"input": (1, 3, 224, 224)}`` or
``["input:1x3x224x224"]``. ``input_values`` (``{"sr": 16000}``) freezes ONNX inputs to constants
before translation; ``state`` (``{"state": "stateN"}``) names recurrent state pairs.

``prune_groups`` (``{"dense*": 0.5}``) gives ``prune="channels:R"`` another ratio per layer-name pattern.
``on_epoch(phase, epoch, metric, value)`` hears each fine-tuning epoch's held-out score; raising
:class:`~edgepack.errors.StopRequested` from it stops the conversion (nothing is written); it is not
part of the request (build_request ignores it).

``prune`` (``"channels:0.5"``, ``"sparsity:0.8"``, ``"2:4"``) and ``qat`` optimize a Keras model
before conversion, fine-tuned for ``epochs`` on ``train_data`` (.npz with x, optional y).
``cluster`` (K, e.g. 16) shares K values per kernel (tfmot clustering; ``cluster_layers`` picks layers
by name pattern); ``low_rank`` (``0.9`` energy kept, or ``"rank:8"``) factorizes Dense/Conv2D
layers where that cuts MACs; ``keep_layers`` excludes layers from all of them.

``max_drop`` (with labelled ``eval_data``), ``min_sqnr`` and ``min_agreement`` set an accuracy
budget: the search keeps the cheapest candidate that meets it (better ranges, float fallback of
the worst layers, int16x8) and records it in the manifest's ``budget``; ``sqnr_axis``
(``["NAME:AXIS"]``) sets an output's slice axis; ``keep_best`` writes the best candidate when
none meets it; ``metric`` (``"FILE.py:FUNCTION"``) makes ``max_drop`` bound the user's task metric
(no labels needed); met: the bound of the ``confidence`` (0.95) interval meets the budget;
``fallback="int16"`` (a target that allows int16x8) gives the ops int8 cannot carry int16 activations, and
float only to the stretches int16 cannot carry either (``"float"``, the default: float).

``metadata=False`` leaves model.tflite without LiteRT metadata; ``model_name``, ``description``,
``model_version``, ``author`` and ``license`` fill it (defaults from the source model).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepack.errors import OptionError
from edgepack.packaging.manifest import Manifest

__all__ = ["ConvertResult", "budget_lines", "convert", "convert_request", "inspect", "inspect_layers", "layer_lines",
           "raise_if_failed", "render_report", "report", "reproduce", "stderr_console", "target", "target_docs", "targets",
           "tune", "validate"]


@dataclass(frozen=True)
class ConvertResult:
    bundle: Path
    manifest: Manifest

    def summary(self) -> dict[str, Any]:
        m = self.manifest
        return {"bundle": str(self.bundle), "mode": m.quantization.mode, "target": m.target.name,
                "model_bytes": m.artifact("model").bytes, "inputs": [t.name for t in m.inputs],
                "outputs": [t.name for t in m.outputs], "ops": m.ops,
                "seconds": round(sum(s.seconds for s in m.stages), 3)}


def _enum(enum_cls, value, option: str):
    try:
        return enum_cls(value)
    except ValueError:
        raise OptionError(option, value, [e.value for e in enum_cls]) from None


def convert(*, model: str | Path | None = None, output: str | Path | None = None, quantize: str | None = None,
            calibration: str | Path | Mapping[str, str | Path] | None = None, calibration_samples: int | None = None,
            seed: int | None = None, target: str | None = None, labels: str | Path | None = None,
            force: bool | None = None, trust_model: bool | None = None, per_tensor: bool | None = None,
            verbose: bool = False, progress: Callable[[str], None] | None = None,
            on_epoch: Callable[[str, int, str, float], None] | None = None,
            prune_groups: Mapping[str, float] | Sequence[str] | None = None,
            input_shapes: Mapping[str, Sequence[int]] | Sequence[str] | None = None,
            onnx2tf_options: Mapping[str, Any] | None = None,
            input_values: Mapping[str, Any] | Sequence[str] | None = None,
            state: Mapping[str, str] | Sequence[str] | None = None,
            preprocess: str | None = None, recipe: str | Path | None = None,
            label_column: str | None = None, prune: str | None = None, prune_norm: str | None = None,
            prune_round: int | None = None, prune_layers: Sequence[str] | None = None,
            keep_layers: Sequence[str] | None = None, cluster: int | None = None,
            cluster_layers: Sequence[str] | None = None, low_rank: str | float | None = None, qat: bool | None = None,
            train_data: str | Path | None = None, epochs: int | None = None, distill: bool | None = None,
            distribute: str | None = None, learning_rate: float | None = None, max_drop: float | None = None,
            min_sqnr: float | None = None, min_agreement: float | None = None,
            eval_data: str | Path | Mapping[str, str | Path] | None = None, sqnr_axis: Sequence[str] | None = None,
            keep_best: bool | None = None, metric: str | None = None, metadata: bool | None = None,
            model_name: str | None = None, description: str | None = None, model_version: str | None = None,
            author: str | None = None, license: str | None = None, confidence: float | None = None,
            ptq: Sequence[str] | None = None, no_ptq: Sequence[str] | None = None,
            fallback: str | None = None) -> ConvertResult:
    """Convert ``model`` into a bundle at ``output``; see ``edgepack convert --help`` and, for what each
    keyword means, this module's docstring ("convert's keywords"). Every option left at ``None`` takes the
    ``recipe`` file's value, else the default of :mod:`edgepack.request`; given options override the recipe."""
    flags = {k: v for k, v in locals().items() if k not in ("progress", "recipe")}
    from edgepack._native import quiet_tensorflow
    from edgepack.packaging.tempdirs import run_tempdir
    from edgepack.pipeline.run import run_pipeline

    request = convert_request(recipe=recipe, **flags)
    quiet_tensorflow(verbose)
    with run_tempdir():  # temporary folders named by pid: the next run removes a killed run's
        state = run_pipeline(request, progress=progress, on_epoch=on_epoch)
    return ConvertResult(bundle=request.output.path, manifest=state.manifest)


def convert_request(*, recipe: str | Path | None = None, **flags: Any):
    """The :class:`~edgepack.request.ConvertRequest` that :func:`convert` would run (recipe + flags)."""
    from edgepack.calibration.preprocess import read_recipe
    from edgepack.request import build_request

    data: dict[str, Any] = {}
    base = None
    if recipe is not None:
        data = read_recipe(Path(recipe))
        base = Path(recipe).parent
        flags["recipe"] = Path(recipe)
    return build_request(data, flags, where=f"--recipe {recipe}", base=base)


def validate(*, bundle: str | Path, data: str | Path | Mapping[str, str | Path], reference: str | Path | None = None,
             runtime: str = "litert", max_drop: float | None = None, trust_model: bool = False,
             verbose: bool = False, progress: Callable[[int], None] | None = None, check: bool = True,
             preprocess: str | None = None, recipe: str | Path | None = None, label_column: str | None = None,
             metric: str | None = None, confidence: float = 0.95):
    """Validate a bundle on ``data``; raises :class:`ValidationFailed` past the budget when ``check``
    (``max_drop`` judged on the upper bound of the drop's ``confidence`` interval).

    ``metric`` (``"FILE.py:FUNCTION"``, as for convert) measures the user's task metric on the bundle
    and the reference; ``max_drop`` then bounds it instead of top-1 accuracy.

    ``data`` takes the same sources as ``convert``'s calibration (class subfolders of an image
    folder give labels); the preprocessing recorded in the manifest is applied unless
    ``preprocess``/``recipe`` say otherwise (``preprocess="none"``: data is model-ready)."""
    from edgepack._native import quiet_tensorflow
    from edgepack.runtimes.litert import Runtime
    from edgepack.validation.validate import raise_if_failed, validate_bundle

    quiet_tensorflow(verbose)
    data = {str(k): Path(v) for k, v in data.items()} if isinstance(data, Mapping) else Path(data)
    report = validate_bundle(Path(bundle), data, reference=Path(reference) if reference else None,
                             runtime=_enum(Runtime, runtime, "--runtime"), max_drop=max_drop,
                             trust_model=trust_model, progress=progress, preprocess=preprocess,
                             recipe=Path(recipe) if recipe is not None else None, label_column=label_column,
                             metric=metric, confidence=confidence)
    if check:
        raise_if_failed(report)
    return report


def validate_stream(*, bundle: str | Path, data: str | Path, reference: str | Path | None = None,
                    runtime: str = "litert", threshold: float = 0.5, hop: int | None = None,
                    metric: str | None = None, trust_model: bool = False, verbose: bool = False):
    """Stream frame sequences (a folder of WAV files cut into frames every ``hop`` samples, or an .npz
    of frame sequences) through a bundle with recurrent state and its reference, each carrying its own
    state; per-frame SQNR, the worst frame and the decision agreement at ``threshold``."""
    from edgepack._native import quiet_tensorflow
    from edgepack.validation.streaming import validate_stream as run

    quiet_tensorflow(verbose)
    return run(Path(bundle), Path(data), reference=Path(reference) if reference else None, runtime=runtime,
               threshold=threshold, hop=hop, metric=metric, trust_model=trust_model)


def wants_stream(*, bundle: str | Path, data: str | Path | Mapping[str, str | Path]) -> bool:
    """Whether ``validate`` streams by default: a bundle with state pairs, data without the state."""
    from edgepack.validation.streaming import wants_stream as check

    return check(Path(bundle), data if isinstance(data, Mapping) else Path(data))


def stream_lines(report) -> list[str]:
    """What ``validate --stream`` prints."""
    lines = [f"streamed {report.frames} frames in {report.sequences} sequence(s) through {', '.join(report.runtimes)} "
             f"and {report.reference} (state pairs {report.state_pairs}) in {report.seconds:.1f}s"]
    for kind, outputs in report.outputs.items():
        for name, o in outputs.items():
            worst = o["worst_frame"]
            sq = "identical" if o["min_sqnr_db"] is None else f"min {o['min_sqnr_db']:.1f} dB"
            lines.append(f"  {kind} {name}: SQNR {sq}, median "
                         f"{'inf' if o['median_sqnr_db'] is None else format(o['median_sqnr_db'], '.1f')} dB, "
                         f"worst frame {worst['sequence']}#{worst['frame']}, {o['frames_below_60db']} frame(s) < 60 dB")
        for name, d in report.decisions[kind].items():
            lo, hi = d["interval95"]
            lines.append(f"  {kind} {name}: decisions at {report.threshold:g} agree {d['agreeing']}/{d['decisions']} "
                         f"over {d['frames']} frames ({d['agreement']:.2%}, 95% CI {lo:.2%}-{hi:.2%})")
    if report.task_metric:
        tm = report.task_metric
        lines.append(f"  --metric {tm['metric']}: mean {tm['mean']:.4f}, min {tm['min']:.4f} over {tm['frames']} frames")
    return lines


def budget_lines(budget: Mapping[str, Any]) -> list[str]:
    """What convert prints about an accuracy budget's search."""
    chosen = budget["chosen"]
    met = "met" if budget["budget_met"] else "NOT met (--keep-best)"
    lines = [f"budget {met}: chosen {chosen['name']} ({chosen['step']}) after {len(budget['candidates'])} "
             f"candidate(s) in {budget['search_seconds']:.1f}s"]
    judged = interval_lines(chosen["metric"].get("intervals"))
    if judged:
        lines.append(f"  judged on the interval's bound: {judged}")
    for c in budget["candidates"]:
        sq = [v for v in c["metric"]["sqnr_db"].values()]
        worst = min((v for v in sq if v is not None), default=None)
        lat = f", p50 {c['litert_p50_ms']:.2f} ms" if c.get("litert_p50_ms") is not None else ""
        m = c["metric"]
        task = (f", task metric {m['task_metric']:.4f} (drop {m['task_metric_drop_pp']:.2f} pp)" if "task_metric" in m
                else f", accuracy drop {m['accuracy_drop_pp']:.2f} pp" if "accuracy_drop_pp" in m else "")
        lines.append(f"  {c['step']:<9} {c['name'][:60]:<60} worst-slice SQNR "
                     f"{'inf' if worst is None else f'{worst:.2f}'} dB{task}, {c['float_ops']} float / "
                     f"{c.get('int16_ops', 0)} int16 ops of {c.get('ops', '?')}, {c['bytes']} bytes{lat}"
                     f"{' <- meets' if c['met'] else ''}")
    if chosen.get("float_output"):
        lines.append("  note: the outputs are float32 (their parts need different int8 scales)")
    for note in budget.get("notes", []):
        lines.append(f"  note: {note}")
    return lines


def interval_lines(intervals: Mapping[str, Any] | None) -> str:
    """``agreement logits 0.930 [0.895, 0.954], n=300 (95%)``: a budget's figures with their intervals."""
    if not intervals:
        return ""

    def text(i: Mapping[str, Any], digits: int) -> str:
        def f(v):
            return "inf" if v is None else f"{v:.{digits}f}"
        return f"{f(i['value'])} [{f(i['low'])}, {f(i['high'])}], n={i['n']}"

    parts = [f"agreement {k} {text(i, 3)}" for k, i in intervals.get("agreement", {}).items()]
    parts += [f"worst-slice SQNR {k} {text(i, 2)} dB" for k, i in intervals.get("sqnr_db", {}).items()]
    for key, what in (("accuracy_drop_pp", "accuracy drop"), ("task_metric_drop_pp", "task metric drop")):
        if key in intervals:
            parts.append(f"{what} {text(intervals[key], 2)} pp")
    return "; ".join(parts) + f" ({intervals['confidence'] * 100:g}% intervals)" if parts else ""


def inspect_layers(*, path: str | Path) -> dict[str, Any]:
    """The sensitivity table of a bundle converted with an accuracy budget."""
    from edgepack.errors import BundleError
    from edgepack.packaging.bundle import verify_artifacts
    from edgepack.packaging.manifest import read_manifest

    p = Path(path)
    if not p.is_dir():
        raise BundleError(f"{p}: --layers needs a bundle directory")
    manifest = read_manifest(p)
    verify_artifacts(p, manifest.artifacts)
    art = next((a for a in manifest.artifacts if a.role == "sensitivity"), None)
    if art is None:
        raise BundleError(f"{p}: no sensitivity table in this bundle",
                          hint="convert with an accuracy budget (--min-sqnr, --min-agreement or --max-drop)")
    from edgepack.packaging.manifest import read_json_file

    return read_json_file(p / art.path)


def metadata_lines(meta: Mapping[str, Any] | None, delegate: Mapping[str, Any] | None) -> list[str]:
    """``inspect``'s lines for the LiteRT metadata and the measured delegate coverage."""
    from edgepack.runtimes.delegate import coverage_lines

    lines = []
    if meta is not None:
        head = ", ".join(f"{k} {meta[k]!r}" for k in ("name", "version", "author", "license") if meta.get(k))
        lines.append(f"metadata (parser >= {meta.get('min_parser_version')}): {head}")
        for sg in meta.get("subgraph_metadata", []):
            for kind in ("input_tensor_metadata", "output_tensor_metadata"):
                for t in sg.get(kind, []):
                    norm = next((p["options"] for p in t.get("process_units", []) if "options" in p), None)
                    files = ", ".join(f["name"] for f in t.get("associated_files", []))
                    lines.append(f"  {kind.split('_')[0]} {t.get('name')}: {t.get('description', '')}"
                                 + (f"; normalization mean {norm['mean']} std {norm['std']}" if norm else "")
                                 + (f"; files {files}" if files else ""))
    if delegate is not None:
        lines += coverage_lines(delegate)
    return lines


def layer_lines(table: Mapping[str, Any]) -> list[str]:
    rows = table["rows"]
    lines = [f"chosen: {table.get('chosen')}", f"{'#':>4} {'op':<24} {'RMSE/scale':>10} {'gain':>7} {'kept':<6} node"]
    for r in rows:
        err = "-" if r.get("scaled_rmse") is None else f"{r['scaled_rmse']:.2f}"
        gain = "-" if r.get("gain") is None else f"{r['gain']:.2f}"
        lines.append(f"{r['index']:>4} {r['op']:<24} {err:>10} {gain:>7} {r.get('kept') or '-':<6} {r['node']}")
    return lines


def inspect(*, path: str | Path) -> dict[str, Any]:
    """Inputs/outputs with quantization, op table and sizes of a bundle or a bare ``.tflite``; its
    LiteRT metadata (``metadata``, None without) and a phone bundle's XNNPACK coverage (``delegate``)."""
    from edgepack.errors import BundleError
    from edgepack.packaging.bundle import verify_artifacts
    from edgepack.packaging.manifest import read_manifest
    from edgepack.packaging.metadata import read as read_metadata
    from edgepack.tflite_model import read_tflite

    p = Path(path)
    manifest = None
    if p.is_dir():
        manifest = read_manifest(p)
        verify_artifacts(p, manifest.artifacts)  # a flipped byte is a broken bundle, not a model to describe
        model_path = p / manifest.artifact("model").path
    elif p.is_file():
        model_path = p
    else:
        raise BundleError(f"{p}: no such file or directory")
    info = read_tflite(model_path)
    if manifest is not None:
        from edgepack.packaging.manifest import check_model_tensors

        check_model_tensors(manifest, info, str(p))
        inputs = [t.__dict__ for t in manifest.inputs]
        outputs = [t.__dict__ for t in manifest.outputs]
    else:
        inputs = [_tensor_dict(info.tensor(i), info.signature_inputs) for i in info.inputs]
        outputs = [_tensor_dict(info.tensor(i), info.signature_outputs) for i in info.outputs]
    out: dict[str, Any] = {
        "path": str(p), "model": str(model_path), "bytes": info.size, "mode": info.quantization_mode,
        "granularity": info.granularity, "inputs": inputs, "outputs": outputs, "ops": info.op_counts,
        "subgraphs": info.subgraphs, "tensors": len(info.tensors),
        "state_links": state_links([t["name"] for t in inputs], [t["name"] for t in outputs],
                                   ((manifest.extras.get("graph") or {}).get("state_pairs") if manifest else None)),
    }
    out["metadata"] = read_metadata(model_path.read_bytes(), str(model_path))
    if manifest is not None:
        out["manifest"] = manifest.to_dict()
        out["artifacts"] = [a.__dict__ for a in manifest.artifacts]
        if "delegate" in manifest.extras:
            out["delegate"] = manifest.extras["delegate"]
        val = p / "validation.json"
        if val.is_file():
            from edgepack.packaging.manifest import read_json_file

            out["validation"] = read_json_file(val)
    return out


def state_links(inputs: Sequence[str], outputs: Sequence[str],
                recorded: Mapping[str, str] | None = None) -> list[dict[str, str]]:
    """Outputs that feed an input on the next call of a streaming model: the pairs a manifest records
    (``extras.graph.state_pairs``), else where the names make it obvious (``state`` -> ``stateN``,
    ``h`` -> ``h_out``, ``cache`` -> ``next_cache``); else nothing."""
    from edgepack.calibration.layout import find_state_pairs

    pairs = dict(recorded) if recorded else find_state_pairs(inputs, outputs)
    return [{"output": o, "input": i} for i, o in pairs.items()]


def _tensor_dict(t, sig: dict[str, int]) -> dict[str, Any]:
    name = next((k for k, v in sig.items() if v == t.index), t.name)
    return {"name": name, "tflite_name": t.name, "index": t.index, "shape": list(t.shape), "dtype": t.dtype,
            "scale": t.scale, "zero_point": t.zero_point}


def targets() -> list[dict[str, Any]]:
    from edgepack.targets import all_targets

    return [t.to_dict() for t in all_targets()]


def target_docs(*, path: str | Path = "docs/targets.md") -> Path:
    """Write the targets document (every profile, every check's rule) to ``path``."""
    from edgepack.targets.docs import write_targets_md

    try:
        return write_targets_md(Path(path))
    except OSError as err:
        from edgepack.errors import UsageError

        raise UsageError(f"--docs {path}: cannot write ({err.strerror})") from err


def target(name: str) -> dict[str, Any]:
    from edgepack.targets import load_target
    from edgepack.targets.checks import describe_checks

    d = load_target(name).to_dict()
    d["checks"] = dict(describe_checks())
    return d


def reproduce(*, bundle: str | Path, output: str | Path, force: bool = False, verbose: bool = False,
              progress: Callable[[str], None] | None = None, trust_model: bool = False,
              metric: str | None = None) -> dict[str, Any]:
    """Run the request recorded in ``bundle``'s manifest again into ``output`` and compare the new
    ``model.tflite`` with the bundle's: byte-identical, or which tensors differ and by how much.

    The manifest is data, never permission: a request recorded with ``--trust-model`` or ``--metric``
    runs only with ``trust_model=True`` / ``metric="FILE.py[:FUNCTION]"`` given here (the metric file's
    sha256 must be the recorded one). Refuses (one line) when an artifact does not match the manifest,
    or an input file the request names has no recorded sha256, is gone or changed since."""
    from edgepack._native import quiet_tensorflow
    from edgepack.packaging.bundle import verify_artifacts
    from edgepack.packaging.manifest import read_manifest
    from edgepack.pipeline.run import run_pipeline
    from edgepack.validation.reproduce import compare_models, replay_request

    src = Path(bundle)
    manifest = read_manifest(src)
    verify_artifacts(src, manifest.artifacts)  # compare real artifacts only
    request = replay_request(src, manifest.request, Path(output), trust_model=trust_model, metric=metric)
    request = dataclasses.replace(request, output=dataclasses.replace(request.output, force=force),
                                  verbose=verbose)
    quiet_tensorflow(verbose)
    from edgepack.packaging.tempdirs import run_tempdir

    with run_tempdir():
        run_pipeline(request, progress=progress)
    made = read_manifest(request.output.path)
    verify_artifacts(request.output.path, made.artifacts)
    old = (src / manifest.artifact("model").path).read_bytes()
    new = (request.output.path / made.artifact("model").path).read_bytes()
    report = compare_models(old, new, original_name=str(src), new_name=str(request.output.path))
    return report.to_dict()


def report(*, bundle: str | Path, output: str | Path | None = None, force: bool = False) -> Path:
    """Write ``bundle``'s self-contained ``report.html`` (to ``output`` if given; an existing ``output``
    is replaced only with ``force``) from its manifest and validation.json; returns the page's path."""
    from edgepack.report import write_bundle_report

    if output is not None and Path(output).exists() and not force:
        from edgepack.errors import PackagingError

        raise PackagingError(f"output {output} already exists", hint="pass --force to replace it, or choose another -o")
    if output is not None and not Path(output).resolve().parent.is_dir():
        from edgepack.errors import PackagingError

        raise PackagingError(f"output folder {Path(output).resolve().parent} does not exist", hint="create it first")
    return write_bundle_report(Path(bundle), Path(output) if output is not None else None)


def render_report(report, console) -> None:
    """Print a validation report as tables on a rich ``console``."""
    from edgepack.validation.report import render

    render(report, console)


def raise_if_failed(report) -> None:
    """:class:`~edgepack.errors.ValidationFailed` when the report missed the budget."""
    from edgepack.validation.validate import raise_if_failed as check

    check(report)


def stderr_console():
    """The one stderr console edgepack's progress bars draw on (a status spinner can share it)."""
    from edgepack.calibration.progress import stderr_console as console

    return console()


_TUNE_KEYS = ("space", "trials", "sampler", "pruner", "objective", "max_latency_ms", "max_bytes", "storage", "study",
              "workers", "keep")


def tune(*, model: str | Path, output: str | Path, eval_data: str | Path | None = None, report: bool = False,
         space: str | Path | None = None, trials: int | None = None, sampler: str | None = None,
         pruner: str | None = None, objective: str | None = None, max_latency_ms: float | None = None,
         max_bytes: int | None = None, storage: str | None = None, study: str | None = None,
         workers: int | None = None, keep: str | None = None, verbose: bool = False,
         progress: Callable[[str], None] | None = None, on_trial: Callable[[str], None] | None = None,
         **convert_options: Any) -> dict[str, Any]:
    """Search the space (``space``: a TOML file, else a default for the model and target) for the most
    accurate model that fits the target and the limits; every trial is :func:`convert` + :func:`validate`.

    ``convert_options`` are :func:`convert`'s options every trial shares (``target``, ``calibration``,
    ``train_data``, ``epochs``, ...); the space's knobs override them per trial. The study lives in
    ``storage`` (an Optuna database URL; default a SQLite file in ``output``); ``report=True`` only
    rebuilds ``trials.csv`` and ``pareto.png`` from it. See ``edgepack tune --help``."""
    from edgepack._native import quiet_tensorflow
    from edgepack.request import TuneOptions
    from edgepack.tune.job import make_job
    from edgepack.tune.run import run_tune

    given = {k: v for k, v in locals().items() if k in _TUNE_KEYS and v is not None}
    if eval_data is None and not report:
        from edgepack.errors import UsageError

        raise UsageError("--eval-data is required: every trial is scored on it",
                         hint="give held-out data (.npz with x and y), or --report to only rebuild the report")
    options = TuneOptions(eval_data=Path(eval_data) if eval_data is not None else None,
                          **{k: Path(v) if k == "space" else v for k, v in given.items()})
    import inspect as pyinspect

    shared = set(pyinspect.signature(convert).parameters) - {"model", "output", "force", "verbose", "progress",
                                                             "on_epoch"}
    unknown = sorted(set(convert_options) - shared)
    if unknown:
        raise TypeError(f"tune() got unexpected keyword arguments: {', '.join(unknown)}")
    fixed = {k: v for k, v in convert_options.items() if v is not None}
    convert_request(model=model, output=Path(output) / "trials" / "check", **fixed)  # the shared options are valid
    existed = Path(output).exists()
    try:
        job = make_job(model=Path(model), output=Path(output), options=options, flags=fixed, report=report)
        quiet_tensorflow(verbose)
        result = run_tune(job, convert=convert, validate=validate, verbose=verbose, report_only=report,
                          progress=progress, on_trial=on_trial)
    except Exception:
        if not existed:  # a refused --storage (or any early failure) leaves no empty -o folder behind
            _remove_if_empty(Path(output))
        raise
    from edgepack.errors import redact

    return {**result, "storage": redact(str(result.get("storage", "")))}


def _remove_if_empty(folder: Path) -> None:
    import contextlib

    with contextlib.suppress(OSError):
        folder.rmdir()  # only an empty folder: a study that already holds trials stays
