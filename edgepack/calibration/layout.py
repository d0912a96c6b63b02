"""Layouts: a source model's tensors (ONNX: channels first) against the TFLite tensors they became.

A mapping is a permutation ``perm`` with ``tflite = source.transpose(perm)`` (batch axis included),
or None when both layouts are the same. Data for a model may come in either layout: each input is
matched by shape, the source layout winning when both fit (a 3x3x3 image, say).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np

from edgepack.calibration import Dataset, InputSpec
from edgepack.calibration.source import Source
from edgepack.errors import CalibrationError

_CHANNELS_FIRST = {3: "NCW", 4: "NCHW", 5: "NCDHW"}
_CHANNELS_LAST = {3: "NWC", 4: "NHWC", 5: "NDHWC"}


def channels_last_perm(rank: int) -> tuple[int, ...]:
    """(0, 2, ..., rank-1, 1): NCHW -> NHWC and its 3-D/5-D cousins."""
    return (0, *range(2, rank), 1)


def inverse(perm: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argsort(perm))


def layout_names(perm: Sequence[int] | None, rank: int) -> tuple[str | None, str | None]:
    """(source layout, TFLite layout) names such as ("NCHW", "NHWC"); None when not transposed."""
    if perm is None or tuple(perm) == tuple(range(rank)):
        return None, None
    if tuple(perm) == channels_last_perm(rank) and rank in _CHANNELS_FIRST:
        return _CHANNELS_FIRST[rank], _CHANNELS_LAST[rank]
    return "perm" + "".join(map(str, perm)), None


def _fits(shape: Sequence[int], want: Sequence[int | None]) -> bool:
    return len(shape) == len(want) and all(w is None or w == s for w, s in zip(want, shape))


def _sample_perm(perm: Sequence[int]) -> tuple[int, ...]:
    """The permutation of a sample's axes (``perm`` without the batch axis, which stays first)."""
    if perm[0] != 0:
        raise ValueError(f"layout permutation {list(perm)} moves the batch axis")
    return tuple(p - 1 for p in perm[1:])


class TransposedSource(Source):
    """Another source's samples with their axes permuted as they are read (nothing is copied)."""

    def __init__(self, base: Source, axes: Sequence[int]) -> None:
        self.base = base
        self.axes = tuple(axes)
        self.where = base.where
        self.labels = base.labels
        self.class_names = base.class_names
        self.preprocess = base.preprocess
        self.raw_range = base.raw_range
        self.shape_hint = base.shape_hint

    def __len__(self) -> int:
        return len(self.base)

    @property
    def sample_shape(self) -> tuple[int | None, ...]:
        shape = self.base.sample_shape
        return tuple(shape[a] for a in self.axes)

    @property
    def dtype(self) -> np.dtype:
        return self.base.dtype

    def read(self, idx: np.ndarray) -> np.ndarray:
        return np.transpose(self.base.read(idx), (0, *(a + 1 for a in self.axes)))

    def locate(self, i: int) -> str:
        return self.base.locate(i)

    def check_kind(self, label: str) -> None:
        self.base.check_kind(label)


def _with_sources(ds: Dataset, sources: dict[str, Source]) -> Dataset:
    """``ds`` (same selection, labels, observers) reading from ``sources``."""
    out = copy.copy(ds)
    out.sources = sources
    return out


def to_layouts(ds: Dataset, specs: Sequence[InputSpec], tflite_shapes: dict[str, Sequence[int]],
               perms: dict[str, Sequence[int] | None]) -> tuple[Dataset, Dataset]:
    """``(source layout, TFLite layout)`` views of ``ds``, whichever layout each input came in.

    ``specs`` are the source model's inputs (shapes without batch, None = dynamic);
    ``tflite_shapes`` the TFLite inputs' shapes without batch; ``perms`` the source->TFLite
    permutations (batch axis included).
    """
    source: dict[str, Source] = {}
    tflite: dict[str, Source] = {}
    for spec in specs:
        src = ds.sources[spec.name]
        perm = perms.get(spec.name)
        sample = tuple(src.sample_shape)
        if perm is None:
            source[spec.name] = tflite[spec.name] = src
            continue
        axes = _sample_perm(perm)
        if _fits(sample, spec.shape):
            source[spec.name], tflite[spec.name] = src, TransposedSource(src, axes)
        elif _fits(sample, tuple(tflite_shapes[spec.name])):
            source[spec.name], tflite[spec.name] = TransposedSource(src, inverse(axes)), src
        else:
            want = "x".join("?" if d is None else str(d) for d in spec.shape)
            tfl = "x".join(map(str, tflite_shapes[spec.name]))
            raise CalibrationError(
                f"{ds.source} input {spec.name!r}: sample shape {'x'.join(map(str, sample))} fits neither the "
                f"ONNX layout ({want}) nor the TFLite layout ({tfl})",
                hint="store samples on the first axis, e.g. (N, C, H, W) as the ONNX model takes them")
    return _with_sources(ds, source), _with_sources(ds, tflite)


def relaxed_specs(specs: Sequence[InputSpec]) -> list[InputSpec]:
    """Specs that accept any sample shape of the right rank (the layout is resolved later)."""
    return [InputSpec(s.name, tuple(None for _ in s.shape), s.dtype, s.sample_axis) for s in specs]


def outputs_to_source(outputs: Sequence[np.ndarray], perms: Sequence[Sequence[int] | None]) -> list[np.ndarray]:
    """TFLite-layout outputs back in the source model's layout."""
    return [o if p is None else np.transpose(o, inverse(p)) for o, p in zip(outputs, perms)]


# -- recurrent state ----------------------------------------------------------------------------------
# what a name adds to say "the next one": state -> stateN, h -> h_out, c -> next_c, cache -> new_cache
_NEXT_SUFFIXES = ("n", "_n", "out", "_out", "next", "_next", "new", "_new", "_1")
_NEXT_PREFIXES = ("next_", "new_", "next", "new")


def _feeds(output: str, input_name: str) -> bool:
    low, base = output.lower(), input_name.lower()
    if low == base:  # a pass-through is not a state
        return False
    rest = low[len(base):] if low.startswith(base) else None
    pre = low[:-len(base)] if low.endswith(base) else None
    return rest in _NEXT_SUFFIXES or pre in _NEXT_PREFIXES


def find_state_pairs(inputs: Sequence[str], outputs: Sequence[str],
                     given: Sequence[tuple[str, str]] = ()) -> dict[str, str]:
    """Recurrent state pairs, input -> the output that feeds it at the next frame, in output order: the
    ``given`` ones (``--state state=stateN``, checked), else those the names make obvious."""
    from edgepack.errors import UsageError

    if given:
        for i, o in given:
            if i not in inputs:
                raise UsageError(f"--state {i}={o}: the model has no input {i!r}", hint=f"inputs: {', '.join(inputs)}")
            if o not in outputs:
                raise UsageError(f"--state {i}={o}: the model has no output {o!r}",
                                 hint=f"outputs: {', '.join(outputs)}")
        return dict(given)
    pairs: dict[str, str] = {}
    for o in outputs:
        found = next((i for i in inputs if i not in pairs and _feeds(o, i)), None)
        if found is not None:
            pairs[found] = o
    return pairs
