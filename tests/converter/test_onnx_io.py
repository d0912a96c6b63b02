"""Pairing ONNX inputs/outputs with onnx2tf's tensors and their layouts (no conversion needed)."""

from __future__ import annotations

import pytest

from edgepack.converter.onnx.iomap import _input_perm, _output_candidates
from edgepack.errors import ConversionError


def test_4d_inputs_become_channels_last_and_fill_unknown_dims():
    assert _input_perm((1, 3, 32, 24), (None, 32, 24, 3), "x") == ((0, 2, 3, 1), (1, 32, 24, 3))
    assert _input_perm((2, 5), (2, 5), "v") == (None, (2, 5))  # rank 2 keeps its layout
    assert _input_perm((), (None,), "s") == (None, (1,))  # a scalar gets one axis


def test_an_input_that_does_not_fit_is_a_conversion_error():
    with pytest.raises(ConversionError, match="cannot map ONNX input 'x'"):
        _input_perm((1, 3, 32, 24), (1, 24, 32, 3), "x")


def test_output_candidates_follow_the_reported_layout_then_the_shapes():
    # onnx2tf says NHWC: channels-last first, then the same layout
    assert _output_candidates((1, 4, 4, 8), True, (1, 8, 4, 4))[0] == (0, 2, 3, 1)
    # same layout reported: identity first; an ONNX (1, 8, 4, 4) cannot be a (1, 4, 4, 8) without a transpose
    assert _output_candidates((1, 8, 4, 4), False, (1, 8, 4, 4))[0] is None
    assert None not in _output_candidates((1, 4, 4, 8), None, (1, 8, 4, 4))
