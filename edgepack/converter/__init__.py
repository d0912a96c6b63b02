"""Source models into TFLite: format front-ends (formats/), ONNX via onnx2tf (onnx/), and the
TFLite converter call with calibration in a crash-contained child (tflite.py, isolate.py)."""
