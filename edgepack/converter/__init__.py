"""Model loading, optimization and the TFLite converter call, as pipeline stages."""
