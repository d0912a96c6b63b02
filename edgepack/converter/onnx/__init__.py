"""ONNX to TensorFlow: onnx2tf run offline (onnx2tf_run), its automatic option fallbacks (fallbacks),
the graph preparation and TensorFlow side (translate), and the ONNX/TFLite I/O mapping (iomap)."""
