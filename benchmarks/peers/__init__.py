"""The peers of ``benchmarks/ptq_peers.py``: onnxruntime's static quantization in a memory-watched child,
NNCF and tf2onnx in a venv of their own (``venv.py`` builds it), the project's own Keras nets."""
