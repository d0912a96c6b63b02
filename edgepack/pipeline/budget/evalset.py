"""The evaluation set of the accuracy budget: ``--eval-data`` or the held-out calibration samples, in
the TFLite layout, with the source model's outputs on it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgepack.formats.base import signature_name
from edgepack.validation.intervals import (
    Interval,
    samples_to_show_agreement,
    samples_to_show_drop,
    task_drop_interval,
    task_reference_values,
)
from edgepack.validation.metrics import feature_axis


@dataclass
class EvalSet:
    """The evaluation data in the TFLite layout, the source model's outputs on it, labels."""

    inputs: dict[str, np.ndarray]  # TFLite-layout arrays, batch first
    # source layout, one per output, samples first: an output without a leading batch axis (a
    # time-major recognizer's (steps, 1, classes)) gets one stacked in front, per sample
    refs: list[np.ndarray]
    output_names: list[str]
    perms: list[Sequence[int] | None]  # per output: tflite = source.transpose(perm)
    axes: list[int | None]
    labels: np.ndarray | None = None
    task: Callable[[list, list, Any], float] | None = None  # --metric: the user's task metric
    stacked: tuple[bool, ...] = ()  # per output: the samples axis was added (no leading batch axis)
    # inputs without a sample axis (recurrent state): each sample is one whole tensor, run one at a time
    whole: frozenset[str] = frozenset()
    states: frozenset[str] = frozenset()  # recurrent state outputs: no top-1 decision is taken from them
    _task_reference: float | None = None
    _task_resampled: np.ndarray | None = None

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def subset(self, positions: np.ndarray) -> EvalSet:
        return EvalSet({k: v[positions] for k, v in self.inputs.items()}, [r[positions] for r in self.refs],
                       self.output_names, self.perms, self.axes,
                       None if self.labels is None else self.labels[positions], self.task, self.stacked,
                       self.whole, self.states)

    def has_decision(self, i: int) -> bool:
        """Output ``i`` has a class axis to take a top-1 decision from (not a state, not one value)."""
        ref = self.refs[i]
        return self.output_names[i] not in self.states and ref.ndim >= 2 and ref.shape[-1] > 1

    def sample(self, i: int) -> dict[str, np.ndarray]:
        """Sample ``i`` as the model takes it: a batch of one, or the whole tensor of an input without
        a sample axis."""
        return {k: v[i] if k in self.whole else v[i:i + 1] for k, v in self.inputs.items()}

    def task_reference(self) -> float:
        """The task metric of the source model's own outputs (the score a candidate may drop from)."""
        if self._task_reference is None:
            self._task_reference = self.task(self.refs, self.refs, self.labels)
        return self._task_reference

    def task_drop_interval(self, outputs: list[np.ndarray], value: float, confidence: float) -> Interval:
        """The task metric's drop (a fraction) with its paired bootstrap interval; the source model's
        scores on the resamples are computed once for every candidate."""
        if self._task_resampled is None:
            self._task_resampled = task_reference_values(self.task, self.refs, self.labels)
        return task_drop_interval(self.task, outputs, self.refs, self.labels, value, confidence,
                                  reference_values=self._task_resampled)


MAX_HOLDOUT = 400  # held-out calibration samples at most, however many the budget would need


def holdout_wanted(budget) -> int:
    """How many calibration samples to hold out for the budget: ``budget.holdout`` (100), or as many as
    showing the budget needs even if every sample agrees (its interval's bound), up to MAX_HOLDOUT."""
    needs = [budget.holdout]
    if budget.min_agreement is not None:
        needs.append(samples_to_show_agreement(budget.min_agreement, budget.confidence) or MAX_HOLDOUT)
    if budget.max_drop is not None and budget.metric is None:
        needs.append(samples_to_show_drop(budget.max_drop / 100.0, 1.0, budget.confidence) or MAX_HOLDOUT)
    return max(budget.holdout, min(max(needs), MAX_HOLDOUT))


def default_axes(output_names: Sequence[str], shapes: Sequence[Sequence[int]], overrides: dict[str, int]
                 ) -> list[int | None]:
    return [feature_axis(tuple(s), overrides.get(n)) for n, s in zip(output_names, shapes)]


def eval_set(st) -> EvalSet:
    """The evaluation data (``--eval-data`` or the held-out calibration samples) in the TFLite
    layout, and the source model's outputs on it."""
    from edgepack.calibration.layout import to_layouts

    loaded = st.loaded
    specs = loaded.inputs
    ds = _open_eval_data(st)
    info = st.info
    in_perm = {n: (f or {}).get("perm") for n, f in st.source_io.get("inputs", {}).items()}
    tfl_shapes = {}
    whole = frozenset(s.name for s in specs if s.sample_axis is None)
    for i, spec in enumerate(specs):
        idx = info.signature_inputs.get(signature_name(spec.name), info.inputs[i])
        shape = info.tensor(idx).shape
        tfl_shapes[spec.name] = shape if spec.name in whole else shape[1:]
    src, tfl = to_layouts(ds, specs, tfl_shapes, in_perm)
    dtypes = {s.name: s.dtype for s in specs}
    src_arrays = {k: np.concatenate([b[k] for b in src.batches(64, dtypes)]) for k in dtypes}
    tfl_arrays = {k: np.concatenate([b[k] for b in tfl.batches(64)]).astype(np.float32) for k in dtypes}
    ref_arrays, stacked = _source_outputs(loaded, src_arrays, len(ds), bool(whole))
    out_perm = [(st.source_io.get("outputs", {}).get(n) or {}).get("perm") for n in loaded.output_names]
    axes = _slice_axes(list(loaded.output_names), ref_arrays, dict(st.request.budget.sqnr_axes))
    labels = None if ds.labels is None else np.asarray(ds.labels)
    states = frozenset(((st.graph or {}).get("state_pairs") or {}).values())
    ev = EvalSet(tfl_arrays, ref_arrays, list(loaded.output_names), out_perm, axes, labels, st.task_metric,
                 tuple(stacked), whole, states)
    _check_agreement(ev, st.request.budget)
    return ev


