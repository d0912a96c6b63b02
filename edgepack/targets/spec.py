"""Target profiles: TOML files in this folder, loaded into a frozen :class:`TargetSpec`.

A profile may name another with ``inherits``; its keys are laid over the parent's. Profiles
marked ``abstract = true`` only exist to be inherited and are not listed. Adding a board is adding
a file.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field
from importlib import resources

from edgepack.errors import EdgepackError, OptionError
from edgepack.request import QUANTIZE_MODES

RUNTIMES = ("litert", "tflm")


@dataclass(frozen=True)
class TargetSpec:
    name: str
    description: str
    runtime: str = "litert"
    quantize_modes: tuple[str, ...] = QUANTIZE_MODES
    min_calibration_samples: int = 100
    ops: tuple[str, ...] | None = None  # None: every builtin op of the runtime
    ram_bytes: int | None = None
    flash_bytes: int | None = None
    alignment: int = 16
    arch: str | None = None
    delegate: str | None = None
    # integer ops the delegate does not take: "warn" (log and record) or "fail" (no bundle)
    delegate_fallback: str = "warn"
    vela: dict[str, str] | None = None
    # Microcontroller keys: a fixed batch dimension (TFLM wants static shapes), the safety margin
    # added to the measured tensor arena in the generated firmware, and where the op list came from.
    batch: int | None = None
    arena_margin_percent: int = 0
    ops_source: str | None = None
    inherits: str | None = None
    source_file: str = field(default="", compare=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["quantize_modes"] = list(self.quantize_modes)
        d["ops"] = list(self.ops) if self.ops is not None else None
        d.pop("source_file")
        return {k: v for k, v in d.items() if v is not None}


def _raw_profiles() -> dict[str, dict]:
    profiles: dict[str, dict] = {}
    for entry in resources.files(__package__).iterdir():
        if entry.name.endswith(".toml"):
            try:
                data = tomllib.loads(entry.read_text(encoding="utf-8"))
            except tomllib.TOMLDecodeError as err:  # a shipped file: a packaging bug, say where
                raise EdgepackError(f"target profile {entry.name} is not valid TOML: {err}") from err
            data["source_file"] = entry.name
            profiles[data.get("name", entry.name[:-5])] = data
    return profiles


def _resolve(name: str, raw: dict[str, dict], seen: tuple[str, ...] = ()) -> dict:
    if name in seen:
        raise EdgepackError(f"target profiles inherit in a cycle: {' -> '.join(seen + (name,))}")
    data = dict(raw[name])
    parent = data.get("inherits")
    if parent is None:
        return data
    if parent not in raw:
        raise EdgepackError(f"target profile {data['source_file']} inherits unknown profile {parent!r}")
    merged = _resolve(parent, raw, seen + (name,))
    merged.pop("abstract", None)
    merged.update(data)
    return merged


def _build(data: dict) -> TargetSpec:
    data = dict(data)
    data.pop("abstract", None)
    for key in ("quantize_modes", "ops"):
        if data.get(key) is not None:
            data[key] = tuple(data[key])
    known = TargetSpec.__dataclass_fields__
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise EdgepackError(f"target profile {data.get('source_file')} has unknown keys: {', '.join(unknown)}")
    spec = TargetSpec(**data)
    bad = [m for m in spec.quantize_modes if m not in QUANTIZE_MODES]
    if spec.delegate_fallback not in ("warn", "fail"):
        raise EdgepackError(f"target profile {spec.source_file}: delegate_fallback must be \"warn\" or \"fail\"")
    if bad or spec.runtime not in RUNTIMES:
        raise EdgepackError(f"target profile {spec.source_file} names unknown modes/runtime: {bad or spec.runtime}")
    return spec


def available_targets() -> list[str]:
    """Names of the concrete (non-abstract) target profiles, sorted."""
    raw = _raw_profiles()
    return sorted(n for n, d in raw.items() if not d.get("abstract"))


def all_targets() -> list[TargetSpec]:
    return [load_target(n) for n in available_targets()]


def load_target(name: str) -> TargetSpec:
    """The profile called ``name``; :class:`OptionError` naming the valid ones if there is none."""
    raw = _raw_profiles()
    if name not in raw or raw[name].get("abstract"):
        raise OptionError("--target", name, available_targets(), hint="run 'edgepack targets' to list them")
    return _build(_resolve(name, raw))
