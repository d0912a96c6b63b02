"""The preprocessing spec: what turns a raw image (or array) into what the model's input expects.

One spec per model input, given as ``--preprocess "resize=96x96,mean=127.5,std=127.5"`` or in a
recipe file (TOML or JSON), is applied to calibration data, written into the manifest (so a device
app knows exactly what to do before ``invoke()``) and applied again by ``validate`` to raw data.

Order of the steps: decode → color → resize → center crop → float → ×scale → (x − mean) / std →
layout → dtype. Per-channel values are separated by ``:`` (``mean=123.7:116.3:103.5``).
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.errors import UsageError

RESIZE_METHODS = ("nearest", "bilinear", "bicubic", "lanczos", "box")
COLORS = ("rgb", "bgr", "grayscale")
LAYOUTS = ("nhwc", "nchw")
DTYPES = ("float32", "float16", "uint8", "int8", "int16", "int32")
KEYS = ("resize", "resize_method", "crop", "color", "scale", "mean", "std", "layout", "dtype")


@dataclass(frozen=True)
class Preprocess:
    """One input's preprocessing; ``None`` fields are steps that are not applied."""

    resize: tuple[int, int] | None = None  # (height, width)
    resize_method: str = "bilinear"
    crop: tuple[int, int] | None = None  # center crop (height, width), after resize
    color: str | None = None  # rgb / bgr / grayscale; None = as decoded (images: from the channel count)
    scale: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    layout: str | None = None  # nhwc / nchw; None = nhwc
    dtype: str | None = None  # None = the model input's dtype

    @property
    def touches_pixels(self) -> bool:
        """Steps that need an image (resize, crop, color) rather than numbers."""
        return self.resize is not None or self.crop is not None or self.color is not None

    def to_dict(self) -> dict[str, Any]:
        """The manifest form: only the steps that apply, in the order they run."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "resize_method" and self.resize is None:
                continue
            if v is not None:
                out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, where: str = "preprocessing") -> Preprocess:
        return _build({k: v for k, v in d.items()}, where)

    def spec_string(self) -> str:
        """The ``--preprocess`` form of this spec (round-trips through :func:`parse_spec`)."""
        parts = []
        for k, v in self.to_dict().items():
            if k in ("resize", "crop"):
                v = f"{v[0]}x{v[1]}"
            elif isinstance(v, list):
                v = ":".join(f"{x:g}" for x in v)
            elif isinstance(v, float):
                v = f"{v:g}"
            parts.append(f"{k}={v}")
        return ",".join(parts)

    # -- applying -------------------------------------------------------------------------------
    def image_to_array(self, img) -> np.ndarray:
        """A decoded PIL image → HWC float32 (or uint8 when no numeric step follows) after color/resize/crop."""
        from PIL import Image

        mode = {"grayscale": "L", None: None}.get(self.color, "RGB")
        if mode is None:
            mode = "L" if img.mode in ("L", "I", "I;16", "F", "1", "LA") else "RGB"
        if img.mode != mode:
            img = img.convert(mode)
        if self.resize is not None:
            h, w = self.resize
            method = getattr(Image.Resampling, self.resize_method.upper())
            img = img.resize((w, h), method)
        if self.crop is not None:
            ch, cw = self.crop
            if ch > img.height or cw > img.width:
                raise ValueError(f"crop {ch}x{cw} is larger than the image ({img.height}x{img.width})")
            top, left = (img.height - ch) // 2, (img.width - cw) // 2
            img = img.crop((left, top, left + cw, top + ch))
        arr = np.asarray(img)
        arr = arr[..., None] if arr.ndim == 2 else arr
        return arr[..., ::-1] if self.color == "bgr" else arr

    def apply_numeric(self, batch: np.ndarray, default_dtype: str) -> np.ndarray:
        """scale / mean / std / layout / dtype on a batch (N, ...) whose last axis is channels (HWC)."""
        x = batch
        if self.scale is not None or self.mean is not None or self.std is not None:
            x = x.astype(np.float32)
            if self.scale is not None:
                x *= np.float32(self.scale)
            if self.mean is not None:
                x -= np.asarray(self.mean, np.float32)
            if self.std is not None:
                x /= np.asarray(self.std, np.float32)
        if self.layout == "nchw" and x.ndim == 4:
            x = np.transpose(x, (0, 3, 1, 2))
        return np.ascontiguousarray(x, dtype=self.dtype or default_dtype)

    def implied_range(self, raw: tuple[float, float] = (0.0, 255.0)) -> tuple[float, float] | None:
        """Where 8-bit pixel values land after this spec; None when no numeric step is given."""
        if self.scale is None and self.mean is None and self.std is None:
            return None
        # per-channel mean/std (``mean=a:b:c``) need one column per channel for the in-place steps
        channels = max(np.size(v) for v in (self.scale, self.mean, self.std) if v is not None)
        ends = self.apply_numeric(np.repeat(np.array([[raw[0]], [raw[1]]], np.float32), channels, axis=1), "float32")
        return float(ends.min()), float(ends.max())


def _pair(v: Any, key: str, where: str) -> tuple[int, int]:
    if isinstance(v, int) and not isinstance(v, bool):
        return (v, v)
    if isinstance(v, (list, tuple)) and len(v) == 2:
        vals = v
    else:
        vals = str(v).lower().split("x")
        vals = vals * 2 if len(vals) == 1 else vals
    try:
        h, w = (int(x) for x in vals)
    except (TypeError, ValueError):
        raise UsageError(f"{where}: {key}={v!r} is not HEIGHTxWIDTH", hint=f"e.g. {key}=96x96") from None
    if h < 1 or w < 1:
        raise UsageError(f"{where}: {key}={v!r} must be positive")
    return h, w


def _floats(v: Any, key: str, where: str) -> tuple[float, ...]:
    vals = v if isinstance(v, (list, tuple)) else str(v).split(":")
    try:
        out = tuple(float(x) for x in vals)
    except (TypeError, ValueError):
        raise UsageError(f"{where}: {key}={v!r} is not a number (per-channel values: 1:2:3)") from None
    if not out or not all(np.isfinite(out)):
        raise UsageError(f"{where}: {key}={v!r} must be finite numbers")
    if key == "std" and any(x == 0 for x in out):
        raise UsageError(f"{where}: std={v!r} would divide by zero")
    return out


def _choice(v: Any, key: str, valid: Sequence[str], where: str) -> str:
    s = str(v).lower()
    if s not in valid:
        raise UsageError(f"{where}: {key}={v!r} is not one of {', '.join(valid)}")
    return s


def _build(raw: dict[str, Any], where: str) -> Preprocess:
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise UsageError(f"{where}: unknown preprocessing key {unknown[0]!r}", hint=f"valid keys: {', '.join(KEYS)}")
    kw: dict[str, Any] = {}
    for key, v in raw.items():
        if key in ("resize", "crop"):
            kw[key] = _pair(v, key, where)
        elif key in ("mean", "std"):
            kw[key] = _floats(v, key, where)
        elif key == "scale":
            kw[key] = _floats(v, key, where)[0]
        elif key == "resize_method":
            kw[key] = _choice(v, key, RESIZE_METHODS, where)
        elif key == "color":
            kw[key] = _choice(v, key, COLORS, where)
        elif key == "layout":
            kw[key] = _choice(v, key, LAYOUTS, where)
        elif key == "dtype":
            kw[key] = _choice(v, key, DTYPES, where)
    return Preprocess(**kw)


def parse_spec(text: str, *, where: str = "--preprocess") -> Preprocess | None:
    """``"resize=96x96,mean=127.5,std=127.5"`` → :class:`Preprocess`; ``"none"`` → None (no preprocessing)."""
    text = text.strip()
    if text.lower() in ("none", ""):
        return None
    raw: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip().lower().replace("-", "_")
        if not sep or not value.strip():
            raise UsageError(f"{where}: {part.strip()!r} is not KEY=VALUE", hint="e.g. resize=96x96,mean=127.5,std=127.5")
        if key in raw:
            raise UsageError(f"{where}: {key!r} given twice")
        raw[key] = value.strip()
    return _build(raw, f"{where} {text!r}")


def read_recipe(path: str | Path) -> dict[str, Any]:
    """A recipe file's data (TOML, or JSON): a whole convert request (see :mod:`edgepack.request`)
    and/or preprocessing."""
    p = Path(path)
    where = f"--recipe {p}"
    try:
        text = p.read_text("utf-8")
    except FileNotFoundError:
        raise UsageError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{where}: cannot read as UTF-8 text ({err})") from err
    try:
        data = json.loads(text) if p.suffix.lower() == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
        kind = "JSON" if p.suffix.lower() == ".json" else "TOML"
        raise UsageError(f"{where}: not valid {kind} ({err})") from err
    if not isinstance(data, dict):
        raise UsageError(f"{where}: expected a table of settings")
    return data


def load_recipe(path: str | Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """A recipe's preprocessing: keys for every input, and ``[inputs.NAME]`` tables per input."""
    where = f"--recipe {path}"
    data = read_recipe(path)
    per_input = data.get("inputs", {}) or {}
    # The spec for every input: a [preprocess] table, or preprocessing keys at the top level (a whole
    # convert recipe keeps its other settings beside them; see edgepack.request).
    table = data.get("preprocess")
    data = dict(table) if isinstance(table, dict) else {k: v for k, v in data.items() if k in KEYS}
    if not isinstance(per_input, dict) or not all(isinstance(v, dict) for v in per_input.values()):
        raise UsageError(f"{where}: 'inputs' must map input names to tables of preprocessing keys")
    return data, per_input


