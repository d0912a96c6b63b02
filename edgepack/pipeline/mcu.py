"""Pipeline stages for microcontroller and NPU targets (``runtime = "tflm"`` profiles).

measure_arena (after read_back): allocate the model in TFLite Micro and record the arena, so the
target check compares a measured number with the RAM budget. vela (after check_target): compile
for the Ethos-U NPU when the profile has a ``[vela]`` table. firmware: C++ sources in the bundle.
Each stage does nothing (and records nothing) for other targets.
"""

from __future__ import annotations

import logging
from typing import Any

from edgepack.packaging.firmware import FirmwareSpec, firmware_files
from edgepack.pipeline.state import ArenaRecord, FirmwareRecord, PipelineState

log = logging.getLogger(__name__)


def _is_mcu(st: PipelineState) -> bool:
    return st.target is not None and st.target.runtime == "tflm"


def stage_measure_arena(st: PipelineState) -> dict[str, Any] | None:
    if not _is_mcu(st):
        return None
    from edgepack.runtimes.tflm import measure_arena

    ops = st.target.ops
    if ops is not None and any(op not in ops for op in st.info.op_counts):
        # TFLM cannot load it; check_target names the ops, which is the useful message.
        return {"skipped": "model has ops TFLM does not register"}
    arena = measure_arena(st.tflite, len(st.info.inputs))
    st.arena = ArenaRecord(arena, st.target.arena_margin_percent,
                           f"tflite-micro {_tflm_version()} (host, reference kernels)")
    return arena.to_dict()


def _tflm_version() -> str:
    import tflite_micro

    return tflite_micro.__version__


def stage_vela(st: PipelineState) -> dict[str, Any] | None:
    if not _is_mcu(st) or not st.target.vela:
        return None
    from edgepack.targets.checks import VELA_CHECKS, ModelFacts, run_checks
    from edgepack.targets.vela import compile_for_ethos_u

    result = compile_for_ethos_u(st.tflite, st.target.vela)
    r = result.report
    # The device runs the Vela model: gate its flash and SRAM too (check_target saw the plain model).
    facts = ModelFacts(mode=st.info.quantization_mode, size=len(st.tflite), op_counts=st.info.op_counts,
                       arena_bytes=st.arena_bytes, vela_size=len(result.model), vela_flash_bytes=r.flash_bytes,
                       vela_sram_bytes=r.sram_bytes)
    checks = {name: detail for name, _, detail in run_checks(st.target, facts, VELA_CHECKS)}
    st.vela = result
    st.extra_files[result.file] = (result.model, "vela-model")
    return {"npu_ops": r.npu_ops, "cpu_ops": r.cpu_ops, "sram_bytes": r.sram_bytes, "flash_bytes": r.flash_bytes,
            "cycles_total": r.cycles_total, **checks}


def stage_firmware(st: PipelineState) -> dict[str, Any] | None:
    if not _is_mcu(st) or st.arena_bytes is None:
        return None
    from edgepack.pipeline.stages import tensor_infos

    model, ops, arena, note = st.tflite, st.info.op_counts, st.arena_bytes, ""
    if st.vela is not None:
        from edgepack.tflite_model import read_tflite

        # The device runs the Vela model. Its arena cannot be measured on the host (no Ethos-U
        # kernel); take the larger of the plain model's measured arena and Vela's SRAM figure.
        model, ops = st.vela.model, read_tflite(st.vela.model).op_counts
        arena = max(arena, st.vela.report.sram_bytes)
        note = "plain int8 model, or Vela's SRAM estimate if larger"
    spec = FirmwareSpec(
        model_name=st.request.model.path.stem if st.request.model.path.suffix else st.request.model.path.name,
        model=model, ops=ops, inputs=tensor_infos(st.info, [s.name for s in st.loaded.inputs], "inputs"),
        outputs=tensor_infos(st.info, st.loaded.output_names, "outputs"), measured_arena=arena,
        arena_margin_percent=st.target.arena_margin_percent, alignment=st.target.alignment, labels=st.labels,
        target=st.target.name, note=note)
    files = firmware_files(spec)
    for path, text in files.items():
        st.extra_files[path] = (text, "firmware")
    st.firmware = FirmwareRecord(tuple(sorted(files)), spec.arena_size)
    return {"files": len(files), "tensor_arena_size": spec.arena_size}
