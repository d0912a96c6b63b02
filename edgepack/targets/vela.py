"""Compiling an int8 model for an Arm Ethos-U NPU with ``ethos-u-vela``.

Vela is run through its own entry point with the target profile's ``[vela]`` table (accelerator,
and a system config + memory mode from a Vela ``.ini``; the default is the ``Arm/vela.ini`` that
ships with Vela). Its report — SRAM and flash used, NPU vs CPU operators, cycles and the
inference-time estimate — is read from Vela's summary CSV and printed summary, not recomputed.
"""

from __future__ import annotations

import csv
import logging
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from edgepack._native import capture_all_output
from edgepack.errors import ConversionError, EdgepackError, RuntimeUnavailable
from edgepack.tflite_model import read_tflite

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "Arm/vela.ini"
_OPERATORS = re.compile(r"^(CPU|NPU) operators = (\d+)", re.MULTILINE)
_KIB = 1024


VELA_MODEL = "model_vela.tflite"


@dataclass(frozen=True)
class VelaReport:
    """What Vela reports for one compiled model (numbers straight from Vela's summary)."""

    accelerator: str
    system_config: str
    memory_mode: str
    sram_bytes: int
    flash_bytes: int  # on-chip + off-chip flash Vela placed weights in
    dram_bytes: int
    npu_ops: int
    cpu_ops: int
    cycles_npu: int
    cycles_total: int
    inference_seconds: float
    macs: int
    vela_version: str
    output_ops: dict[str, int]  # ops in the Vela model (ETHOS_U custom op + CPU fallbacks)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class VelaResult:
    model: bytes
    report: VelaReport
    file: str = VELA_MODEL  # the compiled model's name in the bundle


def _settings(vela: dict[str, str]) -> tuple[str, str, str, str]:
    missing = [k for k in ("accelerator", "system_config", "memory_mode") if not vela.get(k)]
    if missing:
        raise EdgepackError(f"target's [vela] table lacks {', '.join(missing)}")
    return vela["accelerator"], vela.get("config", DEFAULT_CONFIG), vela["system_config"], vela["memory_mode"]


def _run_main(argv: list[str]) -> tuple[int, str]:
    try:
        from ethosu.vela import vela as vela_main
    except ImportError as err:
        raise RuntimeUnavailable(f"ethos-u-vela is not installed ({err})", hint="pip install ethos-u-vela") from err
    failure: Exception | None = None
    with capture_all_output() as cap:  # Vela prints its report
        try:
            rc = vela_main.main(argv)
        except SystemExit as err:  # argparse rejects an option value; its message is in the output
            rc = err.code if isinstance(err.code, int) else 2
        except Exception as err:  # Vela raises its own errors and plain ones from its passes
            rc, failure = 1, err
    if failure is not None:
        raise ConversionError(f"Vela failed: {failure}", hint="run with -vv to see Vela's log") from failure
    return rc, cap.text


def _last_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    return (errors or lines or ["no output"])[-1][:300]


def compile_for_ethos_u(model: bytes, vela: dict[str, str], name: str = "model") -> VelaResult:
    """Run Vela on ``model`` (an int8 .tflite) with the profile's settings."""
    from ethosu.vela import __version__ as vela_version

    accelerator, config, system_config, memory_mode = _settings(vela)
    with tempfile.TemporaryDirectory(prefix="edgepack-vela-") as tmp:
        src = Path(tmp) / f"{name}.tflite"
        src.write_bytes(model)
        out = Path(tmp) / "out"
        argv = [str(src), "--output-dir", str(out), "--accelerator-config", accelerator, "--config", config,
                "--system-config", system_config, "--memory-mode", memory_mode]
        rc, text = _run_main(argv)
        log.debug("vela %s:\n%s", " ".join(argv), text)
        compiled = out / f"{name}_vela.tflite"
        summary = out / f"{name}_summary_{system_config}.csv"
        if rc != 0 or not compiled.is_file() or not summary.is_file():
            raise ConversionError(f"Vela failed (exit {rc}) for {accelerator}/{system_config}: {_last_error(text)}",
                                  hint="run with -vv to see Vela's log")
        with summary.open(newline="") as f:
            row = next(csv.DictReader(f))
        vela_model = compiled.read_bytes()
    counts = {kind: int(n) for kind, n in _OPERATORS.findall(text)}
    report = VelaReport(
        accelerator=accelerator, system_config=system_config, memory_mode=memory_mode,
        sram_bytes=_kib_to_bytes(row["sram_memory_used"]),
        flash_bytes=_kib_to_bytes(row["on_chip_flash_memory_used"]) + _kib_to_bytes(row["off_chip_flash_memory_used"]),
        dram_bytes=_kib_to_bytes(row["dram_memory_used"]),
        npu_ops=counts.get("NPU", 0), cpu_ops=counts.get("CPU", 0),
        cycles_npu=int(float(row["cycles_npu"])), cycles_total=int(float(row["cycles_total"])),
        inference_seconds=float(row["inference_time"]), macs=int(float(row["nn_macs"])),
        vela_version=vela_version, output_ops=read_tflite(vela_model).op_counts)
    return VelaResult(model=vela_model, report=report)


def _kib_to_bytes(value: str) -> int:
    """Vela's CSV gives memory in KiB (possibly fractional)."""
    return int(round(float(value) * _KIB))