def resolve(names: Sequence[str], *, spec: str | None = None, recipe: str | Path | None = None,
            recorded: Mapping[str, Mapping[str, Any] | None] | None = None) -> dict[str, Preprocess | None]:
    """The preprocessing of each input: ``--preprocess`` over the recipe over what the manifest recorded."""
    out: dict[str, Preprocess | None] = {}
    common: dict[str, Any] = {}
    per_input: dict[str, dict[str, Any]] = {}
    if recipe is not None:
        common, per_input = load_recipe(recipe)
        unknown = sorted(set(per_input) - set(names))
        if unknown:
            raise UsageError(f"--recipe {recipe}: no model input named {unknown[0]!r}",
                             hint=f"model inputs: {', '.join(names)}")
    cli = parse_spec(spec) if spec is not None else None
    for name in names:
        if spec is not None:
            out[name] = cli
        elif recipe is not None:
            raw = {**common, **per_input.get(name, {})}
            out[name] = _build(raw, f"--recipe {recipe}") if raw else None
        elif recorded and recorded.get(name):
            out[name] = Preprocess.from_dict(recorded[name], where=f"manifest preprocessing of {name!r}")
        else:
            out[name] = None
    return out


def with_default_dtype(p: Preprocess | None, dtype: str) -> Preprocess | None:
    """Record the dtype the model gets, so the manifest says it explicitly."""
    return p if p is None or p.dtype is not None else replace(p, dtype=dtype)
