"""The Python API: the same operations and options as the CLI, keyword-only.

>>> from edgepack import api
>>> result = api.convert(model="model.keras", output="bundle", calibration="calib.npy")
>>> report = api.validate(bundle="bundle", data="heldout.npz", max_drop=1.0)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepack.errors import OptionError
from edgepack.packaging.manifest import Manifest

__all__ = ["ConvertResult", "convert", "inspect", "target", "target_docs", "targets", "validate"]


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


def convert(*, model: str | Path, output: str | Path, quantize: str = "int8",
            calibration: str | Path | Mapping[str, str | Path] | None = None, calibration_samples: int = 200,
            seed: int = 0,
            target: str = "generic", labels: str | Path | None = None, force: bool = False,
            trust_model: bool = False, per_tensor: bool = False, verbose: bool = False,
            progress: Callable[[str], None] | None = None,
            input_shapes: Mapping[str, Sequence[int]] | Sequence[str] | None = None,
            preprocess: str | None = None, recipe: str | Path | None = None,
            label_column: str | None = None, prune: str | None = None, prune_norm: str = "l1", prune_round: int = 1,
            prune_layers: Sequence[str] = (), keep_layers: Sequence[str] = (), qat: bool = False,
            train_data: str | Path | None = None, epochs: int = 10, distill: bool = False,
            distribute: str | None = None, learning_rate: float | None = None,
            onnx2tf_options: Mapping[str, Any] | Sequence[str] | None = None) -> ConvertResult:
    """Convert ``model`` into a bundle at ``output``; see ``edgepack convert --help``.

    ``calibration`` is an ``.npy``/``.npz``/``.csv`` file or an image folder, or ``{input name: path}``
    for models with several inputs; ``preprocess`` (``"resize=96x96,mean=127.5,std=127.5"``) or a
    ``recipe`` file say how raw data becomes model input, and are recorded in the manifest.

    ``input_shapes`` fixes an ONNX model's dynamic dimensions: ``{"input": (1, 3, 224, 224)}`` or
    ``["input:1x3x224x224"]``.

    ``prune`` (``"channels:0.5"``, ``"sparsity:0.8"``, ``"2:4"``) and ``qat`` optimize a Keras model
    before conversion, fine-tuned for ``epochs`` on ``train_data`` (.npz with x, optional y).

    ``onnx2tf_options`` (``{"disable_group_convolution": True}`` or ``["KEY=VALUE"]``) forces onnx2tf
    options for an ONNX model instead of edgepack's automatic fallbacks."""
    from edgepack._native import quiet_tensorflow
    from edgepack.converter.onnx_fallbacks import parse_options
    from edgepack.converter.pipeline import run_pipeline
    from edgepack.converter.request import ConvertRequest, QuantizeMode

    quiet_tensorflow(verbose)
    request = ConvertRequest(
        model=Path(model), output=Path(output), quantize=_enum(QuantizeMode, quantize, "--quantize"),
        calibration=Path(calibration) if calibration is not None and not isinstance(calibration, Mapping) else None,
        calibration_inputs=tuple((str(k), Path(v)) for k, v in calibration.items())
        if isinstance(calibration, Mapping) else (),
        preprocess=preprocess, recipe=Path(recipe) if recipe is not None else None, label_column=label_column,
        calibration_samples=calibration_samples, seed=seed, target=target,
        labels=Path(labels) if labels is not None else None, force=force, trust_model=trust_model,
        per_tensor=per_tensor, verbose=verbose, input_shapes=_input_shapes(input_shapes),
        onnx2tf_options=parse_options(onnx2tf_options),
        **_optimize_fields(prune, prune_norm, prune_round, prune_layers, keep_layers, qat, train_data, epochs,
                           distill, distribute, learning_rate))
    from edgepack.tempdirs import run_tempdir

    with run_tempdir():  # temporary folders named by pid: the next run removes a killed run's
        state = run_pipeline(request, progress=progress)
    return ConvertResult(bundle=request.output, manifest=state.manifest)