def _check_agreement(ev: EvalSet, budget) -> None:
    """``--min-agreement`` needs an output with a class axis (a top-1 decision to agree on)."""
    from edgepack.errors import UsageError

    if budget.min_agreement is None or any(ev.has_decision(i) for i in range(len(ev.refs))):
        return
    shapes = ", ".join(f"{n} ({'x'.join(map(str, r.shape[1:])) or 'scalar'}{', state' if n in ev.states else ''})"
                       for n, r in zip(ev.output_names, ev.refs))
    raise UsageError(f"--min-agreement: no output of the model has a class axis to take a top-1 decision from "
                     f"(outputs: {shapes})",
                     hint="use --min-sqnr, or --max-drop with a task --metric (a threshold decision, say)")


def _open_eval_data(st):
    """The held-out calibration samples, else ``--eval-data`` opened like calibration data."""
    from edgepack.calibration.calibrate import input_preprocessing
    from edgepack.calibration.layout import relaxed_specs
    from edgepack.calibration.sources import open_dataset
    from edgepack.formats.detect import ModelFormat

    req, specs = st.request, st.loaded.inputs
    if st.heldout is not None:
        ds = st.heldout
    else:
        pre = input_preprocessing(specs, spec=req.calibration.preprocess, recipe=req.recipe)
        onnx = st.loaded.format is ModelFormat.ONNX
        ds = open_dataset(req.budget.eval_data, relaxed_specs(specs) if onnx else specs, what="--eval-data",
                          preprocess=pre, label_column=req.calibration.label_column)
    if req.budget.max_drop is not None and ds.labels is None and req.budget.metric is None:
        from edgepack.errors import UsageError

        raise UsageError("--max-drop needs labelled --eval-data (y in an .npz, class subfolders, --label-column)",
                         hint="give labelled --eval-data, a task --metric that compares with the source model, or "
                              "use --min-sqnr / --min-agreement (no labels needed)")
    return ds


def _source_outputs(loaded, src_arrays: dict[str, np.ndarray], n_samples: int, whole: bool = False
                    ) -> tuple[list[np.ndarray], list[bool]]:
    """The source model's outputs, samples first, and per output whether a samples axis was stacked in
    front (an output whose leading axis is not the samples', like time-major ``(steps, 1, classes)``).
    With inputs without a sample axis (``whole``) the model already runs sample by sample, stacking the
    outputs that have no batch axis (the runner does the same with the TFLite outputs)."""
    refs: list[list[np.ndarray]] = [[] for _ in loaded.output_names]
    stacked = [False] * len(loaded.output_names)
    for start in range(0, n_samples, 32):
        chunk = {k: v[start:start + 32] for k, v in src_arrays.items()}
        n = len(next(iter(chunk.values())))
        outs = [np.asarray(o, np.float32) for o in loaded.run(chunk)]
        if start == 0 and not whole:
            stacked = [o.ndim == 0 or o.shape[0] != n for o in outs]
        if any(stacked):  # one sample at a time, each output's samples stacked in front
            per = [loaded.run({k: v[j:j + 1] for k, v in chunk.items()}) for j in range(n)]
            outs = [np.stack([np.asarray(p[i], np.float32) for p in per]) if s else o
                    for i, (o, s) in enumerate(zip(outs, stacked))]
        for i, o in enumerate(outs):
            refs[i].append(o)
    return [np.concatenate(r) for r in refs], stacked


def _slice_axes(names: list[str], refs: list[np.ndarray], overrides: dict[str, int]) -> list[int | None]:
    """Each output's slice axis (``--sqnr-axis`` checked against the outputs and their shapes)."""
    from edgepack.errors import UsageError

    unknown = set(overrides) - set(names)
    if unknown:
        raise UsageError(f"--sqnr-axis {sorted(unknown)[0]}: the model has no such output",
                         hint=f"outputs: {', '.join(names)}")
    axes = default_axes(names, [r.shape for r in refs], overrides)
    for name, r in zip(names, refs):
        if name in overrides and axes[names.index(name)] is None:
            raise UsageError(f"--sqnr-axis {name}:{overrides[name]}: output {name} has shape "
                             f"{'x'.join(map(str, r.shape))}; give a non-batch axis")
    return axes
