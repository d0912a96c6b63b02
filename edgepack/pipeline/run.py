"""The conversion pipeline: a straight line of small, timed stages.

prepare → load → graph (ONNX preparation, state pairs) → optimize (--prune/--qat) → calibrate → ptq
(fusion, equalization, bias correction) → convert → lstm_float →
camera I/O (--quantize uint8) → read back → budget (the
accuracy budget's search) → app (LiteRT targets: metadata into the model, signatures, app code) → measure
(optimization results, TFLM arena) → delegate (phone targets: XNNPACK coverage) → check target → vela
(Ethos-U) → firmware (MCU sources) → package.
Stages that do not apply to a request or target return None and change nothing.
Each stage appends a :class:`StageRecord` (name, seconds, detail) that ends up in the manifest.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from edgepack.errors import EdgepackError, InternalError
from edgepack.packaging.manifest import StageRecord
from edgepack.pipeline import budget, graph, mcu, optimize, phone, ptq, stages
from edgepack.pipeline.state import PipelineState, Stage
from edgepack.request import ConvertRequest

log = logging.getLogger(__name__)

STAGES: tuple[tuple[str, Stage], ...] = (
    ("prepare", stages.stage_prepare),
    ("load", stages.stage_load),
    ("graph", graph.stage_graph),
    ("optimize", optimize.stage_optimize),
    ("calibrate", stages.stage_calibrate),
    ("ptq", ptq.stage_ptq),
    ("camera_check", phone.stage_camera_check),
    ("convert", stages.stage_convert),
    ("lstm_float", ptq.stage_lstm_float),  # first: ranges and int8 biases are then judged with the cells float
    ("ptq_calibrated", ptq.stage_calibrated),
    ("camera_io", phone.stage_camera_io),
    ("read_back", stages.stage_read_back),
    ("budget", budget.stage_budget),
    ("app", phone.stage_app),
    ("measure_optimized", optimize.stage_measure),
    ("measure_arena", mcu.stage_measure_arena),
    ("delegate", phone.stage_delegate),
    ("check_target", stages.stage_check_target),
    ("vela", mcu.stage_vela),
    ("firmware", mcu.stage_firmware),
    ("package", stages.stage_package),
)


def run_pipeline(request: ConvertRequest, stages=None, progress: Callable[[str], None] | None = None,
                 on_epoch: Callable[[str, int, str, float], None] | None = None) -> PipelineState:
    st = PipelineState(request=request, on_epoch=on_epoch)
    for name, stage in STAGES if stages is None else stages:
        if progress:
            progress(name)
        start = time.perf_counter()
        try:
            detail = stage(st)
        except (EdgepackError, KeyboardInterrupt):
            raise
        except Exception as err:  # anything else is a bug here or in a library: name the stage
            raise InternalError(name, err) from err
        st.stages.append(StageRecord(name, round(time.perf_counter() - start, 4), detail or {}))
        log.info("stage %s: %.2fs %s", name, time.perf_counter() - start, detail or "")
    return st