def _optimize_fields(prune, prune_norm, prune_round, prune_layers, keep_layers, qat, train_data, epochs, distill,
                     distribute, learning_rate) -> dict[str, Any]:
    """Request fields for pruning/QAT, with option values checked before anything heavy runs."""
    from edgepack.converter.optimize import parse_prune

    if prune is not None:
        parse_prune(prune)
    if prune_norm not in ("l1", "l2"):
        raise OptionError("--prune-norm", prune_norm, ["l1", "l2"])
    if prune_round < 1:
        raise OptionError("--prune-round", prune_round, hint="give 1 (exact ratio) or a channel multiple such as 8")
    if distribute not in (None, "mirrored"):
        raise OptionError("--distribute", distribute, ["mirrored"])
    if learning_rate is not None and not 0 < learning_rate < 1:
        raise OptionError("--learning-rate", learning_rate, hint="give a rate in (0, 1), e.g. 1e-4")
    if epochs < 1:
        raise OptionError("--epochs", epochs, hint="give at least 1")
    return {"prune": prune, "prune_norm": prune_norm, "prune_round": prune_round, "prune_layers": tuple(prune_layers),
            "keep_layers": tuple(keep_layers), "qat": qat, "epochs": epochs, "distill": distill,
            "train_data": Path(train_data) if train_data is not None else None, "distribute": distribute,
            "learning_rate": learning_rate}


def _input_shapes(spec: Mapping[str, Sequence[int]] | Sequence[str] | None) -> tuple:
    if not spec:
        return ()
    if isinstance(spec, Mapping):
        return tuple((str(k), tuple(int(d) for d in v)) for k, v in spec.items())
    from edgepack.converter.onnx_model import parse_input_shape

    return tuple(parse_input_shape(s) for s in ([spec] if isinstance(spec, str) else spec))


def validate(*, bundle: str | Path, data: str | Path | Mapping[str, str | Path], reference: str | Path | None = None,
             runtime: str = "litert", max_drop: float | None = None, trust_model: bool = False,
             verbose: bool = False, progress: Callable[[int], None] | None = None, check: bool = True,
             preprocess: str | None = None, recipe: str | Path | None = None, label_column: str | None = None):
    """Validate a bundle on ``data``; raises :class:`ValidationFailed` past the budget when ``check``.

    ``data`` takes the same sources as ``convert``'s calibration (class subfolders of an image
    folder give labels); the preprocessing recorded in the manifest is applied unless
    ``preprocess``/``recipe`` say otherwise (``preprocess="none"``: data is model-ready)."""
    from edgepack._native import quiet_tensorflow
    from edgepack.validation.runtimes import Runtime
    from edgepack.validation.validate import raise_if_failed, validate_bundle

    quiet_tensorflow(verbose)
    data = {str(k): Path(v) for k, v in data.items()} if isinstance(data, Mapping) else Path(data)
    report = validate_bundle(Path(bundle), data, reference=Path(reference) if reference else None,
                             runtime=_enum(Runtime, runtime, "--runtime"), max_drop=max_drop,
                             trust_model=trust_model, progress=progress, preprocess=preprocess,
                             recipe=Path(recipe) if recipe is not None else None, label_column=label_column)
    if check:
        raise_if_failed(report)
    return report


def inspect(*, path: str | Path) -> dict[str, Any]:
    """Inputs/outputs with quantization, op table and sizes of a bundle or a bare ``.tflite``."""
    from edgepack.errors import BundleError
    from edgepack.packaging.bundle import verify_artifacts
    from edgepack.packaging.manifest import read_manifest
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
        inputs = [t.__dict__ for t in manifest.inputs]
        outputs = [t.__dict__ for t in manifest.outputs]
    else:
        inputs = [_tensor_dict(info.tensor(i), info.signature_inputs) for i in info.inputs]
        outputs = [_tensor_dict(info.tensor(i), info.signature_outputs) for i in info.outputs]
    out: dict[str, Any] = {
        "path": str(p), "model": str(model_path), "bytes": info.size, "mode": info.quantization_mode,
        "granularity": info.granularity, "inputs": inputs, "outputs": outputs, "ops": info.op_counts,
        "subgraphs": info.subgraphs, "tensors": len(info.tensors),
    }
    if manifest is not None:
        out["manifest"] = manifest.to_dict()
        out["artifacts"] = [a.__dict__ for a in manifest.artifacts]
        val = p / "validation.json"
        if val.is_file():
            out["validation"] = json.loads(val.read_text("utf-8"))
    return out


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
