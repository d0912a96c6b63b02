"""edgepack: Keras/ONNX models → optimized, validated TFLite (LiteRT) bundles for phones and MCUs."""

from __future__ import annotations

__version__ = "0.1.0"


def dependency_versions() -> dict[str, str]:
    """Versions of edgepack and the stack it ran on, for the manifest."""
    import platform
    from importlib import metadata

    out = {"edgepack": __version__, "python": platform.python_version()}
    for dist in ("tensorflow", "tf-keras", "keras", "numpy", "ai-edge-litert", "onnx", "onnxruntime",
                 "onnx2tf", "tensorflow-model-optimization", "tflite-runtime", "tflite-micro", "ethos-u-vela"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out
