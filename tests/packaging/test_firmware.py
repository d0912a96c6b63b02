"""Generated firmware sources: safe identifiers, the right resolver, and valid C++ (host g++)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from edgepack.packaging.firmware import FirmwareSpec, c_identifier, firmware_files, resolver_method
from edgepack.packaging.manifest import read_manifest

# Minimal stand-ins for the TFLM declarations the sources use. The resolver's methods are TFLM's
# real names (tensorflow/lite/micro/micro_mutable_op_resolver.h), written by hand so a misspelt
# method fails to compile.
COMMON_H = """#pragma once
typedef enum { kTfLiteOk = 0, kTfLiteError = 1 } TfLiteStatus;
typedef enum { kTfLiteNoType = 0, kTfLiteFloat32 = 1, kTfLiteInt32 = 2, kTfLiteUInt8 = 3, kTfLiteInt64 = 4,
               kTfLiteBool = 6, kTfLiteInt16 = 7, kTfLiteInt8 = 9, kTfLiteFloat16 = 10 } TfLiteType;
"""
_METHODS = ("AddConv2D AddDepthwiseConv2D AddFullyConnected AddMaxPool2D AddAveragePool2D AddReshape AddSoftmax "
            "AddQuantize AddDequantize AddAdd AddMul AddMean AddRelu AddRelu6 AddLogistic AddPad AddPadV2 AddShape "
            "AddStridedSlice AddPack AddConcatenation AddEthosU AddBatchMatMul AddUnidirectionalSequenceLSTM "
            "AddCumSum AddSpaceToBatchNd AddL2Pool2D AddHardSwish AddMaxPool2D").split()
RESOLVER_H = ("#pragma once\n#include \"tensorflow/lite/c/common.h\"\nnamespace tflite {\n"
              "template <unsigned int N> class MicroMutableOpResolver {\n public:\n"
              + "".join(f"  TfLiteStatus {m}() {{ return ++count_ <= N ? kTfLiteOk : kTfLiteError; }}\n"
                        for m in dict.fromkeys(_METHODS))
              + "  unsigned int count() const { return count_; }\n private:\n  unsigned int count_ = 0;\n};\n}\n")
MAIN_CC = r"""
#include <cstdint>
#include <cstdio>
#include "model_data.h"
#include "model_ops.h"
#include "model_settings.h"

alignas(16) static uint8_t tensor_arena[IDENT::kTensorArenaSize];

int main(int argc, char** argv) {
  IDENT::OpResolver resolver;
  if (IDENT::RegisterOps(resolver) != kTfLiteOk || resolver.count() != IDENT::kNumOps) return 2;
  if (reinterpret_cast<uintptr_t>(IDENT_model_data) % 16 != 0) return 3;
  static_assert(IDENT::kInput0Type == kTfLiteInt8, "int8 input");
  FILE* f = std::fopen(argv[1], "wb");
  std::fwrite(IDENT_model_data, 1, IDENT_model_data_len, f);
  std::fclose(f);
  std::printf("%u %d %d %d\n", IDENT_model_data_len, IDENT::kNumOps, IDENT::kTensorArenaSize, IDENT::kInput0Elements);
  for (int i = 0; i < IDENT::kNumLabels; ++i) std::printf("%s\n", IDENT::kLabels[i]);
  (void)tensor_arena;
  return argc == 2 ? 0 : 4;
}
"""


@pytest.mark.parametrize("name, ident", [
    ("digits", "digits"), ("My Model-v2.1", "my_model_v2_1"), ("2nd", "model_2nd"), ("class", "class_model"),
    ("tflite", "tflite_model"), ("ü!!", "model")])
def test_c_identifier_is_safe(name, ident):
    assert c_identifier(name) == ident


@pytest.mark.parametrize("op, method", [
    ("CONV_2D", "AddConv2D"), ("DEPTHWISE_CONV_2D", "AddDepthwiseConv2D"), ("FULLY_CONNECTED", "AddFullyConnected"),
    ("SPACE_TO_BATCH_ND", "AddSpaceToBatchNd"), ("PADV2", "AddPadV2"), ("CUSTOM:ethos-u", "AddEthosU")])
def test_resolver_method_names(op, method):
    assert resolver_method(op) == method


def test_resolver_method_rejects_unknown_custom_ops():
    with pytest.raises(ValueError):
        resolver_method("CUSTOM:mystery")


def _spec(bundle: Path, labels: list[str]) -> FirmwareSpec:
    m = read_manifest(bundle)
    return FirmwareSpec(model_name="tiny net", model=(bundle / "model.tflite").read_bytes(), ops=m.ops,
                        inputs=m.inputs, outputs=m.outputs, measured_arena=5000, arena_margin_percent=20,
                        labels=labels, target="cortex-m4")


def test_arena_size_adds_margin_and_aligns(int8_bundle):
    spec = _spec(int8_bundle, ["a"])
    assert spec.arena_size % 16 == 0 and 6000 < spec.arena_size <= 6016


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs the host g++")
def test_sources_compile_link_and_carry_the_model(int8_bundle, tmp_path):
    labels = ['quote"d', "back\\slash", "ünï", "??=trigraph"]
    spec = _spec(int8_bundle, labels)
    for rel, text in firmware_files(spec).items():
        (tmp_path / Path(rel).name).write_text(text, encoding="utf-8")
    inc = tmp_path / "include"
    (inc / "tensorflow/lite/c").mkdir(parents=True)
    (inc / "tensorflow/lite/micro").mkdir(parents=True)
    (inc / "tensorflow/lite/c/common.h").write_text(COMMON_H)
    (inc / "tensorflow/lite/micro/micro_mutable_op_resolver.h").write_text(RESOLVER_H)
    (tmp_path / "main.cc").write_text(MAIN_CC.replace("IDENT", "tiny_net"))
    flags = ["g++", "-std=c++17", "-Wall", "-Werror", "-I", str(inc), "-I", str(tmp_path)]
    for src in ("model_data.cc", "main.cc"):
        subprocess.run([*flags, "-c", str(tmp_path / src), "-o", str(tmp_path / (src + ".o"))],
                       check=True, capture_output=True, text=True)
    exe = tmp_path / "probe"
    subprocess.run(["g++", str(tmp_path / "model_data.cc.o"), str(tmp_path / "main.cc.o"), "-o", str(exe)],
                   check=True, capture_output=True)
    dumped = tmp_path / "dumped.tflite"
    run = subprocess.run([str(exe), str(dumped)], check=True, capture_output=True)
    model = (int8_bundle / "model.tflite").read_bytes()
    assert dumped.read_bytes() == model
    head, *printed = run.stdout.decode("utf-8").splitlines()
    assert head.split() == [str(len(model)), str(len(spec.ops)), str(spec.arena_size), "64"]
    assert printed == labels
    readme = (tmp_path / "README.md").read_text("utf-8")
    assert "tiny_net::kTensorArenaSize" in readme and "tiny_net_model_data" in readme
