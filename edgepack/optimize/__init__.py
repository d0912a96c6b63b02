"""Optimization before conversion: channel pruning, sparsity, QAT, fine-tuning, the Keras 3 to
tf_keras bridge tfmot needs, graph surgery and measurement (MACs, zip size, latency)."""
