"""The interpreters devices use, run on the host: LiteRT, tflite-runtime and TFLite Micro, in a child
process where a native crash cannot take edgepack down (isolated.py)."""
