"""A :class:`~edgepack.tune.study.TuneJob` from the API's arguments: the space, storage and study name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgepack.errors import ModelLoadError, UsageError
from edgepack.request import ConvertRequest, Sampler, TuneOptions
from edgepack.targets import load_target
from edgepack.tune.space import SearchSpace, default_space, read_space
from edgepack.tune.study import TuneJob, storage_url

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


def make_job(*, model: Path, output: Path, options: TuneOptions, flags: dict[str, Any],
             report: bool = False) -> TuneJob:
    """``report``: only the storage is read (the model and data may live on another machine)."""
    target_name = flags.get("target") or ConvertRequest.target
    spec = load_target(target_name)
    if report:
        return TuneJob(model=model, output=output.resolve(), target=spec.name, flags=(), options=options,
                       space=SearchSpace(()), storage=storage_url(options.storage, output),
                       study=options.study or f"{model.stem}-{spec.name}")
    if not model.exists():
        raise ModelLoadError(f"{model}: no such file or directory")
    if options.eval_data is None or not options.eval_data.exists():
        raise UsageError(f"--eval-data {options.eval_data}: no such file or directory",
                         hint="give held-out data (.npz with x and y) to score every trial on")
    if output.exists() and not output.is_dir():
        raise UsageError(f"-o {output}: exists and is not a folder")
    if options.space is not None:
        space = read_space(options.space)
    else:
        space = default_space(keras=model.suffix.lower() in KERAS_SUFFIXES, trainable=flags.get("train_data") is not None,
                              quantize_modes=spec.quantize_modes, min_calibration_samples=spec.min_calibration_samples)
    if options.sampler is Sampler.GRID:
        space.grid_size()  # counted before anything is created: a grid past the limit is refused here
    fixed = {k: (str(Path(v).resolve()) if k in ("calibration", "train_data", "labels", "recipe")
                 and isinstance(v, str | Path) else v) for k, v in flags.items() if k != "target"}
    return TuneJob(model=model.resolve(), output=output.resolve(), target=spec.name, flags=tuple(sorted(fixed.items())),
                   options=TuneOptions(**{**options.__dict__, "eval_data": options.eval_data.resolve()}),
                   space=space, storage=storage_url(options.storage, output),
                   study=options.study or f"{model.stem}-{spec.name}", seed=int(flags.get("seed") or 0))
