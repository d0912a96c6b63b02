"""Which builtin ops the installed TFLite Micro registers, asked of TFLM itself (tools/gen_tflm_ops.py
writes the answer into the microcontroller target profiles)."""

from __future__ import annotations

from edgepack._native import capture_native_output
from edgepack.runtimes.tflm import tflm_runtime

_PROBE_SENTINEL = b"edgepack_probe_sentinel"


def probe_model(code: int) -> bytes:
    """A model of two bare operators: ``code``, then a custom op no build registers.

    TFLM looks up every operator's kernel before running any kernel code, so the error names the
    first operator it cannot find: the sentinel if ``code`` is registered, ``code`` itself if not.
    """
    import flatbuffers
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as s

    def opcode(builtin: int, custom: bytes | None = None):
        oc = s.OperatorCodeT()
        oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = builtin, min(builtin, 127), 1
        oc.customCode = custom
        return oc

    def operator(index: int):
        op = s.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = index, [], []
        if code == s.BuiltinOperator.VAR_HANDLE and index == 0:  # the runtime reads its options
            op.builtinOptionsType, op.builtinOptions = s.BuiltinOptions.VarHandleOptions, s.VarHandleOptionsT()
        return op

    model = s.ModelT()
    model.version = 3
    model.operatorCodes = [opcode(code), opcode(s.BuiltinOperator.CUSTOM, _PROBE_SENTINEL)]
    sg = s.SubGraphT()
    sg.tensors, sg.inputs, sg.outputs, sg.operators = [], [], [], [operator(0), operator(1)]
    model.subgraphs, model.buffers = [sg], [s.BufferT()]
    builder = flatbuffers.Builder(256)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def registered_builtin_ops() -> list[str]:
    """Builtin op names the installed TFLM interpreter has kernels for, asked of TFLM itself."""
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as s

    runtime = tflm_runtime()
    names = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}
    found = []
    for code, name in sorted(names.items()):
        if name in ("CUSTOM", "PLACEHOLDER_FOR_GREATER_OP_CODES"):
            continue
        with capture_native_output() as cap:
            try:
                runtime.Interpreter.from_bytes(probe_model(code), arena_size=4096)
            except RuntimeError:
                pass
        if "op code CUSTOM" in cap.text:  # got past ``code``'s lookup to the sentinel
            found.append(name)
    return sorted(found)
