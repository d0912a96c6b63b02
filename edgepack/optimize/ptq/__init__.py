"""Full-integer post-training quantization algorithms, applied to the float model before calibration.

One algorithm a module, each with the face(s) it has (ONNX graph and/or Keras model); each returns
the rewritten model and a record of what it changed (for the manifest's ``ptq`` section).
"""
