"""Local validation on the runtimes devices use: LiteRT, tflite-runtime (and TFLite Micro)."""
