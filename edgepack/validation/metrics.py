"""Comparison metrics between a bundle's outputs and the reference model's, and against labels."""

from __future__ import annotations

import math

import numpy as np


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy, as a fraction. Labels may be class ids or one-hot rows."""
    y = np.asarray(labels)
    if y.ndim == logits.ndim and y.ndim > 1:
        y = y.argmax(axis=-1)
    return float(np.mean(np.asarray(logits).argmax(axis=-1) == y.reshape(-1)))


def top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of samples whose top-1 class is the same in both outputs."""
    return float(np.mean(np.asarray(a).argmax(axis=-1) == np.asarray(b).argmax(axis=-1)))


def max_abs_error(ref: np.ndarray, out: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(ref, np.float64) - np.asarray(out, np.float64))))


def cosine_similarity(ref: np.ndarray, out: np.ndarray) -> float:
    """Cosine similarity of the flattened outputs (1.0 = same direction)."""
    r = np.asarray(ref, np.float64).ravel()
    o = np.asarray(out, np.float64).ravel()
    denom = np.linalg.norm(r) * np.linalg.norm(o)
    if denom == 0.0:
        return 1.0 if np.array_equal(r, o) else 0.0
    return float(np.dot(r, o) / denom)


def sqnr_db(ref: np.ndarray, out: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB: 10·log10(Σref² / Σ(ref−out)²); inf when equal."""
    r = np.asarray(ref, np.float64)
    noise = float(np.sum((r - np.asarray(out, np.float64)) ** 2))
    signal = float(np.sum(r ** 2))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)
